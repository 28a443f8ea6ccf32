"""The configuration tree's sections that the engine and backends know, and the metadata
helper every section uses; importable without ROS (and without torch).

A field declared as ``field(default=60, metadata=param("frames per window", int_range=(2,
512)))`` carries its description, range and whether it can change while running. Each leaf's
name is its flat ROS parameter name (``chunk_size``, ``oracle_frames``). The node's
`NodeConfig` (ros/params.py) is these sections plus the ROS-only ones (input, frames, output,
planner); it generates its ROS parameter descriptors and ``--help`` from the metadata, and
the docs table and the YAML files in config/ are tested against it.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field
from typing import Any

_KEY = "scal3r_param"

BACKEND_KINDS = ("scal3r", "tiny", "oracle")
INTRINSICS_SOURCES = ("predicted", "camera_info")
GCS_ONLINE_MODES = ("causal", "off")


def param(
    description: str,
    *,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
    dynamic: bool = False,
) -> dict[str, Any]:
    """Metadata for one parameter: its description, an inclusive range, and whether the
    node applies changes while running (``dynamic``) or needs a restart."""
    return {
        _KEY: {
            "description": description,
            "int_range": int_range,
            "float_range": float_range,
            "dynamic": dynamic,
        }
    }


def param_info(f: Field) -> dict[str, Any]:
    """The ``param`` metadata of a dataclass field (KeyError when it has none)."""
    return f.metadata[_KEY]


def range_problem(name: str, value: object, info: dict[str, Any]) -> str | None:
    """What is wrong with one value on its own: a float (or a float in a list) that is not
    finite, or a number outside the field's range."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        return f"{name} must be finite, got {value}"
    bounds = info.get("int_range") or info.get("float_range")
    if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = bounds
        if not lo <= value <= hi:
            return f"{name} must be in [{lo}, {hi}], got {value}"
    return None


@dataclass
class BackendSection:
    """The network: which backend, its checkpoint and where it runs."""

    backend: str = field(
        default="scal3r",
        metadata=param(
            "network: scal3r (official checkpoint), tiny (random test net), oracle "
            "(synthetic ground truth)",
        ),
    )
    checkpoint: str = field(
        default="",
        metadata=param(
            "path of scal3r.pt (huggingface xbillowy/Scal3R); empty: "
            "~/.cache/scal3r_ros/scal3r.pt or $SCAL3R_CHECKPOINT",
        ),
    )
    checkpoint_sha256: str = field(
        default="",
        metadata=param(
            "SHA-256 the checkpoint must have (64 hex digits), checked at start, hashed "
            "once per file version; empty: the <checkpoint>.sha256 file beside it, if "
            "there is one",
        ),
    )
    allow_download: bool = field(
        default=False,
        metadata=param(
            "download the checkpoint with huggingface_hub when it is missing",
        ),
    )
    device: str = field(
        default="auto",
        metadata=param(
            "torch device: auto (cuda if available), cuda, cuda:N or cpu",
        ),
    )
    dtype: str = field(
        default="auto",
        metadata=param(
            "auto (bf16 autocast on CUDA, fp32 on CPU), float32 or bfloat16",
        ),
    )


@dataclass
class WindowSection:
    """Windows and GCS: chunk length and overlap (the rule: ``windowing.window_problem``),
    global context synchronisation, loop closure, the pipelined worker."""

    chunk_size: int = field(
        default=60,
        metadata=param(
            "frames per window (official 60)",
            int_range=(2, 512),
        ),
    )
    overlap: int = field(
        default=30,
        metadata=param(
            "frames shared by consecutive windows (official 30)",
            int_range=(1, 511),
        ),
    )
    gcs_mode: str = field(
        default="causal",
        metadata=param(
            "global context synchronisation: causal (running sums) or off",
        ),
    )
    loop_closure: bool = field(
        default=True,
        metadata=param(
            "detect loops and correct drift with a Sim(3) pose graph",
        ),
    )
    pipeline: bool = field(
        default=True,
        metadata=param(
            "place window k (alignment, map, loop verification, messages) on a second "
            "thread while window k+1 is in the network; same results as false (one window"
            " after the other), sooner",
        ),
    )


