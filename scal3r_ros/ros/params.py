"""The node's parameters: one table of (name, default, description, constraints).

Each entry is declared on the node with a descriptor (type, description, range,
read-only) so `ros2 param describe` explains it, then read into the `NodeConfig`
dataclass and validated as a whole (e.g. chunk_size > overlap) before anything starts.
The YAML files in config/ set the same names.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from scal3r_ros.mapping.scale import SCALE_SOURCES
from scal3r_ros.ros.conversions import ImageLimits
from scal3r_ros.ros.input_checks import StampPolicy

BACKENDS = ("scal3r", "tiny", "oracle")
GCS_ONLINE_MODES = ("causal", "off")
QOS_CHOICES = ("sensor_data", "reliable")
TIME_JUMP_POLICIES = ("reset", "drop")
_DOUBLES = Parameter.Type.DOUBLE_ARRAY
_ARRAY_TYPES = {"camera_xyz": _DOUBLES, "camera_rpy": _DOUBLES, "oracle_window_delays": _DOUBLES}


@dataclass
class NodeConfig:
    # --- network / backend
    backend: str = "scal3r"
    checkpoint: str = ""  # empty: ~/.cache/scal3r_ros/scal3r.pt (or $SCAL3R_CHECKPOINT)
    checkpoint_sha256: str = ""  # empty: <checkpoint>.sha256 beside it, if there is one
    allow_download: bool = False
    device: str = "auto"
    dtype: str = "auto"
    # --- windows and GCS
    chunk_size: int = 60
    overlap: int = 30
    gcs_mode: str = "causal"
    loop_closure: bool = True
    # --- map
    voxel_size: float = 0.0
    confidence_ratio: float = 0.75
    max_points: int = 2_000_000
    max_spill_mb: int = 8192  # disk for past frames + loop geometry, oldest deleted beyond
    # --- input
    image_topics: list[str] = field(default_factory=lambda: ["/camera/image_raw"])
    compressed_topics: list[str] = field(default_factory=list)
    camera_info_topics: list[str] = field(default_factory=list)
    input_qos: str = "sensor_data"
    input_qos_depth: int = 10
    queue_size: int = 64
    drop_policy: str = "drop_oldest"
    on_time_jump: str = "reset"
    time_jump_min_frames: int = 3
    max_stamp_gap_s: float = 10.0
    max_future_stamp_s: float = 300.0
    max_image_pixels: int = 50_000_000
    min_image_side: int = 16
    max_image_aspect: float = 8.0
    # --- frames
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = ""
    camera_xyz: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    camera_rpy: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    use_tf_static: bool = True
    publish_camera_tf: bool = True
    # --- output
    map_publish_period: float = 2.0
    path_publish_period: float = 1.0
    path_max_poses: int = 5000
    status_period: float = 0.5
    progress_log_period: float = 5.0
    output_dir: str = os.path.join("~", ".ros", "scal3r_ros")
    save_on_shutdown: bool = True
    shutdown_window_wait: float = 30.0
    # --- planner outputs: metric scale, sensor-frame clouds, occupancy grid
    scale_source: str = "none"
    camera_height_m: float = 1.65
    scale_odometry_topic: str = "/odom"
    scale_odometry_window_s: float = 10.0
    stereo_baseline_m: float = 0.0
    sensor_cloud_enabled: bool = False
    sensor_cloud_frames: str = "all"
    sensor_cloud_every_n: int = 5
    sensor_cloud_voxel_size: float = 0.1
    sensor_cloud_max_points: int = 20000
    sensor_cloud_max_depth: float = 40.0
    occupancy_enabled: bool = False
    occupancy_resolution: float = 0.2
    occupancy_ground_band: float = 0.15
    occupancy_obstacle_min: float = 0.15
    occupancy_obstacle_max: float = 2.0
    # --- oracle backend (synthetic drive known to the node; tests and the demo)
    oracle_seed: int = 0
    oracle_frames: int = 200
    oracle_laps: float = 1.15
    oracle_width: int = 160
    oracle_height: int = 48
    oracle_drift_deg: float = 0.0
    oracle_depth_noise: float = 0.0
    oracle_window_delays: list[float] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent parameter."""
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.overlap < 1 or self.chunk_size <= self.overlap:
            problems.append(
                f"need chunk_size > overlap >= 1, got chunk_size={self.chunk_size}, "
                f"overlap={self.overlap}"
            )
        if self.gcs_mode not in GCS_ONLINE_MODES:
            problems.append(
                f"gcs_mode must be one of {GCS_ONLINE_MODES} in the node "
                f"(use the offline tool for 'exact'), got {self.gcs_mode!r}"
            )
        if self.input_qos not in QOS_CHOICES:
            problems.append(f"input_qos must be one of {QOS_CHOICES}, got {self.input_qos!r}")
        if self.drop_policy not in ("drop_oldest", "drop_newest"):
            problems.append(f"drop_policy must be drop_oldest or drop_newest, got "
                            f"{self.drop_policy!r}")  # fmt: skip
        if self.on_time_jump not in TIME_JUMP_POLICIES:
            problems.append(f"on_time_jump must be one of {TIME_JUMP_POLICIES}")
        if not (self.image_topics or self.compressed_topics):
            problems.append("no input: set image_topics and/or compressed_topics")
        if len(self.camera_xyz) != 3 or len(self.camera_rpy) != 3:
            problems.append("camera_xyz and camera_rpy need 3 numbers each")
        if len({self.map_frame, self.odom_frame, self.base_frame}) != 3:
            problems.append("map_frame, odom_frame and base_frame must differ")
        if self.scale_source not in SCALE_SOURCES:
            problems.append(f"scale_source must be one of {SCALE_SOURCES}, got "
                            f"{self.scale_source!r}")  # fmt: skip
        if self.occupancy_enabled and self.scale_source == "none":
            problems.append("occupancy_enabled needs a metric scale: set scale_source "
                            "(camera_height, odometry or stereo)")  # fmt: skip
        if self.sensor_cloud_frames not in ("all", "every_n", "newest"):
            problems.append("sensor_cloud_frames must be all, every_n or newest")
        if not self.occupancy_obstacle_min < self.occupancy_obstacle_max:
            problems.append("need occupancy_obstacle_min < occupancy_obstacle_max")
        if any(not 0.0 <= d <= 86400.0 for d in self.oracle_window_delays):
            problems.append("oracle_window_delays must be seconds in [0, 86400]")
        for f in fields(self):
            problem = value_problem(f.name, getattr(self, f.name))
            if problem:
                problems.append(problem)
        if self.backend == "oracle" and not problems:
            try:
                self.image_limits().check(self.oracle_width, self.oracle_height)
            except ValueError as exc:
                problems.append(f"the oracle's images are refused by the input limits: {exc}")
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.min_image_side, self.max_image_aspect)

    def stamp_policy(self) -> StampPolicy:
        return StampPolicy(self.on_time_jump, self.time_jump_min_frames, self.max_stamp_gap_s,
                           self.max_future_stamp_s)  # fmt: skip


