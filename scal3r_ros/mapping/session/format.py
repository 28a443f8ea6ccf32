"""The session folder's format: names, version, the error type and array checks.

A session is a folder of plain files (no pickle anywhere), described by ``manifest.json``:

- ``manifest.json``: format name and version, creation time (UTC), software version, the
  parameters that must match on load (`SessionParameters`), and every other file with its
  size and SHA-256;
- ``session.json``: counters, cameras, metric scale, map and keyframe settings;
- ``trajectory.npz``, ``map.npz``, ``pose_graph.npz``, ``keyframes.npz``: numpy arrays
  (read with ``allow_pickle=False``), layouts in `docs/session_format.md`;
- ``map.ply``: the merged map in the map frame, for viewers (not read back);
- ``kf_<frame id>.jpg``: one small JPEG per keyframe.

Bump `FORMAT_VERSION` whenever a file's layout or meaning changes: a reader refuses any
other version rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from scal3r_ros.mapping.sim3 import Sim3

FORMAT_NAME = "scal3r_ros.session"
FORMAT_VERSION = 2  # 2: optional keyframe geometry (points, conf) in keyframes.npz

MANIFEST = "manifest.json"
SESSION_JSON = "session.json"
TRAJECTORY = "trajectory.npz"
MAP = "map.npz"
MAP_PLY = "map.ply"
POSE_GRAPH = "pose_graph.npz"
KEYFRAMES = "keyframes.npz"
DATA_FILES = (SESSION_JSON, TRAJECTORY, MAP, MAP_PLY, POSE_GRAPH, KEYFRAMES)
THUMBNAIL = re.compile(r"kf_(\d{10})\.jpg")
THUMBNAIL_MAX_SIDE = 256

EDGE_KINDS = ("sequential", "loop")
KERNELS = ("none", "huber", "cauchy", "geman_mcclure")


class SessionError(ValueError):
    """A session folder that cannot be loaded: one line naming the file and the problem."""


def thumbnail_name(frame_id: int) -> str:
    return f"kf_{int(frame_id):010d}.jpg"


def is_session_file(name: str) -> bool:
    """A name a session folder may hold (what a new save may replace)."""
    return name == MANIFEST or name in DATA_FILES or THUMBNAIL.fullmatch(name) is not None


# ------------------------------------------------------------------ Sim(3) arrays
def pack_sim3(poses: list[Sim3]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s (N,), R (N, 3, 3), t (N, 3)) float64: exact, unlike a 4x4 matrix (s R)."""
    s = np.array([p.s for p in poses], np.float64)
    R = np.array([p.R for p in poses], np.float64).reshape(-1, 3, 3)
    t = np.array([p.t for p in poses], np.float64).reshape(-1, 3)
    return s, R, t


def unpack_sim3(file: str, what: str, s: np.ndarray, R: np.ndarray, t: np.ndarray) -> list[Sim3]:
    """`pack_sim3` 's inverse, refusing non-finite values, s <= 0 and non-rotations."""
    if not (np.isfinite(s).all() and np.isfinite(R).all() and np.isfinite(t).all()):
        raise SessionError(f"{file}: {what} has non-finite values")
    if (s <= 0).any():
        raise SessionError(f"{file}: {what} has a scale <= 0")
    err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(initial=0.0)
    if err > 1e-6 or (len(R) and (np.linalg.det(R) <= 0).any()):
        raise SessionError(f"{file}: {what} holds a matrix that is not a rotation")
    return [Sim3(float(a), b, c) for a, b, c in zip(s, R, t, strict=True)]


# ------------------------------------------------------------------ array checks
class ArrayFile:
    """The arrays of one ``.npz`` with checks that name the file: `get` checks dtype and
    shape, named dimensions must agree across the file's arrays."""

    def __init__(self, name: str, arrays: Mapping[str, np.ndarray], optional=()) -> None:
        self.name = name
        self.arrays = arrays
        self.dims: dict[str, int] = {}
        self._optional = set(optional)

    def get(self, key: str, dtype: str, shape: tuple[int | str, ...]) -> np.ndarray:
        """``arrays[key]`` of numpy dtype ``dtype`` and ``shape`` (ints fixed, strings
        named dimensions); raises SessionError otherwise."""
        if key not in self.arrays:
            raise SessionError(f"{self.name}: array {key!r} is missing")
        a = self.arrays[key]
        if a.dtype != np.dtype(dtype):
            raise SessionError(f"{self.name}: {key} has dtype {a.dtype}, expected {dtype}")
        if a.ndim != len(shape):
            raise SessionError(
                f"{self.name}: {key} has shape {a.shape}, expected {len(shape)} dimensions"
            )
        for n, want in zip(a.shape, shape, strict=True):
            if isinstance(want, str):
                want = self.dims.setdefault(want, n)
            if n != want:
                raise SessionError(f"{self.name}: {key} has shape {a.shape}, expected {shape}")
        return a

    def has(self, key: str) -> bool:
        return key in self.arrays

    def check_keys(self, expected: set[str]) -> None:
        """No array beyond ``expected`` (plus the optional ones)."""
        extra = sorted(set(self.arrays) - expected - self._optional)
        if extra:
            raise SessionError(f"{self.name}: unexpected arrays {extra}")

    def finite(self, key: str, a: np.ndarray) -> np.ndarray:
        if not np.isfinite(a).all():
            raise SessionError(f"{self.name}: {key} has non-finite values")
        return a


def optional_float(x: float) -> float | None:
    """NaN in a file means 'none'."""
    return None if np.isnan(x) else float(x)