@dataclass
class MapSection:
    """The map: voxel size, confidence filter, point cap, disk cap of spilled frames, and
    the intrinsics its points are unprojected with."""

    voxel_size: float = field(
        default=0.0,
        metadata=param(
            "map voxel size in map units; 0 = automatic (1% of the first median depth)",
            float_range=(0.0, 100.0),
        ),
    )
    confidence_ratio: float = field(
        default=0.75,
        metadata=param(
            "keep pixels whose confidence exceeds this x their frame's mean (official 0.75)",
            float_range=(0.0, 10.0),
        ),
    )
    max_points: int = field(
        default=2_000_000,
        metadata=param(
            "hard cap on map points (older chunks are coarsened, then evicted)",
            int_range=(1000, 1000000000),
        ),
    )
    max_spill_mb: int = field(
        default=8192,
        metadata=param(
            "disk cap (MiB) on past frames and loop geometry spilled to "
            "$TMPDIR/scal3r_ros-<uid>; beyond it the oldest are deleted and loops back to"
            " them rejected; 0: keep none",
            int_range=(0, 10000000),
        ),
    )
    intrinsics: str = field(
        default="predicted",
        metadata=param(
            "intrinsics the depth is unprojected with: predicted (the network's) or "
            "camera_info (the camera's K from CameraInfo or camera_k, scaled to the network"
            " input; a window without a known K for every frame falls back to predicted)",
        ),
    )
    camera_k: list[float] = field(
        default_factory=list,
        metadata=param(
            "[fx, fy, cx, cy] in source pixels (the CameraInfo K convention) for cameras "
            "without CameraInfo; empty: none",
        ),
    )
    focal_ratio_warn: float = field(
        default=0.15,
        metadata=param(
            "warn when a window's predicted / known focal length is off 1 by more than "
            "this (wrong calibration or a bad window); 0: never",
            float_range=(0.0, 10.0),
            dynamic=True,
        ),
    )


@dataclass
class OracleSection:
    """The synthetic drive the oracle backend knows the ground truth of (tests, demo)."""

    oracle_seed: int = field(
        default=0,
        metadata=param(
            "oracle backend: seed of the synthetic drive",
            int_range=(0, 2147483647),
        ),
    )
    oracle_frames: int = field(
        default=200,
        metadata=param(
            "oracle backend: frames in the synthetic drive",
            int_range=(1, 10000000),
        ),
    )
    oracle_laps: float = field(
        default=1.15,
        metadata=param(
            "oracle backend: laps of the synthetic loop over all frames (as the camera's --laps)",
            float_range=(1.0, 10000.0),
        ),
    )
    oracle_width: int = field(
        default=160,
        metadata=param(
            "oracle backend: image width",
            int_range=(1, 100000),
        ),
    )
    oracle_height: int = field(
        default=48,
        metadata=param(
            "oracle backend: image height",
            int_range=(1, 100000),
        ),
    )
    oracle_drift_deg: float = field(
        default=0.0,
        metadata=param(
            "oracle backend: in-window yaw drift per frame [deg], to give loop closure work",
            float_range=(0.0, 5.0),
        ),
    )
    oracle_depth_noise: float = field(
        default=0.0,
        metadata=param(
            "oracle backend: relative depth noise (sigma)",
            float_range=(0.0, 1.0),
        ),
    )
    oracle_focal_error: float = field(
        default=1.0,
        metadata=param(
            "oracle backend: factor on the predicted focal length (1: exact), a network "
            "that misjudges the field of view, for tests of intrinsics camera_info",
            float_range=(0.1, 10.0),
        ),
    )
    oracle_window_delays: list[float] = field(
        default_factory=list,
        metadata=param(
            "oracle backend: extra seconds the k-th window takes (the last value repeats;"
            " empty: none), a slow network for tests of stopping and saving",
        ),
    )