def value_problem(name: str, value: object) -> str | None:
    """What is wrong with one parameter's value on its own: a float (or float in a list)
    that is not finite, a number outside its descriptor's range. rclpy enforces ranges
    only in some versions and never looks inside lists, and a NaN camera mount crashed
    the node later, so NodeConfig checks every value itself."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        return f"{name} must be finite, got {value}"
    extra = _DOC.get(name, ("", {}))[1]
    bounds = extra.get("int_range") or extra.get("float_range")
    if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = bounds
        if not lo <= value <= hi:
            return f"{name} must be in [{lo}, {hi}], got {value}"
    return None


# name -> (description, extra descriptor fields)
_DOC: dict[str, tuple[str, dict]] = {
    "backend": (
        "network: scal3r (official checkpoint), tiny (random test net), oracle "
        "(synthetic ground truth)",
        {"read_only": True},
    ),
    "checkpoint": (
        "path of scal3r.pt (huggingface xbillowy/Scal3R); empty: "
        "~/.cache/scal3r_ros/scal3r.pt or $SCAL3R_CHECKPOINT",
        {"read_only": True},
    ),
    "checkpoint_sha256": (
        "SHA-256 the checkpoint must have (64 hex digits), checked at start, hashed once per "
        "file version; empty: the <checkpoint>.sha256 file beside it, if there is one",
        {"read_only": True},
    ),
    "allow_download": (
        "download the checkpoint with huggingface_hub when it is missing",
        {"read_only": True},
    ),
    "device": ("torch device: auto (cuda if available), cuda, cuda:N or cpu", {"read_only": True}),
    "dtype": (
        "auto (bf16 autocast on CUDA, fp32 on CPU), float32 or bfloat16",
        {"read_only": True},
    ),
    "chunk_size": ("frames per window (official 60)", {"read_only": True, "int_range": (2, 512)}),
    "overlap": (
        "frames shared by consecutive windows (official 30)",
        {"read_only": True, "int_range": (1, 511)},
    ),
    "gcs_mode": (
        "global context synchronisation: causal (running sums) or off",
        {"read_only": True},
    ),
    "loop_closure": (
        "detect loops and correct drift with a Sim(3) pose graph",
        {"read_only": True},
    ),
    "voxel_size": (
        "map voxel size in map units; 0 = automatic (1% of the first median depth)",
        {"read_only": True, "float_range": (0.0, 100.0)},
    ),
    "confidence_ratio": (
        "keep pixels whose confidence exceeds this x their frame's mean (official 0.75)",
        {"read_only": True, "float_range": (0.0, 10.0)},
    ),
    "max_points": (
        "hard cap on map points (older chunks are coarsened, then evicted)",
        {"read_only": True, "int_range": (1000, 1_000_000_000)},
    ),
    "max_spill_mb": (
        "disk cap (MiB) on past frames and loop geometry spilled to $TMPDIR/scal3r_ros-<uid>; "
        "beyond it the oldest are deleted and loops back to them rejected; 0: keep none",
        {"read_only": True, "int_range": (0, 10_000_000)},
    ),
    "image_topics": (
        "sensor_msgs/Image topics (rgb8, bgr8, rgba8, bgra8, mono8, mono16)",
        {"read_only": True},
    ),
    "compressed_topics": ("sensor_msgs/CompressedImage topics (jpeg, png)", {"read_only": True}),
    "camera_info_topics": (
        "optional CameraInfo topics, same order as the image topics",
        {"read_only": True},
    ),
    "input_qos": (
        "image subscription QoS: sensor_data (best effort) or reliable",
        {"read_only": True},
    ),
    "input_qos_depth": (
        "image subscription history depth",
        {"read_only": True, "int_range": (1, 1000)},
    ),
    "queue_size": (
        "frames waiting for the worker before the drop policy applies",
        {"read_only": True, "int_range": (1, 100000)},
    ),
    "drop_policy": ("when the queue is full: drop_oldest or drop_newest", {"read_only": True}),
    "on_time_jump": (
        "stamps going backwards (bag loop): reset the map, or drop the frames; a reset "
        "needs time_jump_min_frames older frames in a row or a backward jump of /clock",
        {},
    ),
    "time_jump_min_frames": (
        "frames in a row (increasing stamps) that confirm a time jump of a camera, "
        "backward or beyond max_stamp_gap_s forward; until then they are held, and dropped "
        "(stamp_outlier) if the stream goes on; 1: any single frame",
        {"read_only": True, "int_range": (1, 100)},
    ),
    "max_stamp_gap_s": (
        "the largest step between a camera's stamps taken without evidence [s]; a larger "
        "jump forward needs time_jump_min_frames frames in a row",
        {"read_only": True, "float_range": (0.001, 1e6)},
    ),
    "max_future_stamp_s": (
        "drop frames stamped more than this ahead of the node's clock (future_stamp) [s]; "
        "0: off; not checked before the clock runs (sim time before /clock)",
        {"read_only": True, "float_range": (0.0, 1e9)},
    ),
    "max_image_pixels": (
        "refuse larger images (image_size), raw or compressed, from the header before "
        "decoding; also Pillow's MAX_IMAGE_PIXELS",
        {"read_only": True, "int_range": (1024, 1_000_000_000)},
    ),
    "min_image_side": (
        "refuse images with a side shorter than this [px] (image_size)",
        {"read_only": True, "int_range": (1, 100_000)},
    ),
    "max_image_aspect": (
        "refuse images whose long side exceeds this x the short side (image_size)",
        {"read_only": True, "float_range": (1.0, 1000.0)},
    ),
    "map_frame": ("fixed frame of the map, /tf root (REP-105)", {"read_only": True}),
    "odom_frame": ("odometry frame between map and base_link", {"read_only": True}),
    "base_frame": ("robot body frame", {"read_only": True}),
    "camera_frame": (
        "camera optical frame; empty = the images' header.frame_id",
        {"read_only": True},
    ),
    "camera_xyz": (
        "camera body position in base_frame [m], used when /tf_static has none",
        {"read_only": True},
    ),
    "camera_rpy": ("camera body roll/pitch/yaw in base_frame [rad]", {"read_only": True}),
    "use_tf_static": (
        "take the camera mount from /tf_static when it is published",
        {"read_only": True},
    ),
    "publish_camera_tf": (
        "publish base_frame -> camera optical frame on /tf_static from "
        "camera_xyz/rpy when /tf_static has none",
        {"read_only": True},
    ),
    "map_publish_period": (
        "seconds between ~/map publications (0: only on request)",
        {"float_range": (0.0, 3600.0)},
    ),
    "path_publish_period": (
        "seconds between ~/path publications (0: after every window)",
        {"float_range": (0.0, 3600.0)},
    ),
    "path_max_poses": (
        "most poses in one ~/path message, evenly thinned (0: all); saved trajectories "
        "are always complete",
        {"int_range": (0, 10_000_000)},
    ),
    "status_period": (
        "seconds between ~/status and /diagnostics messages",
        {"read_only": True, "float_range": (0.05, 60.0)},
    ),
    "progress_log_period": (
        "seconds between one-line progress summaries in the log (frames, windows, map "
        "points, fps, latency); 0: off",
        {"float_range": (0.0, 3600.0)},
    ),
    "output_dir": (
        "directory for saved maps and trajectories (nothing is written outside)",
        {"read_only": True},
    ),
    "save_on_shutdown": ("save map and trajectory when the node stops", {}),
    "shutdown_window_wait": (
        "seconds a stop (first Ctrl-C) waits for the window in progress and the stream's "
        "last frames; then, or at a second Ctrl-C or SIGTERM, the map is saved as mapped "
        "so far",
        {"float_range": (0.0, 3600.0)},
    ),
    "scale_source": (
        "metric scale: none (arbitrary), camera_height (ground plane), odometry "
        "(reference nav_msgs/Odometry) or stereo (second camera, known baseline)",
        {"read_only": True},
    ),
    "camera_height_m": (
        "camera height above the ground [m] (camera_height scale, grid ground)",
        {"read_only": True, "float_range": (0.01, 100.0)},
    ),
    "scale_odometry_topic": (
        "nav_msgs/Odometry used by the odometry scale source",
        {"read_only": True},
    ),
    "scale_odometry_window_s": (
        "sliding window of the odometry scale source [s]",
        {"read_only": True, "float_range": (0.5, 600.0)},
    ),
    "stereo_baseline_m": (
        "stereo baseline [m]; 0 = from the second camera_info topic's P",
        {"read_only": True, "float_range": (0.0, 10.0)},
    ),
    "sensor_cloud_enabled": (
        "publish ~/sensor_cloud: per-frame clouds in the camera optical "
        "frame at the image stamp (for costmap obstacle layers)",
        {"read_only": True},
    ),
    "sensor_cloud_frames": (
        "which frames get a sensor cloud: all, every_n or newest (one per window)",
        {"read_only": True},
    ),
    "sensor_cloud_every_n": (
        "with sensor_cloud_frames every_n: every n-th frame",
        {"read_only": True, "int_range": (1, 1000)},
    ),
    "sensor_cloud_voxel_size": (
        "sensor cloud voxel size [m, or map units without scale]",
        {"read_only": True, "float_range": (0.0, 10.0)},
    ),
    "sensor_cloud_max_points": (
        "cap on points per sensor cloud",
        {"read_only": True, "int_range": (1, 10_000_000)},
    ),
    "sensor_cloud_max_depth": (
        "drop sensor-cloud points farther than this [m]; 0: no limit",
        {"read_only": True, "float_range": (0.0, 10000.0)},
    ),
    "occupancy_enabled": (
        "publish ~/grid (nav_msgs/OccupancyGrid in map) and save it with the "
        "map; needs a scale_source",
        {"read_only": True},
    ),
    "occupancy_resolution": (
        "grid cell size [m]",
        {"read_only": True, "float_range": (0.01, 10.0)},
    ),
    "occupancy_ground_band": (
        "points within this height of the ground are ground [m]",
        {"read_only": True, "float_range": (0.0, 5.0)},
    ),
    "occupancy_obstacle_min": (
        "lowest obstacle height above ground [m]",
        {"read_only": True, "float_range": (0.0, 10.0)},
    ),
    "occupancy_obstacle_max": (
        "highest obstacle height above ground [m] (higher: ignored, e.g. trees, bridges)",
        {"read_only": True, "float_range": (0.0, 100.0)},
    ),
    "oracle_seed": (
        "oracle backend: seed of the synthetic drive",
        {"read_only": True, "int_range": (0, 2**31 - 1)},
    ),
    "oracle_frames": (
        "oracle backend: frames in the synthetic drive",
        {"read_only": True, "int_range": (1, 10_000_000)},
    ),
    "oracle_laps": (
        "oracle backend: laps of the synthetic loop over all frames (as the camera's --laps)",
        {"read_only": True, "float_range": (1.0, 10000.0)},
    ),
    "oracle_width": (
        "oracle backend: image width",
        {"read_only": True, "int_range": (1, 100_000)},
    ),
    "oracle_height": (
        "oracle backend: image height",
        {"read_only": True, "int_range": (1, 100_000)},
    ),
    "oracle_drift_deg": (
        "oracle backend: in-window yaw drift per frame [deg], to give loop closure work",
        {"read_only": True, "float_range": (0.0, 5.0)},
    ),
    "oracle_depth_noise": (
        "oracle backend: relative depth noise (sigma)",
        {"read_only": True, "float_range": (0.0, 1.0)},
    ),
    "oracle_window_delays": (
        "oracle backend: extra seconds the k-th window takes (the last value repeats; "
        "empty: none), a slow network for tests of stopping and saving",
        {"read_only": True},
    ),
}


DYNAMIC = tuple(name for name, (_, extra) in _DOC.items() if not extra.get("read_only"))
"""Parameters the node applies while running (the others need a restart)."""


def declare_and_read(node: Node, overrides: dict | None = None) -> NodeConfig:
    """Declare every parameter with its descriptor, read them, validate."""
    defaults = NodeConfig()
    values = {}
    for f in fields(NodeConfig):
        doc, extra = _DOC[f.name]
        desc = ParameterDescriptor(description=doc, read_only=extra.get("read_only", False))
        if "int_range" in extra:
            lo, hi = extra["int_range"]
            desc.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
        if "float_range" in extra:
            lo, hi = extra["float_range"]
            desc.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
        default = (overrides or {}).get(f.name, getattr(defaults, f.name))
        if isinstance(default, list):  # rclpy cannot type an empty list by itself
            ptype = _ARRAY_TYPES.get(f.name, Parameter.Type.STRING_ARRAY)
            default = [float(x) for x in default] if ptype == _DOUBLES else list(default)
            param = node.declare_parameter(f.name, default or ptype, desc)
        else:
            param = node.declare_parameter(f.name, default, desc)
        value = param.value
        values[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        if values[f.name] is None:
            values[f.name] = []
    config = NodeConfig(**values)
    config.validate()
    return config


# ============================================================ parameter files and -p overrides
# rcl keeps a parameter set twice with different types (a file's `chunk_size: 16`, then
# `-p chunk_size:=abc`) as two values of one variant, and rclpy takes the integer: the
# override vanishes without a word. Parameters nobody declares (`chunk_sise`) vanish too.
# So the console script reads every parameter source itself first, the way rcl types it,
# rejects values of the wrong type with a message naming where they came from, and warns
# about names the node does not know.

ROS_OWN_PARAMETERS = {
    "use_sim_time": Parameter.Type.BOOL,
    "start_type_description_service": Parameter.Type.BOOL,
}
"""Parameters rclpy declares on every node."""
_ROS_OWN_PREFIXES = ("qos_overrides.",)  # rclpy's QoS-override family (not a typo)

_TYPE_WORDS = {
    Parameter.Type.BOOL: "true or false",
    Parameter.Type.INTEGER: "an integer",
    Parameter.Type.DOUBLE: "a float (with a decimal point: 1.0, not 1)",
    Parameter.Type.STRING: "a string",
    Parameter.Type.BOOL_ARRAY: "a list of true/false",
    Parameter.Type.INTEGER_ARRAY: "a list of integers",
    Parameter.Type.DOUBLE_ARRAY: "a list of floats (with decimal points: [0.0, 1.0])",
    Parameter.Type.STRING_ARRAY: "a list of strings",
}
_ARRAY_OF = {
    Parameter.Type.BOOL: Parameter.Type.BOOL_ARRAY,
    Parameter.Type.INTEGER: Parameter.Type.INTEGER_ARRAY,
    Parameter.Type.DOUBLE: Parameter.Type.DOUBLE_ARRAY,
    Parameter.Type.STRING: Parameter.Type.STRING_ARRAY,
}
# rcl's scalar typing (rcl_yaml_param_parser get_value): YAML 1.1 words for booleans,
# strtol(base 0) integers, strtod doubles plus .inf/.nan; everything else is a string
_TRUE = {"Y", "y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"N", "n", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_INT = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_FLOAT = re.compile(
    r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)"
    r"([pP][+-]?\d+)?|inf(inity)?|nan(\([0-9A-Za-z_]*\))?)",
    re.IGNORECASE,
)
_YAML_FLOAT_WORDS = {f"{sign}.{word}" for sign in ("", "+", "-") for word in ("inf", "Inf", "INF")}
_YAML_FLOAT_WORDS |= {".nan", ".NaN", ".NAN"}


class ParameterInputError(ValueError):
    """A parameter file or override that rclpy would reject or silently misread."""


@dataclass(frozen=True)
class ParameterSetting:
    """One parameter value from a parameter file or a ``-p name:=value`` override."""

    name: str
    value: object
    type: Parameter.Type | None  # None: an empty list (fits any list parameter)
    source: str  # where it was set, for messages


@dataclass
class RosArguments:
    """What the console script needs to know of its ``--ros-args`` sections."""

    tokens: list[str] = field(default_factory=list)  # every ROS token, markers included
    param_files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the NAME:=VALUE rules of -p
    node_name: str = "scal3r_mapping"
    namespace: str = "/"
    help: bool = False

    @property
    def node_fqn(self) -> str:
        return self.namespace.rstrip("/") + "/" + self.node_name


_ROS_FLAGS_WITH_VALUE = {"-p", "--param", "--params-file", "-r", "--remap", "-e", "--enclave",
                         "--log-level", "--log-config-file", "--log-file-name"}  # fmt: skip


def split_ros_args(argv: list[str]) -> tuple[list[str], RosArguments]:
    """Split ``argv`` (without the program name) into the script's own arguments and its
    ``--ros-args ... [--]`` sections, noting parameter files, overrides and node remaps."""
    own: list[str] = []
    ros = RosArguments()
    in_ros = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros = True
            ros.tokens.append(arg)
        elif not in_ros:
            own.append(arg)
        elif arg == "--":
            in_ros = False
            ros.tokens.append(arg)
        elif arg in ("-h", "--help"):
            ros.help = True  # rcl knows no help: answered by the script
        elif arg in _ROS_FLAGS_WITH_VALUE:
            if i + 1 >= len(argv):
                raise ParameterInputError(f"--ros-args {arg} needs a value")
            value = argv[i + 1]
            ros.tokens += [arg, value]
            i += 1
            if arg in ("-p", "--param"):
                ros.overrides.append(value)
            elif arg == "--params-file":
                ros.param_files.append(value)
            elif arg in ("-r", "--remap"):
                lhs, _, rhs = value.partition(":=")
                target = lhs.rpartition(":")[2]  # [node:]__node:=name
                if target in ("__node", "__name"):
                    ros.node_name = rhs
                elif target == "__ns":
                    ros.namespace = rhs
        else:
            ros.tokens.append(arg)
        i += 1
    return own, ros


def parameter_types() -> dict[str, Parameter.Type]:
    """The declared type of every node parameter (as ``declare_and_read`` declares it)."""
    types = {}
    for f in fields(NodeConfig):
        default = getattr(NodeConfig(), f.name)
        if isinstance(default, list):
            types[f.name] = _ARRAY_TYPES.get(f.name, Parameter.Type.STRING_ARRAY)
        else:
            types[f.name] = Parameter.Type.from_parameter_value(default)
    return types


def _rcl_scalar(text: str, quoted: bool) -> tuple[Parameter.Type, object]:
    """Type a YAML scalar as rcl does (not as PyYAML: `1e-3` is a double, `y` a bool)."""
    if not quoted:
        if text in _TRUE or text in _FALSE:
            return Parameter.Type.BOOL, text in _TRUE
        if _INT.fullmatch(text):
            body = text.strip()
            digits = body.lstrip("+-")
            base = 16 if digits[:2].lower() == "0x" else 8 if digits[:1] == "0" else 10
            value = int(digits, base) * (-1 if body.startswith("-") else 1)
            if -(2**63) <= value < 2**63:
                return Parameter.Type.INTEGER, value
        if text in _YAML_FLOAT_WORDS:
            return Parameter.Type.DOUBLE, float(text.replace(".", "", 1))
        if _FLOAT.fullmatch(text):
            body = text.strip()
            if "x" in body.lower():
                return Parameter.Type.DOUBLE, float.fromhex(body)
            return Parameter.Type.DOUBLE, float(body.split("(")[0])
    return Parameter.Type.STRING, text


def _typed(node: yaml.Node, where: str) -> tuple[Parameter.Type | None, object]:
    if isinstance(node, yaml.ScalarNode):
        quoted = node.style in ("'", '"')
        if not quoted and node.value == "":
            raise ParameterInputError(f'{where}: no value (write "" for an empty string)')
        return _rcl_scalar(node.value, quoted)
    if isinstance(node, yaml.SequenceNode):
        items = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise ParameterInputError(f"{where}: lists may hold only plain values")
            items.append(_typed(item, where))
        kinds = {t for t, _ in items}
        if len(kinds) > 1:
            raise ParameterInputError(
                f"{where}: a list holds values of one type only ("
                "write 1.0, not 1, in a list of floats)"
            )
        kind = _ARRAY_OF[kinds.pop()] if kinds else None
        return kind, [v for _, v in items]
    raise ParameterInputError(f"{where}: a value must be a plain value or a list")


def _yaml_error(source: str, exc: yaml.YAMLError, file: bool = True) -> ParameterInputError:
    """One line naming the file (line:column) or the override, and YAML's complaint."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(x for x in (getattr(exc, "context", None), getattr(exc, "problem", None))
                    if x) or str(exc)  # fmt: skip
    if mark is None:
        return ParameterInputError(f"{source}: not valid YAML: {what}")
    if file:
        return ParameterInputError(
            f"parameter file {source}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}"
        )
    return ParameterInputError(f"{source}: not valid YAML at column {mark.column + 1}: {what}")


