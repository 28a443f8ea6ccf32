"""The scal3r_ros mapping node: images in; /tf, clouds, odometry, path, status out.

A thin adapter: callbacks convert and enqueue (`MappingWorker.submit`), the worker
thread runs the `MappingEngine` and hands back events, which this file turns into
messages. Frames and units: see `frames.py`; parameters: `params.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from scal3r_ros_msgs.msg import MappingStatus
from scal3r_ros_msgs.srv import SaveMap
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from scal3r_ros.mapping.atomic_io import SaveFolder, relative_parts
from scal3r_ros.mapping.backends import BackendSpec, make_backend
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.frame import (
    AlignmentReport,
    Frame,
    LoopClosureUpdate,
    MapCorrected,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.frame_store import FrameStoreConfig
from scal3r_ros.mapping.map_store import MapConfig, write_pcd, write_ply
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.mapping.windowing import WindowConfig
from scal3r_ros.ros import qos
from scal3r_ros.ros.conversions import (
    ConversionError,
    compressed_to_rgb,
    image_to_rgb,
    ns_to_stamp,
    points_to_cloud,
    set_pillow_limit,
)
from scal3r_ros.ros.frames import FrameConverter, camera_mount, matrix_from_quaternion
from scal3r_ros.ros.input_checks import MAX_CAMERAS, InputGate, camera_matrix
from scal3r_ros.ros.params import (
    DYNAMIC,
    NodeConfig,
    ParameterInputError,
    RosArguments,
    check_settings,
    declare_and_read,
    parameter_help,
    parse_override,
    read_parameter_file,
    split_ros_args,
)
from scal3r_ros.ros.planner_outputs import GRID_FILES, PlannerOutputs
from scal3r_ros.ros.pose_outputs import PoseFrames, PoseOutputs, transform_msg
from scal3r_ros.ros.worker import MappingWorker
from scal3r_ros.share import config_file

SAVE_FILES = ("map.ply", "map.pcd", "trajectory_tum.txt", "trajectory_kitti.txt",
              "trajectory_camera_tum.txt", "trajectory_camera_kitti.txt", *GRID_FILES)  # fmt: skip
"""Every file a save writes; a save folder holding anything else is never replaced."""


def save_name(name: str) -> str:
    """The folder of a save inside output_dir: ``name`` when it is a plain relative name
    (absolute names and ``..`` are refused with UnsafePathError), else a timestamp.

    Only the name is checked here; the folders themselves are checked when written, on
    the thread that writes (`SaveFolder`: no symlinked folder, nothing outside)."""
    name = name.rstrip("/") or datetime.datetime.now().strftime("map_%Y%m%d_%H%M%S")
    relative_parts(name)
    return name


def progress_line(msg: MappingStatus) -> str:
    """The periodic one-line summary of a MappingStatus (the node's log)."""
    loops = f", {msg.loop_closures} loop closure{'s' * (msg.loop_closures != 1)}"
    latency = f"latency {msg.latency_ms / 1e3:.2f} s"
    if msg.latency_ms > 86_400e3:  # stamps of another clock: a bag or a recorded drive
        latency = "latency unknown (image stamps are not on this node's clock: use_sim_time?)"
    return (
        f"{msg.state_text}: frames {msg.frames_received} in, {msg.frames_processed} processed, "
        f"{msg.frames_dropped} dropped (queue {msg.queue_length}/{msg.queue_capacity}); "
        f"{msg.chunks_processed} windows; {msg.map_points} map points; {msg.fps:.1f} fps; "
        f"{latency}{loops if msg.loop_closures else ''}"
    )


class MappingNode(Node):
    """See the module docstring and README's topics/parameters tables."""

    def __init__(self, **kwargs) -> None:
        super().__init__("scal3r_mapping", **kwargs)
        self.cfg: NodeConfig = declare_and_read(self)
        cfg = self.cfg
        self.output_dir = Path(os.path.expanduser(cfg.output_dir))
        self._lock = threading.Lock()  # node-side state shared by worker and timers
        self._drops: dict[str, int] = {}
        # events that are not a lost frame (ignored CameraInfo, map resets after a time
        # jump): reported in diagnostics, never counted as frames received or dropped
        self._notices: dict[str, int] = {}
        self._camera_k: dict[str, np.ndarray] = {}
        self._static_tf: dict[str, tuple[str, np.ndarray]] = {}
        self._reset_node_state()
        self.limits = cfg.image_limits()
        set_pillow_limit(cfg.max_image_pixels)
        self.inputs = InputGate(cfg.stamp_policy(), self._submit, self._time_jump_reset,
                                self._drop)  # fmt: skip
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1.0),
                          on_clock_change=False),
            post_callback=lambda _jump: self.inputs.clock_jumped_back(),
        )  # fmt: skip

        backend = make_backend(
            BackendSpec(kind=cfg.backend, checkpoint=cfg.checkpoint or None,
                        checkpoint_sha256=cfg.checkpoint_sha256 or None,
                        allow_download=cfg.allow_download, device=cfg.device, dtype=cfg.dtype,
                        loop_closure=cfg.loop_closure,
                        oracle_seed=cfg.oracle_seed, oracle_frames=cfg.oracle_frames,
                        oracle_laps=cfg.oracle_laps,
                        oracle_width=cfg.oracle_width, oracle_height=cfg.oracle_height,
                        oracle_drift_deg=cfg.oracle_drift_deg,
                        oracle_depth_noise=cfg.oracle_depth_noise,
                        oracle_window_delays=tuple(cfg.oracle_window_delays))
        )  # fmt: skip
        self.backend_name = backend.name
        self.device_name = backend.device_name
        engine_cfg = EngineConfig(
            window=WindowConfig(chunk_size=cfg.chunk_size, overlap=cfg.overlap),
            gcs_mode=cfg.gcs_mode,
            loop_closure=cfg.loop_closure,
            frame_clouds=cfg.sensor_cloud_enabled,
            map=MapConfig(voxel_size=cfg.voxel_size, conf_ratio=cfg.confidence_ratio,
                          max_points=cfg.max_points),
            frames=FrameStoreConfig(max_spill_bytes=cfg.max_spill_mb << 20),
        )  # fmt: skip
        self.worker = MappingWorker(
            lambda: MappingEngine(engine_cfg, backend.backend, backend.loop_closure),
            self._on_worker_events,
            queue_size=cfg.queue_size,
            drop_policy=cfg.drop_policy,
            on_error=lambda msg: self.get_logger().error(f"chunk failed: {msg}"),
        )
        self.converter = FrameConverter(camera_mount(cfg.camera_xyz, cfg.camera_rpy))
        self._mount_decided = False
        self._camera_frame: str | None = None  # optical frame of the first images
        self.planner = PlannerOutputs(self, cfg, self.converter)

        # --- outputs
        self.pub_tf = self.create_publisher(TFMessage, "/tf", qos.TF)
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", qos.TF_STATIC)
        self.pub_cloud = self.create_publisher(PointCloud2, "~/cloud", qos.RELIABLE_OUTPUT)
        self.pub_map = self.create_publisher(PointCloud2, "~/map", qos.LATCHED)
        self.pub_odom = self.create_publisher(Odometry, "~/odometry", qos.RELIABLE_OUTPUT)
        self.pub_path = self.create_publisher(PathMsg, "~/path", qos.LATCHED)
        self.pub_status = self.create_publisher(MappingStatus, "~/status", qos.RELIABLE_OUTPUT)
        self.poses = PoseOutputs(
            self.converter, PoseFrames(cfg.map_frame, cfg.odom_frame, cfg.base_frame),
            self.pub_tf.publish, self.pub_odom.publish, self.pub_path.publish,
            path_period=cfg.path_publish_period, path_max_poses=cfg.path_max_poses,
        )  # fmt: skip
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.RELIABLE_OUTPUT)

        # --- inputs
        in_qos = qos.input_profile(cfg.input_qos, cfg.input_qos_depth)
        for topic in cfg.image_topics:
            self.create_subscription(Image, topic, self._on_image, in_qos)
        for topic in cfg.compressed_topics:
            self.create_subscription(CompressedImage, topic, self._on_compressed, in_qos)
        for topic in cfg.camera_info_topics:
            self.create_subscription(CameraInfo, topic, self._on_camera_info, in_qos)
        if cfg.use_tf_static:
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, qos.TF_STATIC)

        # --- services and timers (own group, so a save never blocks image callbacks)
        group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/reset", self._srv_reset, callback_group=group)
        self.create_service(SaveMap, "~/save_map", self._srv_save, callback_group=group)
        self.create_timer(cfg.status_period, self._publish_status, callback_group=group)
        self._progress_at = time.monotonic()  # the status timer logs progress from here on
        self._progress_counts: tuple[int, ...] | None = None

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.worker.start()
        self.get_logger().info(
            f"scal3r_mapping ready: backend {self.backend_name} on {self.device_name}, "
            f"chunks {cfg.chunk_size}/{cfg.overlap}, gcs {cfg.gcs_mode}, inputs "
            f"{cfg.image_topics + cfg.compressed_topics}, output_dir {self.output_dir}"
        )

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Apply the dynamic parameters (read-only ones are refused by rclpy itself)."""
        changes = {p.name: p.value for p in params if p.name in DYNAMIC}
        trial = NodeConfig(**{**self.cfg.__dict__, **changes})
        try:
            trial.validate()
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.cfg = trial
        if hasattr(self, "inputs"):
            self.inputs.policy = trial.stamp_policy()
        if hasattr(self, "poses"):
            self.poses.path_period = trial.path_publish_period
            self.poses.path_max_poses = trial.path_max_poses
        return SetParametersResult(successful=True)

    # ================================================================ input callbacks
    def _reset_node_state(self) -> None:
        if hasattr(self, "poses"):
            self.poses.reset()
        self._latency_s = 0.0
        self._timings: dict[str, float] = {}
        self._memory: dict[str, float] = {}
        self._map_dirty = False
        self._last_map_pub = 0.0
        self._loops = 0
        self._degenerate = 0
        self._map_points = 0
        self._last_stamp_seen = 0

    def _drop(self, reason: str, detail: str) -> None:
        with self._lock:
            self._drops[reason] = self._drops.get(reason, 0) + 1
        self.get_logger().warning(f"dropped frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _notice(self, reason: str, detail: str) -> None:
        with self._lock:
            self._notices[reason] = self._notices.get(reason, 0) + 1
        self.get_logger().warning(detail, throttle_duration_sec=5.0)

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = image_to_rgb(msg, self.limits)
        except ConversionError as exc:
            self._drop(exc.reason, str(exc))
            return
        self._accept(msg.header, rgb)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            rgb = compressed_to_rgb(msg, self.limits)
        except ConversionError as exc:
            self._drop(exc.reason, str(exc))
            return
        self._accept(msg.header, rgb)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        cam = msg.header.frame_id
        try:
            K = camera_matrix(msg.k, msg.width, msg.height)
        except ValueError as exc:
            self._notice("bad_camera_info", f"CameraInfo of {cam!r} ignored: {exc}")
            return
        if cam not in self._camera_k and len(self._camera_k) >= MAX_CAMERAS:
            self._notice("bad_camera_info", f"CameraInfo of {cam!r} ignored: {MAX_CAMERAS} "
                       "cameras known already")  # fmt: skip
            return
        self._camera_k[cam] = K

    def _accept(self, header, rgb: np.ndarray) -> None:
        """Stamp, size and time-jump rules (`InputGate`), which call `_submit`."""
        self.inputs.offer(header.frame_id or "camera", int(header.stamp.sec),
                          int(header.stamp.nanosec), rgb,
                          self.get_clock().now().nanoseconds)  # fmt: skip

    def _time_jump_reset(self, message: str) -> None:
        self.get_logger().warning(message)
        with self._lock:
            self._notices["time_jump_resets"] = self._notices.get("time_jump_resets", 0) + 1
        self._request_reset()

    def _submit(self, cam: str, stamp: int, rgb: np.ndarray) -> None:
        """Enqueue one frame the gate let through, with its camera's intrinsics."""
        size = (rgb.shape[1], rgb.shape[0])
        K = self._camera_k.get(cam)
        if K is not None and (K[0, 2] * 2 > size[0] * 1.5 or K[1, 2] * 2 > size[1] * 1.5):
            K = None  # CameraInfo of another resolution
        if not self.worker.submit(Frame(stamp_ns=stamp, camera_id=cam, image=rgb, intrinsics=K)):
            self.get_logger().warning(
                f"frame queue full ({self.cfg.queue_size}): dropping the "
                f"{'oldest' if self.cfg.drop_policy == 'drop_oldest' else 'newest'} frame; "
                "the worker is slower than the camera",
                throttle_duration_sec=5.0,
            )
        if self._camera_frame is None:
            self._camera_frame = self.cfg.camera_frame or cam

    def _on_tf_static(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            T = np.eye(4)
            tr, q = t.transform.translation, t.transform.rotation
            T[:3, :3] = matrix_from_quaternion((q.x, q.y, q.z, q.w))
            T[:3, 3] = (tr.x, tr.y, tr.z)
            self._static_tf[t.child_frame_id] = (t.header.frame_id, T)

    def _static_chain(self, child: str) -> np.ndarray | None:
        """T_base_child from /tf_static (walking parents up to base_frame), if known."""
        T = np.eye(4)
        frame = child
        for _ in range(16):
            if frame == self.cfg.base_frame:
                return T
            if frame not in self._static_tf:
                return None
            parent, T_pc = self._static_tf[frame]
            T = T_pc @ T
            frame = parent
        return None

    def _decide_mount(self, stamp) -> None:
        """Decide the camera mount when the first poses go out (not at the first image,
        so a /tf_static published at about the same time as the images still counts):
        /tf_static if it has the chain base_frame -> camera frame, else the parameters
        (then published on /tf_static)."""
        self._mount_decided = True
        cam_frame = self._camera_frame or self.cfg.camera_frame or "camera"
        T = self._static_chain(cam_frame) if self.cfg.use_tf_static else None
        if T is not None:
            self.converter.set_mount(T)
            self.get_logger().info(
                f"camera mount {self.cfg.base_frame} -> {cam_frame} taken from /tf_static"
            )
        elif self.cfg.publish_camera_tf:
            self.pub_tf_static.publish(TFMessage(transforms=[
                transform_msg(self.converter.T_base_cam, self.cfg.base_frame, cam_frame, stamp)
            ]))  # fmt: skip

    # ================================================================ worker events
    def _request_reset(self) -> None:
        def done(_events) -> None:
            with self._lock:
                self._reset_node_state()
                self.converter.anchor = None
            self.planner.reset()

        self.worker.request("reset", done)

    def _on_events(self, events: list[MapUpdate]) -> None:
        """Called on the worker thread after each chunk."""
        cfg = self.cfg
        engine = self.worker.engine
        if not self._mount_decided:
            self._decide_mount(ns_to_stamp(min(
                (int(s) for ev in events if isinstance(ev, PosesUpdate) for s in ev.stamps_ns),
                default=0)))  # fmt: skip
        if self.converter.anchor is None:  # the map frame is fixed by the first pose
            for ev in events:
                if isinstance(ev, PosesUpdate) and len(ev.frame_ids):
                    self.converter.set_anchor(ev.c2w[int(np.argmin(ev.frame_ids))])
                    break
        newest = max(
            (int(s) for ev in events if isinstance(ev, PosesUpdate) for s in ev.stamps_ns),
            default=self.poses.newest_stamp_ns,
        )
        if self.planner.on_events(events, engine, ns_to_stamp(newest)):
            self._rescale(engine)  # scale changed: re-express everything published so far
        for ev in events:
            if isinstance(ev, PosesUpdate):
                self._on_poses(ev)
            elif isinstance(ev, PointsUpdate) and len(ev.xyz):
                stamp = ns_to_stamp(self.poses.newest_stamp_ns)
                self.pub_cloud.publish(points_to_cloud(
                    self.converter.points(ev.xyz), ev.rgb, ev.confidence, stamp, cfg.map_frame
                ))  # fmt: skip
                self._map_dirty = True
            elif isinstance(ev, MapCorrected):
                self._map_dirty = True
                self._last_map_pub = 0.0  # re-publish the corrected map now
            elif isinstance(ev, LoopClosureUpdate):
                self._loops += 1
            elif isinstance(ev, AlignmentReport) and not ev.ok:
                self._degenerate += 1
                self.get_logger().warning(
                    f"chunk {ev.chunk_id}: alignment to chunk {ev.other_chunk_id} rejected "
                    f"({ev.reason}); placed by {ev.fallback or 'nothing'}"
                )
            elif isinstance(ev, StatsUpdate):
                with self._lock:
                    self._timings, self._memory = dict(ev.timings), dict(ev.memory)
        now = time.monotonic()
        if (
            engine is not None
            and self._map_dirty
            and cfg.map_publish_period > 0
            and (now - self._last_map_pub >= cfg.map_publish_period)
        ):
            # per-window voxel clouds as they are (cached transforms): cheap enough for the
            # worker thread; the saved map is voxelised globally
            xyz, rgb, conf = engine.map_points(voxelize=False)
            self._map_points = len(xyz)
            stamp = ns_to_stamp(self.poses.newest_stamp_ns)
            self.pub_map.publish(points_to_cloud(
                self.converter.points(xyz), rgb, conf, stamp, cfg.map_frame))  # fmt: skip
            self._map_dirty = False
            self._last_map_pub = now
        self.poses.publish_path(now)

    def _on_poses(self, ev: PosesUpdate) -> None:
        self.poses.on_poses(ev)
        if not ev.corrected and self.poses.newest >= 0:
            clock_now = self.get_clock().now().nanoseconds
            self._latency_s = max(0.0, (clock_now - self.poses.newest_stamp_ns) / 1e9)

    def _rescale(self, engine: MappingEngine) -> None:
        """Re-express the path in the new scale; the map is re-published next."""
        self.poses.set_all(*engine.poses())
        self._map_dirty = True
        self._last_map_pub = 0.0

    # ================================================================ status
    def status_snapshot(self) -> MappingStatus:
        s = self.worker.stats
        with self.worker._cond, self._lock:
            drops = dict(self._drops)
            for k, v in s.dropped.items():
                drops[k] = drops.get(k, 0) + v
            msg = MappingStatus()
            msg.frames_received = s.received + sum(self._drops.values())
            msg.frames_processed = s.processed
            msg.frames_dropped = sum(drops.values())
            msg.chunks_processed = s.chunks
            msg.last_error = s.last_error
            busy, errors = s.busy, s.errors
            timings, memory = dict(self._timings), dict(self._memory)
        msg.header.stamp = ns_to_stamp(self.poses.newest_stamp_ns)
        msg.header.frame_id = self.cfg.map_frame
        msg.loop_closures = self._loops
        msg.queue_length = self.worker.queue_length()
        msg.queue_capacity = self.cfg.queue_size
        msg.latency_ms = float(self._latency_s * 1e3)
        msg.chunk_time_ms = float(sum(timings.values()) * 1e3)
        msg.fps = (
            float(self.cfg.chunk_size - self.cfg.overlap) / max(sum(timings.values()), 1e-9)
            if timings
            else 0.0
        )
        msg.map_points = int(self._map_points)
        msg.gpu_memory_mb = float(memory.get("gpu_peak_bytes", 0.0) / 2**20)
        msg.host_rss_mb = float(memory.get("rss_bytes", 0.0) / 2**20)
        msg.device = self.device_name
        msg.backend = self.backend_name
        msg.gcs_mode = self.cfg.gcs_mode
        est = self.planner.estimate
        msg.scale_source = self.cfg.scale_source
        msg.scale = self.converter.scale
        msg.scale_confidence = float(est.confidence)
        if errors and msg.last_error and not busy and s.chunks == 0:
            msg.state, msg.state_text = MappingStatus.STATE_ERROR, "error"
        elif msg.chunks_processed == 0:
            msg.state, msg.state_text = MappingStatus.STATE_BUFFERING, "buffering"
        else:
            msg.state, msg.state_text = MappingStatus.STATE_MAPPING, "mapping"
        self._status_drops = drops
        return msg

    def _publish_status(self) -> None:
        self.poses.publish_path(time.monotonic())  # the last poses of a stream, too
        msg = self.status_snapshot()
        self.pub_status.publish(msg)
        diag = DiagnosticStatus(name="scal3r_mapping: mapping", hardware_id=msg.device)
        drops = self._status_drops
        with self._lock:
            notices = dict(self._notices)
        level, text = DiagnosticStatus.OK, msg.state_text
        if msg.last_error:
            level, text = DiagnosticStatus.WARN, f"last error: {msg.last_error}"
        elif drops or notices:
            level = DiagnosticStatus.WARN
            parts = [f"{k} {v}" for k, v in sorted(notices.items())]
            if drops:
                parts.insert(0, "dropped frames: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(drops.items())))  # fmt: skip
            text = "; ".join(parts)
        elif self.cfg.scale_source != "none" and not self.planner.estimate.ok:
            level, text = DiagnosticStatus.WARN, f"scale: {self.planner.estimate.status}"
        diag.level, diag.message = level, text
        values = {
            "frames_received": msg.frames_received, "frames_processed": msg.frames_processed,
            "frames_dropped": msg.frames_dropped, "chunks": msg.chunks_processed,
            "queue_length": msg.queue_length, "queue_capacity": msg.queue_capacity,
            "latency_ms": f"{msg.latency_ms:.1f}", "chunk_time_ms": f"{msg.chunk_time_ms:.1f}",
            "gpu_memory_mb": f"{msg.gpu_memory_mb:.1f}", "host_rss_mb": f"{msg.host_rss_mb:.1f}",
            "map_points": msg.map_points, "loop_closures": msg.loop_closures,
            "degenerate_alignments": self._degenerate, "backend": msg.backend,
            "gcs_mode": msg.gcs_mode, "scale_source": msg.scale_source,
            "scale": f"{msg.scale:.6g}", "scale_confidence": f"{msg.scale_confidence:.2f}",
            "scale_status": self.planner.estimate.status,
        }  # fmt: skip
        values.update({f"dropped_{k}": v for k, v in drops.items()})
        values.update(notices)
        diag.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[diag])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)
        self._log_progress(msg)

    def _log_progress(self, msg: MappingStatus) -> None:
        """Every progress_log_period seconds one line of the status numbers while frames
        come in (silent once the stream stops), or, before the first frame, which topics
        the node is waiting on (the usual reason a newcomer sees nothing happen)."""
        period = self.cfg.progress_log_period
        now = time.monotonic()
        if period <= 0 or now - self._progress_at < period:
            return
        self._progress_at = now
        counts = (msg.frames_received, msg.frames_processed, msg.frames_dropped,
                  msg.chunks_processed)  # fmt: skip
        if msg.frames_received == 0:
            topics = ", ".join(self.cfg.image_topics + self.cfg.compressed_topics)
            self.get_logger().info(f"waiting for images on {topics} (none received yet)")
        elif counts != self._progress_counts:
            self.get_logger().info(progress_line(msg))
        self._progress_counts = counts

    # ================================================================ services
    def _srv_reset(self, request, response):
        self._request_reset()
        self.inputs.reset()  # stamps and the stream's size start over
        response.success, response.message = True, "reset queued after the frames already received"
        return response

    def _srv_save(self, request, response):
        try:
            name = save_name(request.name)  # the name only; folders are checked on writing
            # flush: every frame processed so far gets a pose (and its points) first
            files = self.worker.call(
                lambda engine: self.save(engine, name, request.save_map,
                                         request.save_trajectory, root=self.output_dir),
                flush=True)  # fmt: skip
            response.success, response.files = True, [str(f) for f in files]
            response.message = f"saved {len(files)} files to {self.output_dir / name}"
        except Exception as exc:
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
        return response

    def save(self, engine: MappingEngine, target: Path | str, save_map: bool = True,
             save_traj: bool = True, root: Path | None = None) -> list[Path]:  # fmt: skip
        """Write map (PLY, PCD), trajectories (TUM, KITTI) and the grid as one set.

        ``target``: a folder name relative to ``root`` (the node: output_dir), or a folder
        path when ``root`` is None (its parent is the root). The files go through one
        `SaveFolder`: written into a fresh staging folder, fsynced, then swapped in as a
        whole, so a kill at any moment leaves the previous save or this one, never a mix
        or a truncated file; nothing is written outside ``root`` or through a symlink.
        The engine's state is read under its ``state_lock`` (whole windows, also while
        the worker thread is still integrating one during shutdown).

        ``trajectory_{tum,kitti}.txt``: base_link in the map frame (what /tf carries).
        ``trajectory_camera_{tum,kitti}.txt``: the camera's optical frame relative to the
        first saved camera pose (identity), the convention of KITTI's poses/NN.txt and of
        camera ground truth in general: score these (scal3r_evaluate --help).
        """
        if root is None:
            root, target = Path(target).parent, Path(target).name
        if not (save_map or save_traj):
            return []
        with engine.state_lock:
            map_pts = engine.map_points() if save_map else None
            poses = engine.poses() if save_traj else None
        with SaveFolder(root, str(target), replaceable=SAVE_FILES) as folder:
            if map_pts is not None:
                xyz, rgb, conf = map_pts
                xyz = self.converter.points(xyz)
                with folder.open("map.ply") as f:
                    write_ply(f, xyz, rgb, conf)
                with folder.open("map.pcd") as f:
                    write_pcd(f, xyz, rgb, conf)
            if poses is not None:
                _, stamps, c2w = poses
                T = self.converter.base_poses(c2w) if len(c2w) else np.zeros((0, 4, 4))
                C = T @ self.converter.T_base_cam  # T_map_camera (optical axes)
                C = np.linalg.inv(C[0]) @ C if len(C) else C  # first camera = identity
                for name, P, fmt in (("trajectory_tum.txt", T, "tum"),
                                     ("trajectory_kitti.txt", T, "kitti"),
                                     ("trajectory_camera_tum.txt", C, "tum"),
                                     ("trajectory_camera_kitti.txt", C, "kitti")):  # fmt: skip
                    with folder.open(name) as f:
                        write_poses(f, stamps, P, fmt)
            if map_pts is not None:
                self.planner.save(folder)
            return folder.commit()

    def shutdown(self, hurry: threading.Event | None = None) -> int:
        """Stop the worker and save (if configured) whatever state it is in; exit code.

        The worker finishes the window in progress and maps the frames processed after
        the last full window as a final shorter one (so every processed frame has a
        pose), within ``shutdown_window_wait`` seconds or until ``hurry`` is set (a
        second Ctrl-C, SIGTERM). A window still running then (a slow network) is left
        behind: the map is saved as integrated so far and `main` exits without waiting
        for it. Never "not saving": only a failing write gives exit code 1.
        """
        wait = self.cfg.shutdown_window_wait
        if self.worker.alive and not (hurry is not None and hurry.is_set()):
            self._say("info", f"stopping: mapping the window in progress and the last frames "
                      f"(at most {wait:g} s, shutdown_window_wait); Ctrl-C again saves "
                      "without them")  # fmt: skip
        joined = self.worker.stop(timeout=wait, flush=True, interrupt=hurry)
        engine = self.worker.engine
        if engine is None:
            return 0
        n = engine.n_chunks
        if not self.cfg.save_on_shutdown:
            return 0
        if not joined:
            what = f"saving the {n} window{'s' * (n != 1)} mapped so far" if n else (
                "no window was mapped before it: nothing to save")  # fmt: skip
            self._say("warning", f"the window in progress is left out (not finished in "
                      f"time); {what}")  # fmt: skip
        if n == 0:
            return 0
        name = save_name("")
        try:
            files = self.save(engine, name, root=self.output_dir)
        except Exception as exc:  # a full disk, a refused folder: say so, exit 1
            print(f"[scal3r_mapping] saving to {self.output_dir / name} failed: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)  # fmt: skip
            return 1
        print(f"[scal3r_mapping] saved {len(files)} files to {self.output_dir / name}",
              flush=True)  # fmt: skip
        return 0

    def _say(self, level: str, text: str) -> None:
        """Log through rclpy while its context is up; after a signal shut it down, print."""
        if self.context.ok():
            getattr(self.get_logger(), level)(text)
        else:
            print(f"[scal3r_mapping] {text}", file=sys.stderr, flush=True)

    def _on_worker_events(self, events: list[MapUpdate]) -> None:
        """The worker's sink. Publishes while rclpy's context is up. Once a signal has
        shut it down nothing can be published (RCLError), so only what the saved files
        depend on is kept (`_keep_for_save`); a publish that races the shutdown is no
        error either."""
        if self.context.ok():
            try:
                self._on_events(events)
                return
            except Exception:
                if self.context.ok():
                    raise
        self._keep_for_save(events)

    def _keep_for_save(self, events: list[MapUpdate]) -> None:
        """A window's events after the context went down: the mount and the map anchor,
        when no window ran before (a stream shorter than one window); the scale estimate
        stays the one in use, the occupancy grid without this window."""
        if not self._mount_decided:
            with contextlib.suppress(Exception):  # the fallback mount's /tf_static publish
                self._decide_mount(ns_to_stamp(0))
        if self.converter.anchor is None:
            for ev in events:
                if isinstance(ev, PosesUpdate) and len(ev.frame_ids):
                    self.converter.set_anchor(ev.c2w[int(np.argmin(ev.frame_ids))])
                    break


_ROS_ARGS_HELP = """\
ROS arguments (after --ros-args, as for any ROS 2 node; `--` ends them):
  -p NAME:=VALUE        set one parameter (over the value of --config's file)
  --params-file FILE    a YAML parameter file (`/**: ros__parameters: NAME: VALUE`)
  -r FROM:=TO           remap a topic, or the node name (__node:=NAME)
  --log-level LEVEL     debug, info, warn, error or fatal

Parameter files and overrides are checked before the node starts: a value of the wrong
type is an error (exit 2), an unknown name a warning. A float needs its decimal point
(voxel_size:=1.0), a list of strings its quotes (image_topics:="['/cam/image_raw']").

examples:
  scal3r_mapping --config synthetic
  scal3r_mapping --config kitti --ros-args -p checkpoint:=/data/scal3r.pt
  scal3r_mapping --ros-args -p image_topics:="['/cam/image_raw']" -p chunk_size:=40

parameters (NAME = default: description; `ros2 param describe /scal3r_mapping NAME`):
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scal3r_mapping",
        usage="scal3r_mapping [-h] [--config NAME|PATH] [--ros-args ...]",
        description="The Scal3R online mapping node: images in; /tf, map clouds, odometry, "
        "path and status out.",
        epilog=_ROS_ARGS_HELP + parameter_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="NAME|PATH",
                   help="parameter file: a bundled one (default, low_latency, kitti, synthetic) "
                        "or a path, like the launch file's config argument")  # fmt: skip
    return p


def _read_parameter_sources(config: Path | None, ros: RosArguments) -> list[str]:
    """Check --config, --params-file and -p before rclpy reads them; returns warnings.

    Raises ParameterInputError naming the file or override (rclpy would give a traceback,
    or silently keep an earlier value of another type)."""
    settings, warnings = [], []
    for path in ([str(config)] if config else []) + ros.param_files:
        got, sections = read_parameter_file(path, ros.node_fqn)
        if sections and not got:
            warnings.append(f"{path}: no section applies to {ros.node_fqn} (sections: "
                            f"{', '.join(sections)}); none of its parameters is used")  # fmt: skip
        settings += got
    for rule in ros.overrides:
        setting = parse_override(rule, ros.node_fqn)
        if setting is not None:
            settings.append(setting)
    errors, unknown = check_settings(settings)
    if errors:
        raise ParameterInputError("\n  ".join(["invalid parameter values:", *errors]))
    return warnings + unknown


def main(argv: list[str] | None = None) -> int:
    """Console script `scal3r_mapping [-h] [--config NAME|PATH] [--ros-args ...]`.

    Runs the node without the launch system; ``--config`` takes a bundled parameter file
    (default, low_latency, kitti, synthetic) or a path, like the launch file's argument.
    Usage mistakes (a bad option, a malformed parameter file, a value of the wrong type)
    exit 2 with one message; ``-h``/``--help`` (also after ``--ros-args``) exit 0.
    """
    argv = list(sys.argv if argv is None else argv)
    parser = _parser()
    try:
        own, ros = split_ros_args(argv[1:])
        if ros.help:
            parser.print_help()
            return 0
        opts = parser.parse_args(own)
        config = config_file(opts.config) if opts.config is not None else None
        warnings = _read_parameter_sources(config, ros)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    except (ParameterInputError, FileNotFoundError) as exc:
        print(f"[scal3r_mapping] {exc}", file=sys.stderr, flush=True)
        return 2
    args = argv[:1] + (["--ros-args", "--params-file", str(config)] if config else [])
    signals = _StopSignals()
    signals.install()  # before rclpy.init, whose handler calls the one it finds
    try:
        return _run(args + ros.tokens, warnings, ros.node_name, signals)
    finally:
        signals.restore()


class _StopSignals:
    """SIGINT and SIGTERM while the node runs, called by rclpy's own handler.

    rclpy's handler (installed by rclpy.init; it calls the Python handler it found)
    shuts the context down, which ends spinning. This one sets how patient the shutdown
    is: after a first SIGINT the window in progress and the stream's tail are mapped
    (at most shutdown_window_wait seconds); SIGTERM (what launch and service managers
    send when they lose patience) or another SIGINT sets ``hurry``: save what is mapped
    now. Nothing aborts the save itself -- Python's default handler raised
    KeyboardInterrupt wherever the main thread was, e.g. in the middle of the final save;
    only SIGKILL can, and then the previous save folder is left as it was.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.hurry = threading.Event()
        self._old: dict = {}
        self._wakeup: tuple[int, int] | None = None
        self._old_wakeup = -1

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # Python runs a handler once for signals that arrive before the main thread gets
        # to it; the wakeup pipe gets a byte per signal, so a quick second Ctrl-C counts
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wakeup = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _arrived(self, signum: int) -> list[int]:
        """The signals delivered since the last call (one byte each in the wakeup pipe)."""
        if self._wakeup is None:
            return [signum]
        got = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._wakeup[0], 4096):
                got += chunk
        return list(got)  # empty: already counted by the call that drained them

    def _on_signal(self, signum: int, frame) -> None:
        for sig in self._arrived(signum):
            if sig not in self.SIGNALS:  # another handler's signal
                continue
            self.count += 1
            if sig == signal.SIGINT and self.count == 1:
                continue
            hurried = self.hurry.is_set()
            text = "still saving, please wait" if hurried else "saving what is mapped now"
            self.hurry.set()
            # os.write: a signal handler may interrupt a print of the main thread
            os.write(2, f"[scal3r_mapping] {signal.Signals(sig).name}: {text}\n".encode())


