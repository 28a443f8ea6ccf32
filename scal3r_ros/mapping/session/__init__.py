"""Sessions: a saved map to come back to (issue 17).

``MappingEngine.export_session() -> SessionData``, `write_session` (an atomic, versioned
folder of plain files), `read_session` (validated; every problem one `SessionError`),
``MappingEngine.load_session(data)``. Layout and versioning: ``docs/session_format.md``.
"""

from scal3r_ros.mapping.session.data import (
    CameraInfo,
    ScaleState,
    SessionData,
    SessionParameters,
)
from scal3r_ros.mapping.session.format import FORMAT_NAME, FORMAT_VERSION, SessionError
from scal3r_ros.mapping.session.keyframes import Keyframes, decode_thumbnail, encode_thumbnail
from scal3r_ros.mapping.session.reader import read_session
from scal3r_ros.mapping.session.writer import write_session

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CameraInfo",
    "Keyframes",
    "ScaleState",
    "SessionData",
    "SessionError",
    "SessionParameters",
    "decode_thumbnail",
    "encode_thumbnail",
    "read_session",
    "write_session",
]