def _node_pattern(key: str) -> re.Pattern:
    """A parameter-file section name (`/**`, `/*/node`, `ns/node`) as a regex on the node's
    fully qualified name, with the wildcards rclcpp and rclpy give it."""
    key = key if key.startswith("/") else "/" + key
    rx = re.escape(key).replace(r"/\*\*", r"(/[^/]+)*").replace(r"/\*", r"/[^/]+")
    return re.compile(rx)


def read_parameter_file(path: str | Path, node_fqn: str = "/scal3r_mapping"):
    """The settings a parameter file gives ``node_fqn``, typed as rcl types them.

    Returns ``(settings, sections)`` where ``sections`` names every node section in the
    file. Raises ParameterInputError for a missing file, invalid YAML or a layout rcl
    cannot read (e.g. a parameter not under ``ros__parameters``).
    """
    path = Path(path)
    source = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            root = yaml.compose(stream)
    except OSError as exc:
        raise ParameterInputError(f"cannot read parameter file {source}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    if root is None:
        return [], []
    if not isinstance(root, yaml.MappingNode):
        raise ParameterInputError(
            f"{source}: expected `<node name>: ros__parameters: <name>: <value>` at the top"
        )
    settings: list[ParameterSetting] = []
    sections: list[str] = []

    def params(node: yaml.MappingNode, prefix: str, matches: bool) -> None:
        for key, value in node.value:
            name = prefix + str(key.value)
            if isinstance(value, yaml.MappingNode):
                params(value, name + ".", matches)
            elif matches:
                where = f"{source}:{key.start_mark.line + 1}: {name}"
                ptype, typed = _typed(value, where)
                settings.append(ParameterSetting(name, typed, ptype, source))

    def walk(node: yaml.MappingNode, path_: list[str]) -> None:
        for key, value in node.value:
            k = str(key.value)
            if k == "ros__parameters":
                section = "/".join(path_)
                if not isinstance(value, yaml.MappingNode):
                    raise ParameterInputError(
                        f"{source}:{key.start_mark.line + 1}: ros__parameters of {section} "
                        "must map parameter names to values"
                    )
                sections.append("/" + section)
                params(value, "", bool(_node_pattern(section).fullmatch(node_fqn)))
            elif isinstance(value, yaml.MappingNode):
                walk(value, [*path_, k.strip("/")] if k != "/**" else [*path_, "**"])
            else:
                raise ParameterInputError(
                    f"{source}:{key.start_mark.line + 1}: '{k}' is not under ros__parameters "
                    "(the layout is `<node name>: ros__parameters: <name>: <value>`, e.g. "
                    "`/**: ros__parameters: chunk_size: 60`)"
                )

    walk(root, [])
    return settings, sections


def parse_override(rule: str, node_fqn: str = "/scal3r_mapping") -> ParameterSetting | None:
    """A ``-p [node:]name:=value`` rule, typed as rcl types it; None if it is for another
    node."""
    source = f"-p {rule}"
    if ":=" not in rule:
        raise ParameterInputError(f"{source}: expected name:=value")
    lhs, text = rule.split(":=", 1)
    node, _, name = lhs.rpartition(":")
    if not name:
        raise ParameterInputError(f"{source}: no parameter name before :=")
    if node and not _node_pattern(node).fullmatch(node_fqn) and node != node_fqn.rsplit("/")[-1]:
        return None
    try:
        value = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc, file=False) from None
    if value is None:
        raise ParameterInputError(f"{source}: no value after := (write '\"\"' for an empty string)")
    ptype, typed = _typed(value, source)
    return ParameterSetting(name, typed, ptype, source)


