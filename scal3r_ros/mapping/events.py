"""What goes into the engine (``Frame``) and what comes out (``MapUpdate`` events).

Plain dataclasses over numpy arrays so that the ROS adapter only converts, and tests
can inspect every event. All poses are camera-to-world 4x4 (OpenCV camera axes) in
the engine's ``map`` frame, whose origin/orientation is the reference camera of the
first chunk and whose scale is that chunk's (arbitrary) scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One camera image. ``image`` is HxWx3 uint8 RGB; ``intrinsics`` 3x3 or None."""

    stamp_ns: int
    camera_id: str
    image: np.ndarray
    intrinsics: np.ndarray | None = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"Frame.image must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
        if self.intrinsics is not None:
            K = np.asarray(self.intrinsics, dtype=np.float64)
            if K.shape != (3, 3):
                raise ValueError(f"Frame.intrinsics must be 3x3, got {K.shape}")
            self.intrinsics = K
        self.image = img


@dataclass
class MapUpdate:
    """Base of all engine events. ``chunk_id`` is the chunk that caused it (-1: none)."""

    chunk_id: int


@dataclass
class PosesUpdate(MapUpdate):
    """Poses of frames, by engine frame index (0-based arrival order).

    ``corrected`` is False for frames seen for the first time and True when poses of
    already published frames changed (overlap hand-over, loop closure, pose graph).
    """

    frame_ids: np.ndarray  # (N,) int64
    stamps_ns: np.ndarray  # (N,) int64
    c2w: np.ndarray  # (N, 4, 4) float64, rigid
    corrected: bool = False
    reason: str = ""  # "new", "overlap", "loop_closure", ...
    camera_ids: tuple[str, ...] = ()  # each frame's camera (set for new frames)


@dataclass
class PointsUpdate(MapUpdate):
    """New map points of one chunk, in the map frame (already voxel-filtered)."""

    xyz: np.ndarray  # (M, 3) float32
    rgb: np.ndarray  # (M, 3) uint8
    confidence: np.ndarray  # (M,) float32


@dataclass
class FrameCloudsUpdate(MapUpdate):
    """Per-frame depth of the frames a chunk placed for the first time (only when
    ``EngineConfig.frame_clouds`` is on): the input of sensor-frame clouds.

    ``depth`` is z-depth in map units (the chunk's scale to the map applied), NaN where
    invalid; ``intrinsics`` at depth resolution; ``confidence`` as the map uses it.
    """

    frame_ids: np.ndarray  # (F,) int64
    stamps_ns: np.ndarray  # (F,) int64
    camera_ids: tuple[str, ...]
    depth: np.ndarray  # (F, h, w) float32
    confidence: np.ndarray  # (F, h, w) float32
    intrinsics: np.ndarray  # (F, 3, 3) float64


@dataclass
class MapCorrected(MapUpdate):
    """Chunk Sim(3)s changed (loop closure / pose graph): the accumulated map moved.

    ``chunk_sim3`` maps chunk id -> new 4x4 chunk-to-map similarity.
    """

    chunk_sim3: dict[int, np.ndarray]


@dataclass
class AlignmentReport(MapUpdate):
    """Result of tying ``chunk_id`` to ``other_chunk_id`` (previous chunk or loop).

    When ``ok`` is False the fit was rejected (``reason`` says why), the chunk was
    placed with the ``fallback`` method and its points were kept out of the map.
    """

    other_chunk_id: int
    ok: bool
    reason: str
    n_points: int
    inlier_ratio: float
    rmse: float
    scale: float
    fallback: str = ""


@dataclass
class LoopClosureUpdate(MapUpdate):
    """A verified loop between two chunks (the edge added to the pose graph)."""

    other_chunk_id: int
    sim3: np.ndarray  # 4x4, chunk_id coords -> other_chunk_id coords
    frame_ids: tuple[int, int] = (-1, -1)
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class ChunkFailed(MapUpdate):
    """The backend failed on a window (e.g. CUDA out of memory).

    ``will_retry``: the window is kept and tried again when the next window is ready;
    otherwise it was skipped after ``attempt`` tries and the map has a gap there (the
    next window cannot be tied to the map by overlap; see its ``AlignmentReport``).
    """

    error: str
    attempt: int
    will_retry: bool


@dataclass
class StatsUpdate(MapUpdate):
    """Per-chunk timings (seconds per stage) and memory figures (bytes / counts), and the
    intrinsics the window was unprojected with (``mapping.intrinsics``): ``focal_ratio``
    is predicted / known focal length (0: no known K), ``intrinsics_fallbacks`` the windows
    since the start (or reset) that wanted camera_info but had no K for every frame."""

    timings: dict[str, float]
    memory: dict[str, float]
    intrinsics_source: str = ""  # "predicted" | "camera_info" ("": not a window)
    focal_ratio: float = 0.0
    intrinsics_fallbacks: int = 0


@dataclass
class SensorFusionUpdate(MapUpdate):
    """The robot's other sensors after a placed window (``sensor_fusion``).

    ``scale``: metres per engine unit from the graph (odometry and/or GNSS), None until
    known. ``enu``: the 4x4 similarity engine map -> local ENU metres, None until GNSS
    fitted it; ``enu_anchor``: latitude, longitude, altitude of ENU's origin (first fix).
    ``counts``: messages used / rejected per reason and GNSS outliers; ``residuals``: the
    newest factors' residuals after the optimisation [m] (NaN: none yet).
    """

    scale: float | None = None
    enu: np.ndarray | None = None
    enu_anchor: tuple[float, float, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)


@dataclass
class RelocalisationUpdate(MapUpdate):
    """Where relocalisation in a loaded session stands (``MappingEngine.load_session``):
    emitted with every placed window until ``state`` is ``localised``, then once with it
    (that batch carries ``PosesUpdate(corrected=True, reason="relocalised")`` and a
    ``MapCorrected``: the new frames in the loaded map's frame). Before the fix the new
    frames' poses are in the new chain's own gauge, not in the loaded map."""

    state: str  # "relocalising" | "localised"
    windows_tried: int  # new windows matched against the keyframes so far
    frames_tried: int  # new frames seen since the load
    matched_chunk_id: int = -1  # loaded chunk the accepted match tied to (-1: none yet)
    inlier_ratio: float = float("nan")
    rmse: float = float("nan")  # map units
    reason: str = ""  # why the newest attempt was turned down ("no candidate", ...)
