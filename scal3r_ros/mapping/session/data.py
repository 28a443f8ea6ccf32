"""A session as a tree of dataclasses (``MappingEngine.export_session`` /
``load_session``): what the engine's stores hold, in plain numpy arrays and Sim(3)s, with
no file format in it (``writer``/``reader`` do the files)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from scal3r_ros.mapping.map_store import MapSnapshot
from scal3r_ros.mapping.pose_graph import PoseGraphState
from scal3r_ros.mapping.session.keyframes import Keyframes
from scal3r_ros.mapping.trajectory import TrajectoryState


@dataclass(frozen=True)
class SessionParameters:
    """What must match between the engine that saved a session and the one loading it:
    chunks of another size or overlap, another GCS mode or another network would place new
    windows on geometry of another kind."""

    chunk_size: int
    overlap: int
    gcs_mode: str
    backend: str  # the backend's class (wrappers such as TimedBackend unwrapped)
    use_point_head: bool

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SessionParameters:
        """Strict: every field, nothing else, of the right type (ValueError otherwise)."""
        names = {f.name: f.type for f in fields(SessionParameters)}
        if set(d) != set(names):
            raise ValueError(f"parameters must be exactly {sorted(names)}, got {sorted(d)}")
        types = {"int": int, "str": str, "bool": bool}
        for k, t in names.items():
            v = d[k]
            if type(v) is not types[str(t)]:
                raise ValueError(f"parameter {k} must be {t}, got {v!r}")
        return SessionParameters(**d)

    def mismatches(self, other: SessionParameters) -> list[str]:
        """``name: saved X, here Y`` for every differing parameter."""
        a, b = self.as_dict(), other.as_dict()
        return [f"{k}: saved {a[k]!r}, here {b[k]!r}" for k in a if a[k] != b[k]]


@dataclass
class CameraInfo:
    """A camera seen in the session: intrinsics at the network's working resolution and
    that image size, when known."""

    intrinsics: np.ndarray | None = None  # (3, 3) float64
    image_size: tuple[int, int] | None = None  # (height, width)


@dataclass
class ScaleState:
    """The map's metric scale when something measured it: metres per map unit and where
    it came from (``graph:enu``: the pose graph's ENU frame, GNSS/odometry; a node may set
    its scale source's estimate before writing)."""

    metres_per_unit: float | None = None
    source: str = "none"


@dataclass
class SessionData:
    """One saved map. Frame ids ``0..n_frames-1`` and chunk ids below ``next_chunk_id``
    are taken: an engine that loads it continues after them."""

    parameters: SessionParameters
    n_frames: int
    next_chunk_id: int
    stamps_ns: np.ndarray  # (n_frames,) int64, every frame pushed
    chunk_spans: dict[int, tuple[int, int]]  # placed chunk -> (first frame, last + 1)
    trajectory: TrajectoryState
    map: MapSnapshot
    pose_graph: PoseGraphState
    keyframes: Keyframes
    cameras: dict[str, CameraInfo] = field(default_factory=dict)
    scale: ScaleState = field(default_factory=ScaleState)
    created_utc: str = ""  # ISO 8601, set when written
    software_version: str = ""