def _run(rcl_args: list[str], warnings: list[str], logger: str, signals: _StopSignals) -> int:
    """rclpy.init, the node, spin; on a signal (or the end of spinning) stop and save."""
    try:
        rclpy.init(args=rcl_args)
    except Exception as exc:  # rcl refuses an argument (e.g. an unknown --ros-args flag)
        print(f"[scal3r_mapping] bad ROS arguments ({type(exc).__name__}: {exc}); see "
              "scal3r_mapping --help", file=sys.stderr, flush=True)  # fmt: skip
        return 2
    for warning in warnings:
        rclpy.logging.get_logger(logger).warning(warning)
    try:
        if signals.count:
            raise RuntimeError("interrupted")
        node = MappingNode()
    except Exception as exc:  # bad parameters, missing/corrupt checkpoint: say why, exit 2
        rclpy.try_shutdown()
        if signals.count:  # a signal came while starting (it shut the context down)
            print("[scal3r_mapping] stopped while starting", file=sys.stderr, flush=True)
            return 0
        print(f"[scal3r_mapping] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    code, clean = 1, True
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():  # a real error; a signal's shutdown surfaces as errors of the wait set
            raise
    finally:
        code = node.shutdown(signals.hurry)
        clean = executor.shutdown(timeout_sec=10.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if node.worker.alive or not clean:
        # A window left behind still runs on the worker thread, inside torch: finalising
        # the interpreter would unwind its C++ frames ("terminate called without an
        # active exception", exit -6). Everything is saved: leave without finalising.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
