"""The node's parameters: the `NodeConfig` dataclass, whose fields carry their description,
section, range and run-time changeability as ``param`` metadata (scal3r_ros.mapping.config).

Each field is declared on the node with a descriptor generated from that metadata (type,
description, range, read-only) so `ros2 param describe` explains it, then read back into
`NodeConfig` and validated as a whole (e.g. chunk_size > overlap, the one rule of
``windowing.window_problem``) before anything starts. ``--help``, the table in
docs/ros_interface.md and the YAML files in config/ are generated from or tested against
the same metadata.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import yaml
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from scal3r_ros.mapping.config import (
    BACKEND_KINDS,
    GCS_ONLINE_MODES,
    INTRINSICS_SOURCES,
    SESSION_MODES,
    BackendSection,
    MapSection,
    OracleSection,
    SensorSection,
    SessionSection,
    WindowSection,
    param,
    param_info,
    range_problem,
)
from scal3r_ros.mapping.planning.scale import SCALE_SOURCES
from scal3r_ros.mapping.windowing import window_problem
from scal3r_ros.ros.conversions import ImageLimits
from scal3r_ros.ros.input_checks import StampPolicy, camera_k_matrix

BACKENDS = BACKEND_KINDS
_S = TypeVar("_S")
QOS_CHOICES = ("sensor_data", "reliable")
TIME_JUMP_POLICIES = ("reset", "drop")
_DOUBLES = Parameter.Type.DOUBLE_ARRAY
_ARRAY_TYPES = {
    "camera_xyz": _DOUBLES,
    "camera_rpy": _DOUBLES,
    "oracle_window_delays": _DOUBLES,
    "camera_k": _DOUBLES,
}


@dataclass
class InputSection:
    """Image input: topics, QoS, queue and the checks on stamps and image sizes."""

    image_topics: list[str] = field(
        default_factory=lambda: ["/camera/image_raw"],
        metadata=param(
            "sensor_msgs/Image topics (rgb8, bgr8, rgba8, bgra8, mono8, mono16)",
        ),
    )
    compressed_topics: list[str] = field(
        default_factory=list,
        metadata=param(
            "sensor_msgs/CompressedImage topics (jpeg, png)",
        ),
    )
    camera_info_topics: list[str] = field(
        default_factory=list,
        metadata=param(
            "optional CameraInfo topics, same order as the image topics",
        ),
    )
    input_qos: str = field(
        default="sensor_data",
        metadata=param(
            "image, odometry, GNSS and IMU subscription QoS: sensor_data (best effort) or "
            "reliable (a bag player that publishes reliably: nothing lost to a busy node)",
        ),
    )
    input_qos_depth: int = field(
        default=10,
        metadata=param(
            "image subscription history depth",
            int_range=(1, 1000),
        ),
    )
    queue_size: int = field(
        default=64,
        metadata=param(
            "frames waiting for the worker before the drop policy applies",
            int_range=(1, 100000),
        ),
    )
    drop_policy: str = field(
        default="drop_oldest",
        metadata=param(
            "when the queue is full: drop_oldest or drop_newest",
        ),
    )
    on_time_jump: str = field(
        default="reset",
        metadata=param(
            "stamps going backwards (bag loop): reset the map, or drop the frames; a "
            "reset needs time_jump_min_frames older frames in a row or a backward jump of"
            " /clock",
            dynamic=True,
        ),
    )
    time_jump_min_frames: int = field(
        default=3,
        metadata=param(
            "frames in a row (increasing stamps) that confirm a time jump of a camera, "
            "backward or beyond max_stamp_gap_s forward; until then they are held, and "
            "dropped (stamp_outlier) if the stream goes on; 1: any single frame",
            int_range=(1, 100),
        ),
    )
    max_stamp_gap_s: float = field(
        default=10.0,
        metadata=param(
            "the largest step between a camera's stamps taken without evidence [s]; a "
            "larger jump forward needs time_jump_min_frames frames in a row",
            float_range=(0.001, 1000000.0),
        ),
    )
    max_future_stamp_s: float = field(
        default=300.0,
        metadata=param(
            "drop frames stamped more than this ahead of the node's clock (future_stamp) "
            "[s]; 0: off; not checked before the clock runs (sim time before /clock)",
            float_range=(0.0, 1000000000.0),
        ),
    )
    max_image_pixels: int = field(
        default=50_000_000,
        metadata=param(
            "refuse larger images (image_size), raw or compressed, from the header before"
            " decoding; also Pillow's MAX_IMAGE_PIXELS",
            int_range=(1024, 1000000000),
        ),
    )
    min_image_side: int = field(
        default=16,
        metadata=param(
            "refuse images with a side shorter than this [px] (image_size)",
            int_range=(1, 100000),
        ),
    )
    max_image_aspect: float = field(
        default=8.0,
        metadata=param(
            "refuse images whose long side exceeds this x the short side (image_size)",
            float_range=(1.0, 1000.0),
        ),
    )


@dataclass
class FramesSection:
    """Frames (REP-105) and the camera mount."""

    map_frame: str = field(
        default="map",
        metadata=param(
            "fixed frame of the map, /tf root (REP-105)",
        ),
    )
    odom_frame: str = field(
        default="odom",
        metadata=param(
            "odometry frame between map and base_link",
        ),
    )
    base_frame: str = field(
        default="base_link",
        metadata=param(
            "robot body frame",
        ),
    )
    camera_frame: str = field(
        default="",
        metadata=param(
            "camera optical frame; empty = the images' header.frame_id",
        ),
    )
    camera_xyz: list[float] = field(
        default_factory=lambda: [0.0, 0.0, 0.0],
        metadata=param(
            "camera body position in base_frame [m], used when /tf_static has none",
        ),
    )
    camera_rpy: list[float] = field(
        default_factory=lambda: [0.0, 0.0, 0.0],
        metadata=param(
            "camera body roll/pitch/yaw in base_frame [rad]",
        ),
    )
    use_tf_static: bool = field(
        default=True,
        metadata=param(
            "take the camera mount from /tf_static when it is published",
        ),
    )
    publish_camera_tf: bool = field(
        default=True,
        metadata=param(
            "publish base_frame -> camera optical frame on /tf_static from camera_xyz/rpy"
            " when /tf_static has none",
        ),
    )


@dataclass
class OutputSection:
    """Publication periods, logging, saving and stopping."""

    map_publish_period: float = field(
        default=2.0,
        metadata=param(
            "seconds between ~/map publications (0: only on request)",
            float_range=(0.0, 3600.0),
            dynamic=True,
        ),
    )
    path_publish_period: float = field(
        default=1.0,
        metadata=param(
            "seconds between ~/path publications (0: after every window)",
            float_range=(0.0, 3600.0),
            dynamic=True,
        ),
    )
    path_max_poses: int = field(
        default=5000,
        metadata=param(
            "most poses in one ~/path message, evenly thinned (0: all); saved "
            "trajectories are always complete",
            int_range=(0, 10000000),
            dynamic=True,
        ),
    )
    status_period: float = field(
        default=0.5,
        metadata=param(
            "seconds between ~/status and /diagnostics messages",
            float_range=(0.05, 60.0),
        ),
    )
    progress_log_period: float = field(
        default=5.0,
        metadata=param(
            "seconds between one-line progress summaries in the log (frames, windows, map"
            " points, FPS, latency); 0: off",
            float_range=(0.0, 3600.0),
            dynamic=True,
        ),
    )
    output_dir: str = field(
        default=os.path.join("~", ".ros", "scal3r_ros"),
        metadata=param(
            "directory for saved maps and trajectories (nothing is written outside)",
        ),
    )
    save_on_shutdown: bool = field(
        default=True,
        metadata=param(
            "save map and trajectory when the node stops",
            dynamic=True,
        ),
    )
    shutdown_window_wait: float = field(
        default=30.0,
        metadata=param(
            "seconds a stop (first Ctrl-C) waits for the window in progress and the "
            "stream's last frames; then, or at a second Ctrl-C or SIGTERM, the map is "
            "saved as mapped so far",
            float_range=(0.0, 3600.0),
            dynamic=True,
        ),
    )


@dataclass
class PlannerSection:
    """Planner outputs: metric scale, sensor-frame clouds, occupancy grid."""

    scale_source: str = field(
        default="none",
        metadata=param(
            "metric scale: none (arbitrary), camera_height (ground plane), odometry "
            "(reference nav_msgs/Odometry) or stereo (second camera, known baseline)",
        ),
    )
    camera_height_m: float = field(
        default=1.65,
        metadata=param(
            "camera height above the ground [m] (camera_height scale, grid ground)",
            float_range=(0.01, 100.0),
        ),
    )
    scale_odometry_topic: str = field(
        default="/odom",
        metadata=param(
            "nav_msgs/Odometry used by the odometry scale source",
        ),
    )
    scale_odometry_window_s: float = field(
        default=10.0,
        metadata=param(
            "sliding window of the odometry scale source [s]",
            float_range=(0.5, 600.0),
        ),
    )
    stereo_baseline_m: float = field(
        default=0.0,
        metadata=param(
            "stereo baseline [m]; 0 = from the second camera_info topic's P",
            float_range=(0.0, 10.0),
        ),
    )
    sensor_cloud_enabled: bool = field(
        default=False,
        metadata=param(
            "publish ~/sensor_cloud: per-frame clouds in the camera optical frame at the "
            "image stamp (for costmap obstacle layers)",
        ),
    )
    sensor_cloud_frames: str = field(
        default="all",
        metadata=param(
            "which frames get a sensor cloud: all, every_n or newest (one per window)",
        ),
    )
    sensor_cloud_every_n: int = field(
        default=5,
        metadata=param(
            "with sensor_cloud_frames every_n: every n-th frame",
            int_range=(1, 1000),
        ),
    )
    sensor_cloud_voxel_size: float = field(
        default=0.1,
        metadata=param(
            "sensor cloud voxel size [m, or map units without scale]",
            float_range=(0.0, 10.0),
        ),
    )
    sensor_cloud_max_points: int = field(
        default=20000,
        metadata=param(
            "cap on points per sensor cloud",
            int_range=(1, 10000000),
        ),
    )
    sensor_cloud_max_depth: float = field(
        default=40.0,
        metadata=param(
            "drop sensor-cloud points farther than this [m]; 0: no limit",
            float_range=(0.0, 10000.0),
        ),
    )
    occupancy_enabled: bool = field(
        default=False,
        metadata=param(
            "publish ~/grid (nav_msgs/OccupancyGrid in map) and save it with the map; "
            "needs a scale_source",
        ),
    )
    occupancy_resolution: float = field(
        default=0.2,
        metadata=param(
            "grid cell size [m]",
            float_range=(0.01, 10.0),
        ),
    )
    occupancy_ground_band: float = field(
        default=0.15,
        metadata=param(
            "points within this height of the ground are ground [m]",
            float_range=(0.0, 5.0),
        ),
    )
    occupancy_obstacle_min: float = field(
        default=0.15,
        metadata=param(
            "lowest obstacle height above ground [m]",
            float_range=(0.0, 10.0),
        ),
    )
    occupancy_obstacle_max: float = field(
        default=2.0,
        metadata=param(
            "highest obstacle height above ground [m] (higher: ignored, e.g. trees, bridges)",
            float_range=(0.0, 100.0),
        ),
    )


@dataclass
class NodeConfig(
    SessionSection,
    OracleSection,
    SensorSection,
    PlannerSection,
    OutputSection,
    FramesSection,
    InputSection,
    MapSection,
    WindowSection,
    BackendSection,
):
    """Every node parameter: the sections of the configuration tree (SECTIONS) with their
    leaves under their flat ROS names. A NodeConfig is each of its sections, so code that
    needs one section takes it (``make_backend``'s spec reads BackendSection/OracleSection)."""

    def section(self, cls: type[_S]) -> _S:
        """A copy of one section of the tree (e.g. ``cfg.section(OracleSection)``)."""
        return cls(**{f.name: copy.copy(getattr(self, f.name)) for f in fields(cls)})

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent parameter."""
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if problem := window_problem(self.chunk_size, self.overlap):
            problems.append(problem)
        if self.gcs_mode not in GCS_ONLINE_MODES:
            problems.append(
                f"gcs_mode must be one of {GCS_ONLINE_MODES} in the node "
                f"(use the offline tool for 'exact'), got {self.gcs_mode!r}"
            )
        if self.input_qos not in QOS_CHOICES:
            problems.append(f"input_qos must be one of {QOS_CHOICES}, got {self.input_qos!r}")
        if self.drop_policy not in ("drop_oldest", "drop_newest"):
            problems.append(
                f"drop_policy must be drop_oldest or drop_newest, got {self.drop_policy!r}"
            )
        if self.on_time_jump not in TIME_JUMP_POLICIES:
            problems.append(f"on_time_jump must be one of {TIME_JUMP_POLICIES}")
        if not (self.image_topics or self.compressed_topics):
            problems.append("no input: set image_topics and/or compressed_topics")
        if len(self.camera_xyz) != 3 or len(self.camera_rpy) != 3:
            problems.append("camera_xyz and camera_rpy need 3 numbers each")
        if len({self.map_frame, self.odom_frame, self.base_frame}) != 3:
            problems.append("map_frame, odom_frame and base_frame must differ")
        if self.scale_source not in SCALE_SOURCES:
            problems.append(
                f"scale_source must be one of {SCALE_SOURCES}, got {self.scale_source!r}"
            )
        if self.occupancy_enabled and self.scale_source == "none" and not self.graph_scale:
            problems.append(
                "occupancy_enabled needs a metric scale: set scale_source "
                "(camera_height, odometry or stereo), odometry_topic or gnss_topic"
            )
        if self.gnss_topic and self.enu_frame in (self.map_frame, self.odom_frame, self.base_frame):
            problems.append("enu_frame must differ from map_frame, odom_frame and base_frame")
        if self.sensor_cloud_frames not in ("all", "every_n", "newest"):
            problems.append("sensor_cloud_frames must be all, every_n or newest")
        if not self.occupancy_obstacle_min < self.occupancy_obstacle_max:
            problems.append("need occupancy_obstacle_min < occupancy_obstacle_max")
        if self.session_mode not in SESSION_MODES:
            problems.append(
                f"session_mode must be one of {SESSION_MODES}, got {self.session_mode!r}"
            )
        if any(not 0.0 <= d <= 86400.0 for d in self.oracle_window_delays):
            problems.append("oracle_window_delays must be seconds in [0, 86400]")
        if self.intrinsics not in INTRINSICS_SOURCES:
            problems.append(
                f"intrinsics must be one of {INTRINSICS_SOURCES}, got {self.intrinsics!r}"
            )
        try:
            camera_k_matrix(self.camera_k)
        except ValueError as exc:
            problems.append(f"camera_k: {exc}")
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

    @property
    def graph_scale(self) -> bool:
        """Odometry or GNSS factors in the pose graph give the map its metric scale."""
        return bool(self.odometry_topic or self.gnss_topic)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.min_image_side, self.max_image_aspect)

    def stamp_policy(self) -> StampPolicy:
        return StampPolicy(
            self.on_time_jump,
            self.time_jump_min_frames,
            self.max_stamp_gap_s,
            self.max_future_stamp_s,
        )


def value_problem(name: str, value: object) -> str | None:
    """What is wrong with one parameter's value on its own: a float (or float in a list)
    that is not finite, a number outside its range. rclpy enforces ranges only in some
    versions and never looks inside lists, and a NaN camera mount crashed the node later,
    so NodeConfig checks every value itself."""
    return range_problem(name, value, PARAMS.get(name, {}))


SECTIONS: dict[str, type] = {
    "backend": BackendSection,
    "window": WindowSection,
    "map": MapSection,
    "input": InputSection,
    "frames": FramesSection,
    "output": OutputSection,
    "planner": PlannerSection,
    "sensors": SensorSection,
    "oracle": OracleSection,
    "session": SessionSection,
}
"""The configuration tree: section name -> dataclass; each leaf is a flat parameter name."""

PARAMS: dict[str, dict] = {
    f.name: {**param_info(f), "section": section}
    for section, cls in SECTIONS.items()
    for f in fields(cls)
}
"""Every parameter's ``param`` metadata (description, range, dynamic) and section, by name."""

DYNAMIC = tuple(name for name, info in PARAMS.items() if info["dynamic"])
"""Parameters the node applies while running (the others need a restart)."""


def descriptor(name: str) -> ParameterDescriptor:
    """The ROS descriptor of one parameter, generated from its ``param`` metadata."""
    info = PARAMS[name]
    desc = ParameterDescriptor(description=info["description"], read_only=not info["dynamic"])
    if info["int_range"]:
        lo, hi = info["int_range"]
        desc.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
    if info["float_range"]:
        lo, hi = info["float_range"]
        desc.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return desc


def declare_and_read(node: Node, overrides: dict | None = None) -> NodeConfig:
    """Declare every parameter with its descriptor, read them, validate."""
    defaults = NodeConfig()
    values = {}
    for f in fields(NodeConfig):
        desc = descriptor(f.name)
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


_ROS_FLAGS_WITH_VALUE = {
    "-p",
    "--param",
    "--params-file",
    "-r",
    "--remap",
    "-e",
    "--enclave",
    "--log-level",
    "--log-config-file",
    "--log-file-name",
}


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
    what = " ".join(
        x for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x
    ) or str(exc)
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
        info = PARAMS[f.name]
        dynamic = " (settable while running)" if info["dynamic"] else ""
        lines += textwrap.wrap(
            f"{f.name} = {_literal(getattr(defaults, f.name))}: {info['description']}{dynamic}",
            width=width,
            initial_indent="  ",
            subsequent_indent="      ",
        )
    return "\n".join(lines) + "\n"


def parameter_table(section: type | None = None) -> str:
    """The rows of the parameter table in docs/ros_interface.md (``| `name` | `default` |
    meaning |``), generated from the metadata; test_launch_file checks the doc holds them.
    ``section``: only that section's rows (the README's sensor table)."""
    defaults = NodeConfig()
    rows = []
    for f in fields(section or NodeConfig):
        info = PARAMS[f.name]
        value = getattr(defaults, f.name)
        shown = json.dumps(value) if isinstance(value, (str, list)) else repr(value)
        dynamic = " *(can be changed at run time)*" if info["dynamic"] else ""
        rows.append(f"| `{f.name}` | `{shown}` | {info['description']}{dynamic} |")
    return "\n".join(rows) + "\n"