def check_settings(settings: list[ParameterSetting]) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: values of the wrong type for a node parameter (rclpy would
    refuse them, or rcl silently keep an earlier value of the other type), and names the
    node does not declare, each with the closest known name."""
    declared = parameter_types()
    known = {**declared, **ROS_OWN_PARAMETERS}
    errors, warnings = [], []
    for s in settings:
        expected = known.get(s.name)
        if expected is None:
            if s.name.startswith(_ROS_OWN_PREFIXES):
                continue
            close = difflib.get_close_matches(s.name, list(declared), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            warnings.append(
                f"unknown parameter '{s.name}' ({s.source}) is ignored: scal3r_mapping has no "
                f"such parameter{hint}"
            )
        elif s.type is not None and s.type != expected:
            shown = f"'{s.value}'" if isinstance(s.value, str) else str(s.value).lower()
            errors.append(
                f"{s.name} must be {_TYPE_WORDS[expected]}; {s.source} gives "
                f"{_TYPE_WORDS[s.type].split(' (')[0]} ({shown})"
            )
        elif (problem := value_problem(s.name, s.value)) is not None:
            errors.append(f"{problem} ({s.source})")
    return errors, warnings


def _literal(value) -> str:
    """A value as written after -p NAME:= (true, 0.5, 'text', ['a', 'b'])."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def parameter_help(width: int = 88) -> str:
    """Every parameter as `NAME = default: description`, for the console script's --help."""
    defaults = NodeConfig()
    lines = []
    for f in fields(NodeConfig):
        doc, extra = _DOC[f.name]
        dynamic = "" if extra.get("read_only") else " (settable while running)"
        lines += textwrap.wrap(
            f"{f.name} = {_literal(getattr(defaults, f.name))}: {doc}{dynamic}",
            width=width, initial_indent="  ", subsequent_indent="      ",
        )  # fmt: skip
    return "\n".join(lines) + "\n"
