"""The metric scale on the ROS side: a scale source (`mapping/planning/scale.py`) fed by the
engine's events and, for some sources, by ROS inputs (an odometry topic, the right
camera's CameraInfo). With odometry or GNSS factors in the pose graph (`ros/sensors.py`)
the scale is the graph's (``graph``: one scale, in the graph) as soon as the graph has one;
until then (a source configured but silent) the scale_source serves.

Its estimate goes to the outputs as a `ScaleUpdate` event in the same batch; the node
applies the scale to its `FrameConverter` (so /tf, clouds, odometry, path and saved
files all change together) before the outputs see the event.
"""

from __future__ import annotations

import threading

from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from scal3r_ros.mapping.events import MapUpdate, PosesUpdate, SensorFusionUpdate
from scal3r_ros.mapping.planning.scale import ChunkObservation, ScaleEstimate
from scal3r_ros.mapping.planning.scale_sources import make_scale_source
from scal3r_ros.mapping.planning.stereo import baseline_from_projection
from scal3r_ros.ros import qos
from scal3r_ros.ros.outputs import ScaleUpdate, Track
from scal3r_ros.ros.params import NodeConfig

RESCALE_TOLERANCE = 1e-3  # relative scale change that re-publishes path, map and grid


class ScaleTracker:
    """The configured scale source; `on_events` runs on the worker thread, the ROS
    inputs' callbacks on the executor (a lock guards the source)."""

    def __init__(self, node: Node, cfg: NodeConfig, graph: bool = False) -> None:
        if graph and cfg.scale_source != "none":
            node.get_logger().info(
                f"scale from the pose graph's odometry/GNSS factors once it has one; until "
                f"then from scale_source {cfg.scale_source!r}"
            )
        self.kind, self.graph = cfg.scale_source, graph
        self._graph_updates = 0
        self.source = make_scale_source(
            cfg.scale_source,
            camera_height_m=cfg.camera_height_m,
            odometry_window_s=cfg.scale_odometry_window_s,
            stereo_baseline_m=cfg.stereo_baseline_m or None,
        )
        self._lock = threading.Lock()
        self._track = Track()  # frame poses (odometry) and cameras (stereo)
        self.scale = 1.0
        self.estimate = self._initial_estimate()
        if self.kind == "odometry":
            node.create_subscription(
                Odometry,
                cfg.scale_odometry_topic,
                self.on_odometry,
                qos.input_profile("reliable", 100),
            )
        if self.kind == "stereo" and not cfg.stereo_baseline_m:
            if len(cfg.camera_info_topics) < 2:
                node.get_logger().warning(
                    "stereo scale: no stereo_baseline_m and no second "
                    "camera_info topic; the scale stays unknown"
                )
            else:
                node.create_subscription(
                    CameraInfo,
                    cfg.camera_info_topics[1],
                    self.on_right_info,
                    qos.input_profile(cfg.input_qos, 10),
                )

    def on_odometry(self, msg: Odometry) -> None:
        p = msg.pose.pose.position
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.source.add_reference(stamp, (p.x, p.y, p.z))

    def on_right_info(self, msg: CameraInfo) -> None:
        baseline = baseline_from_projection(list(msg.p))
        if baseline:
            with self._lock:
                self.source.set_baseline(baseline)

    def on_events(self, events: list[MapUpdate]) -> ScaleUpdate:
        """The estimate after this batch; ``rescaled`` when the applied scale changes."""
        if self.graph:
            est = self._graph_estimate(events)
            if est.metric or self.kind == "none":
                return self._apply(est)
        if self.kind in ("odometry", "stereo"):  # they need every pose, or camera
            for ev in events:
                if isinstance(ev, PosesUpdate):
                    self._track.add(ev)
        camera_of = self._track.camera_of if self.kind == "stereo" else None
        with self._lock:
            if self.kind == "odometry":
                _, stamps, c2w = self._track.poses()
                self.source.set_map_poses(stamps, c2w[:, :3, 3])
            est = self.source.update(ChunkObservation.from_events(events, camera_of))
        return self._apply(est)

    def _apply(self, est: ScaleEstimate) -> ScaleUpdate:
        self.estimate = est
        rescaled = est.metric and abs(est.scale / self.scale - 1) > RESCALE_TOLERANCE
        if rescaled:
            self.scale = est.scale
        return ScaleUpdate(-1, est, self.scale, rescaled)

    @property
    def active(self) -> bool:
        """A scale is estimated (the node then holds a window's poses for its points)."""
        return self.graph or self.kind != "none"

    def _initial_estimate(self) -> ScaleEstimate:
        if self.graph and self.kind == "none":
            return self._graph_estimate(None)
        return self.source.update(ChunkObservation())

    def _graph_estimate(self, events: list[MapUpdate] | None) -> ScaleEstimate:
        """The graph's scale from the batch's newest `SensorFusionUpdate` that has one."""
        scales = [
            ev.scale for ev in events or [] if isinstance(ev, SensorFusionUpdate) and ev.scale
        ]
        if not scales:
            if events is not None and self._graph_updates and self.estimate.source == "graph":
                return self.estimate  # no window in this batch: the last estimate holds
            return ScaleEstimate(1.0, 0.0, "graph", "waiting for odometry/GNSS factors", False)
        self._graph_updates += 1
        return ScaleEstimate(
            float(scales[-1]),
            1.0,
            "graph",
            "odometry/GNSS factors in the pose graph",
            True,
            measured=float(scales[-1]),
            n_accepted=self._graph_updates,
        )

    def current(self) -> ScaleUpdate:
        """The estimate and the applied scale now (before the first window: unknown, 1)."""
        return ScaleUpdate(-1, self.estimate, self.scale)

    def reset(self) -> ScaleUpdate:
        """Forget every measurement (a map reset): scale 1 until the next one."""
        with self._lock:
            self.source.reset()
            self._graph_updates = 0
            self.estimate = self._initial_estimate()
        self._track.reset()
        self.scale = 1.0
        return self.current()