@dataclass
class SensorSection:
    """The robot's other sensors as factors in the chunk pose graph (``sensor_fusion``) and
    the map's levelling: each off while its topic is empty."""

    odometry_topic: str = field(
        default="",
        metadata=param(
            "nav_msgs/Odometry (pose of base_frame in an odometry frame), interpolated at the"
            " image stamps: a metric motion factor between consecutive windows; empty: off",
        ),
    )
    odometry_sigma_rot: float = field(
        default=0.005,
        metadata=param(
            "odometry factor: rotation sigma [rad] per motion between windows",
            float_range=(1e-6, 10.0),
        ),
    )
    odometry_sigma_trans: float = field(
        default=0.02,
        metadata=param(
            "odometry factor: translation sigma [m] per motion (plus odometry_sigma_per_m "
            "x its length)",
            float_range=(1e-6, 100.0),
        ),
    )
    odometry_sigma_per_m: float = field(
        default=0.01,
        metadata=param(
            "odometry factor: translation sigma growth per metre travelled",
            float_range=(0.0, 10.0),
        ),
    )
    odometry_use_covariance: bool = field(
        default=False,
        metadata=param(
            "odometry factor sigmas from the growth of the messages' pose covariance between"
            " the two stamps (never below the sigma parameters)",
        ),
    )
    odometry_robust_k: float = field(
        default=3.0,
        metadata=param(
            "odometry factor: Huber kernel width in sigmas (slipping wheels); 0: no kernel",
            float_range=(0.0, 100.0),
        ),
    )
    gnss_topic: str = field(
        default="",
        metadata=param(
            "sensor_msgs/NavSatFix: position priors in a local ENU frame anchored at the "
            "first fix (pymap3d, WGS84); NO_FIX ignored; empty: off",
        ),
    )
    gnss_default_sigma_m: float = field(
        default=3.0,
        metadata=param(
            "GNSS sigma [m] per axis when a fix has no covariance (COVARIANCE_TYPE_UNKNOWN)",
            float_range=(0.01, 1000.0),
        ),
    )
    gnss_max_sigma_m: float = field(
        default=50.0,
        metadata=param(
            "fixes whose covariance says worse than this [m] are not used (counted)",
            float_range=(0.01, 100000.0),
        ),
    )
    gnss_max_dt_s: float = field(
        default=0.1,
        metadata=param(
            "a fix is the prior of the frame nearest in time within this [s]",
            float_range=(0.0, 10.0),
        ),
    )
    gnss_init_spread_m: float = field(
        default=10.0,
        metadata=param(
            "the map -> ENU relation is first fitted once the fixes spread this far [m]",
            float_range=(0.1, 10000.0),
        ),
    )
    gnss_robust_k: float = field(
        default=2.0,
        metadata=param(
            "GNSS prior: Huber kernel width in sigmas (jumps, multipath); 0: no kernel",
            float_range=(0.0, 100.0),
        ),
    )
    enu_frame: str = field(
        default="enu",
        metadata=param(
            "with GNSS: the local ENU frame (origin at the first fix, x east, y north, z up),"
            " published as the parent of the map frame on /tf once fitted",
        ),
    )
    imu_topic: str = field(
        default="",
        metadata=param(
            "sensor_msgs/Imu: levels the map (roll/pitch, REP-103 z up) from the orientation "
            "when given, else from the acceleration while still; axes of base_frame unless "
            "/tf_static links base_frame to the message's frame; empty: off",
        ),
    )
    gravity_samples: int = field(
        default=50,
        metadata=param(
            "still accelerometer samples averaged for the gravity direction",
            int_range=(1, 100000),
        ),
    )
    gravity_max_spread: float = field(
        default=0.1,
        metadata=param(
            "samples count as still while their spread (std per axis) stays below this [m/s^2]",
            float_range=(0.0, 100.0),
        ),
    )


SESSION_MODES = ("mapping", "localisation")


@dataclass
class SessionSection:
    """Saved maps to come back to (issue 17): start in one, and save one with every save."""

    map_file: str = field(
        default="",
        metadata=param(
            "saved session to start in: a save's folder or its session/ folder (absolute, or "
            "relative to output_dir); its map is published at once and new frames "
            "relocalise in it; empty: start with an empty map",
        ),
    )
    session_mode: str = field(
        default="mapping",
        metadata=param(
            "after relocalising: mapping (new windows extend the loaded map) or "
            "localisation (the loaded map is not changed, memory stays flat)",
        ),
    )
    save_session: bool = field(
        default=True,
        metadata=param(
            "every save (~/save_map, at shutdown) also writes the session folder session/ "
            "inside the save folder, to load later (map_file, ~/load_map)",
            dynamic=True,
        ),
    )
