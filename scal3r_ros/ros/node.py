"""The scal3r_ros mapping node: images in; /tf, clouds, odometry, path, status out.

Wiring only. Input callbacks decode, check and enqueue (`input_checks.ImageInput` ->
`MappingWorker.submit`); the worker thread runs the `MappingEngine` and hands each
batch of events to `_on_events`, which places the map (`mount.CameraMount`: mount and
anchor; `scale.ScaleTracker`: metric scale, as a `ScaleUpdate` event) and passes the
batch to every output (`outputs/`: poses, clouds, planner, status). Saves:
`saving.py`; frames and units: `frames.py`; parameters: `params.py`; the console
script: `cli.py`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from scal3r_ros_msgs.srv import LoadMap, SaveMap
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from scal3r_ros.mapping.backends.factory import BackendSpec, build_engine, make_backend
from scal3r_ros.mapping.config import (
    SESSION_MODES,
    BackendSection,
    MapSection,
    OracleSection,
    SensorSection,
    WindowSection,
)
from scal3r_ros.mapping.engine import EngineConfig, is_aligned_part
from scal3r_ros.mapping.events import Frame, MapUpdate, PosesUpdate
from scal3r_ros.mapping.session import ScaleState, SessionData, SessionError, read_session
from scal3r_ros.mapping.worker import MappingWorker
from scal3r_ros.ros import cli, qos
from scal3r_ros.ros.conversions import (
    compressed_to_rgb,
    image_to_rgb,
    ns_to_stamp,
    set_pillow_limit,
)
from scal3r_ros.ros.frames import FrameConverter, camera_mount
from scal3r_ros.ros.input_checks import ImageInput
from scal3r_ros.ros.mount import CameraMount
from scal3r_ros.ros.outputs import Output
from scal3r_ros.ros.outputs.cloud import CloudOutputs
from scal3r_ros.ros.outputs.enu import EnuOutputs
from scal3r_ros.ros.outputs.planner import PlannerOutputs
from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs
from scal3r_ros.ros.outputs.status import StatusOutputs
from scal3r_ros.ros.params import DYNAMIC, NodeConfig, declare_and_read
from scal3r_ros.ros.saving import MapSaver
from scal3r_ros.ros.scale import ScaleTracker
from scal3r_ros.ros.sensors import SensorInputs
from scal3r_ros.ros.session import (
    RelocalisationGate,
    encode_grid,
    node_block,
    parse_node_block,
    session_path,
)

LOAD_WAIT_S = 300.0  # ~/load_map waits this long for the frames queued before it


def backend_spec(cfg: NodeConfig) -> BackendSpec:
    return BackendSpec.from_sections(
        cfg.section(BackendSection), cfg.section(OracleSection), loop_closure=cfg.loop_closure
    )


def engine_config(cfg: NodeConfig) -> EngineConfig:
    return EngineConfig.from_sections(
        cfg.section(WindowSection), cfg.section(MapSection), frame_clouds=cfg.sensor_cloud_enabled
    )


class MappingNode(Node):
    """See the module docstring and README's topics/parameters tables."""

    def __init__(self, **kwargs) -> None:
        super().__init__("scal3r_mapping", **kwargs)
        self.cfg: NodeConfig = declare_and_read(self)
        cfg = self.cfg
        self.output_dir = Path(os.path.expanduser(cfg.output_dir))
        log = self.get_logger()

        # --- the robot's other sensors (odometry, GNSS, IMU), each on when its topic is set
        self.sensors = SensorInputs(
            self,
            cfg.section(SensorSection),
            cfg.base_frame,
            lambda frame: self.mount.static_chain(frame),
            log.warning,
            cfg.input_qos,
        )
        fusion = self.sensors.fusion

        # --- the engine on its worker thread
        backend = make_backend(backend_spec(cfg))
        self.worker = MappingWorker(
            lambda: build_engine(engine_config(cfg), backend.backend, backend.loop_closure, fusion),
            self._on_worker_events,
            queue_size=cfg.queue_size,
            drop_policy=cfg.drop_policy,
            on_error=lambda msg: log.error(f"chunk failed: {msg}"),
            pipelined=cfg.pipeline,
        )

        # --- where the map sits: mount, anchor (CameraMount) and scale (ScaleTracker)
        self.converter = FrameConverter(camera_mount(cfg.camera_xyz, cfg.camera_rpy))
        pub_tf_static = self.create_publisher(TFMessage, "/tf_static", qos.TF_STATIC)
        self.mount = CameraMount(
            cfg,
            self.converter,
            pub_tf_static.publish,
            log.info,
            gravity=self.sensors.gravity_up if cfg.imu_topic else None,
            on_mount=None if fusion is None else fusion.set_mount,
        )
        if fusion is not None:
            fusion.set_mount(self.converter.T_base_cam)
        self.scale = ScaleTracker(self, cfg, graph=self.sensors.graph_sources)
        self._held_events: list[MapUpdate] = []  # a window's poses waiting for its points
        self._loaded_scale_source = ""  # what measured a loaded session's scale
        self._odom_at_load = np.eye(4)  # odom goes on from here after a load

        # --- inputs
        set_pillow_limit(cfg.max_image_pixels)
        queue_full = (
            f"frame queue full ({cfg.queue_size}): dropping the "
            f"{'oldest' if cfg.drop_policy == 'drop_oldest' else 'newest'} frame; "
            "the worker is slower than the camera"
        )
        self.inputs = ImageInput(
            cfg.stamp_policy(),
            cfg.image_limits(),
            self._submit,
            self._request_reset,
            lambda: self.get_clock().now().nanoseconds,
            log,
            queue_full,
            camera_k=cfg.camera_k,
        )
        in_qos = qos.input_profile(cfg.input_qos, cfg.input_qos_depth)
        for msg_type, topics, decode in (
            (Image, cfg.image_topics, image_to_rgb),
            (CompressedImage, cfg.compressed_topics, compressed_to_rgb),
        ):
            for topic in topics:
                self.create_subscription(msg_type, topic, self.inputs.callback(decode), in_qos)
        for topic in cfg.camera_info_topics:
            self.create_subscription(CameraInfo, topic, self.inputs.on_camera_info, in_qos)
        if cfg.use_tf_static:
            self.create_subscription(
                TFMessage, "/tf_static", self.mount.on_tf_static, qos.TF_STATIC
            )
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(
                min_forward=None, min_backward=Duration(seconds=-1.0), on_clock_change=False
            ),
            post_callback=lambda _jump: self.inputs.clock_jumped_back(),
        )

        # --- outputs: each gets every batch of events (worker thread)
        def map_cloud():  # the whole map, for ~/map and grid rebuilds (worker thread)
            return self.worker.engine.map_points(voxelize=False)

        def publisher(msg_type, topic: str, profile):
            return self.create_publisher(msg_type, topic, profile).publish

        publish_tf = publisher(TFMessage, "/tf", qos.TF)  # one /tf publisher, several outputs
        self.poses = PoseOutputs(
            self.converter,
            PoseFrames(cfg.map_frame, cfg.odom_frame, cfg.base_frame),
            publish_tf,
            publisher(Odometry, "~/odometry", qos.RELIABLE_OUTPUT),
            publisher(PathMsg, "~/path", qos.LATCHED),
            path_period=cfg.path_publish_period,
            path_max_poses=cfg.path_max_poses,
        )
        self.clouds = CloudOutputs(
            self.converter,
            cfg.map_frame,
            publisher(PointCloud2, "~/cloud", qos.RELIABLE_OUTPUT),
            publisher(PointCloud2, "~/map", qos.LATCHED),
            map_cloud,
            cfg.map_publish_period,
        )
        self.planner = PlannerOutputs(self, cfg, self.converter, map_cloud)
        self.status = StatusOutputs(
            self,
            cfg,
            backend.name,
            backend.device_name,
            self.worker.stats_snapshot,
            self.inputs.counts,
            self.scale.current(),
            sensor_counts=self.sensors.counts,
            map_tilt_deg=lambda: self.mount.tilt_deg,
        )
        self.outputs: list[Output] = [self.poses, self.clouds, self.planner, self.status]
        if cfg.gnss_topic:
            self.enu = EnuOutputs(self.converter, cfg.enu_frame, cfg.map_frame, publish_tf)
            self.outputs.append(self.enu)
        # --- sessions: saved with every save, loaded at start (map_file) or by ~/load_map
        self.gate = RelocalisationGate()
        self._odom_converter: FrameConverter | None = None  # new frames before a fix
        self.saver = MapSaver(
            self.converter,
            self.output_dir,
            self.planner.save,
            session=self._session_data,
            refuse=self._save_refused,
            warn=lambda text: self._say("warning", text),
        )

        # --- services and timers (own group, so a save never blocks image callbacks)
        group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/reset", self._srv_reset, callback_group=group)
        self.create_service(
            SaveMap,
            "~/save_map",
            lambda req, res: self.saver.on_request(req, res, self.worker.call),
            callback_group=group,
        )
        self.create_service(LoadMap, "~/load_map", self._srv_load_map, callback_group=group)
        self.create_timer(cfg.status_period, self._on_status_timer, callback_group=group)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.worker.start()
        if cfg.map_file:  # the first command: before any frame
            self.worker.request(
                "flush", lambda _events: self._load_session(cfg.map_file, cfg.session_mode)
            )
        log.info(
            f"scal3r_mapping ready: backend {backend.name} on {backend.device_name}, "
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
        self.cfg = self.status.cfg = trial
        self.inputs.set_policy(trial.stamp_policy())
        self.poses.path_period = trial.path_publish_period
        self.poses.path_max_poses = trial.path_max_poses
        self.clouds.period = self.planner.period = trial.map_publish_period
        return SetParametersResult(successful=True)

    # ================================================================ inputs
    def _submit(self, frame: Frame) -> bool:
        ok = self.worker.submit(frame)
        self.mount.saw_camera(frame.camera_id)
        return ok

    def _request_reset(self) -> None:
        """Reset the map after the frames already queued; then every output."""

        def done(_events) -> None:
            self._held_events = []
            self.gate.reset()
            self._odom_converter = None
            self.status.set_session("", "")
            self.mount.reset()
            self.sensors.reset()
            scale = self.scale.reset()
            self.converter.scale = scale.scale
            for out in self.outputs:
                out.reset()
                out.on_events([scale])

        self.worker.request("reset", done)

    def _srv_reset(self, request, response):
        self._request_reset()
        self.inputs.reset()  # stamps and the stream's size start over
        response.success, response.message = True, "reset queued after the frames already received"
        return response

    # ================================================================ worker events
    def _on_worker_events(self, events: list[MapUpdate]) -> None:
        """The worker's sink. Publishes while rclpy's context is up. Once a signal has
        shut it down nothing can be published (RCLError), so only what the saved files
        depend on is kept (the mount and the map anchor, when no window ran before);
        a publish that races the shutdown is no error either."""
        if self.context.ok():
            try:
                self._on_events(events)
                return
            except Exception:
                if self.context.ok():
                    raise
        self.mount.on_events(events, publish=False)

    def _on_events(self, events: list[MapUpdate]) -> None:
        """Called on the worker thread after each window: place, scale, publish. The
        worker hands a window over in two parts (its poses as soon as it is aligned, then
        its points); with a scale source, the poses wait for the points (a window's scale
        comes from both, and its first odometry is kept for good)."""
        if self.scale.active and is_aligned_part(events):
            self._held_events += events
            return
        events, self._held_events = [*self._held_events, *events], []
        relevelled = self.mount.on_events(events)
        if self.gate.loaded:  # a loaded session: new frames reach map once relocalised
            self._on_session_events(events)
            return
        scale = self.scale.on_events(events)
        if relevelled:  # the map frame turned under published poses: re-express them
            scale = dataclasses.replace(scale, rescaled=True)
        self.converter.scale = scale.scale
        events = [scale, *events]
        for out in self.outputs:
            out.on_events(events)

    def _on_session_events(self, events: list[MapUpdate]) -> None:
        """After a load (`session.RelocalisationGate`): new frames' poses in odom only
        until the engine's "localised", the rest of the window to ~/status only; from
        then on everything, in the loaded map's frame (scale fixed by the session)."""
        split = self.gate.split(events)
        for ev in split.odometry:
            if self._odom_converter is None:  # odom goes on from its last pose
                conv = FrameConverter(self.converter.T_base_cam, self.converter.scale)
                conv.origin = self._odom_at_load @ self.converter.T_base_cam
                conv.set_anchor(ev.c2w[int(np.argmin(ev.frame_ids))])
                self._odom_converter = conv
            self.poses.on_odometry_only(ev, self._odom_converter.base_poses(ev.c2w))
        if split.localised is not None:
            r = split.localised
            self.get_logger().info(
                f"relocalised in {self.gate.path} after {r.frames_tried} frames "
                f"({r.windows_tried} windows): tied to its window {r.matched_chunk_id}, "
                f"inlier ratio {r.inlier_ratio:.2f}, rmse {r.rmse:.3g}"
            )
        scale = self.scale.on_events(split.events)
        self.status.on_events([scale, *split.odometry, *split.status, *split.events])
        for out in self.outputs:
            if out is not self.status:
                out.on_events([scale, *split.events])

    # ================================================================ sessions
    def _session_data(self, engine) -> SessionData | None:
        """The session written with a save (worker thread, under the engine's state
        lock): the engine's state and the node's placement of ``map``."""
        if not self.cfg.save_session:
            return None
        data = engine.export_session()
        est = self.scale.estimate
        source = est.source
        if self.gate.loaded and self._loaded_scale_source:
            source = self._loaded_scale_source  # what measured the loaded map's scale
        if est.metric:
            data.scale = ScaleState(float(self.converter.scale), source)
        grid = self.planner.grid_state()
        data.node = node_block(
            self.converter.placement(),
            levelled=self.mount.levelled,
            tilt_deg=self.mount.tilt_deg,
            scale_source=source,
            scale_metric=est.metric,
            map_frame=self.cfg.map_frame,
            grid=None if grid is None else encode_grid(*grid, self.cfg.occupancy_resolution),
        )
        return data

    def _save_refused(self) -> str:
        if self.gate.relocalising:
            return (
                f"relocalising in {self.gate.path}: new frames are not placed in its map yet "
                "(save once ~/status says localised)"
            )
        return ""

    def _srv_load_map(self, request, response):
        """~/load_map: queued after the frames already received (mapped in the old map
        first); answers once loaded (or refused)."""
        mode = request.mode or self.cfg.session_mode
        if mode not in SESSION_MODES:
            response.success = False
            response.message = f"mode must be one of {SESSION_MODES} (or empty), got {mode!r}"
            return response
        if not request.path:
            response.success, response.message = False, "path is empty: name a session folder"
            return response
        done = threading.Event()
        result: list[tuple[bool, str]] = []

        def load(_events) -> None:
            result.append(self._load_session(request.path, mode))
            done.set()

        self.worker.request("flush", load)
        deadline = time.monotonic() + LOAD_WAIT_S
        while not done.wait(0.5) and time.monotonic() < deadline:
            if not self.worker.alive:
                response.success, response.message = False, "the mapping worker is stopping"
                return response
        if not done.is_set():
            response.success = False
            response.message = (
                f"not loaded within {LOAD_WAIT_S:g} s: the frames queued before it are still "
                "being mapped (it stays queued and loads after them; see ~/status)"
            )
            return response
        response.success, response.message = result[0]
        return response

    def _load_session(self, path: str, mode: str) -> tuple[bool, str]:
        """Load a session (worker thread, in queue order) and place the node in its map
        frame; a refused session changes nothing (error in the log and ~/status)."""
        log = self.get_logger()
        folder = session_path(path, self.output_dir)
        engine = self.worker.engine
        t0 = time.perf_counter()
        try:
            data = read_session(folder, expected=engine.session_parameters())
            placement = parse_node_block(data.node)
            engine.load_session(data, mode)
        except (SessionError, NotImplementedError, ValueError, OSError) as exc:
            msg = f"cannot load session {folder}: {exc}"
            log.error(msg)
            self.status.set_error(msg)
            return False, msg
        ids, stamps, c2w = engine.poses()
        self._held_events = []
        self._odom_converter = None
        self._odom_at_load = self.poses.last_odometry()  # (before the outputs' reset)
        self.mount.reset()
        self.sensors.reset()
        if placement is not None:
            self.mount.restore(placement.as_mount_block())
            scale = self.scale.fix(
                placement.placement["scale"], placement.scale_source, placement.scale_metric
            )
            self._loaded_scale_source = placement.scale_source
        else:  # a session without the node's placement: map at its first frame's base_link
            if len(c2w):
                self.converter.set_anchor(c2w[0])
            mpu = data.scale.metres_per_unit
            scale = self.scale.fix(mpu or 1.0, data.scale.source, mpu is not None)
            self._loaded_scale_source = data.scale.source
        self.converter.scale = scale.scale
        for out in self.outputs:
            out.reset()
        self.gate.start(str(folder), mode, data.n_frames)
        self.status.set_session(str(folder), mode)
        for out in self.outputs:
            out.on_events([scale])
        stamp = ns_to_stamp(int(stamps.max()) if len(stamps) else 0)
        self.clouds.publish_map(stamp)
        grid = None if placement is None else placement.grid
        if grid is not None and abs(grid[3] - self.cfg.occupancy_resolution) > 1e-9:
            log.warning("the session's grid has another resolution: rebuilt from its map")
            grid = None
        self.planner.restore(
            PosesUpdate(-1, ids, stamps, c2w),
            None if grid is None else grid[:3],
            frozen=mode == "localisation",
        )
        msg = (
            f"loaded session {folder} ({data.n_frames} frames, {len(ids)} placed, "
            f"{data.map.xyz.shape[0]} map points) in {time.perf_counter() - t0:.2f} s, "
            f"mode {mode}: relocalising"
        )
        log.info(msg)
        return True, msg

    def _on_status_timer(self) -> None:
        self.poses.publish_path(time.monotonic())  # the last poses of a stream, too
        self.status.publish()

    # ================================================================ shutdown
    def shutdown(self, hurry: threading.Event | None = None) -> int:
        """Stop the worker and save (if configured) whatever state it is in; exit code.

        The worker finishes the window in progress and maps the frames processed after
        the last full window as a final shorter one (so every processed frame has a
        pose), within ``shutdown_window_wait`` seconds or until ``hurry`` is set (a
        second Ctrl-C, SIGTERM). A window still running then (a slow network) is left
        behind: the map is saved as integrated so far and `main` exits without waiting
        for it (`MapSaver.save_at_shutdown`).
        """
        wait = self.cfg.shutdown_window_wait
        if self.worker.alive and not (hurry is not None and hurry.is_set()):
            self._say(
                "info",
                f"stopping: mapping the window in progress and the last frames "
                f"(at most {wait:g} s, shutdown_window_wait); Ctrl-C again saves "
                "without them",
            )
        joined = self.worker.stop(timeout=wait, flush=True, interrupt=hurry)
        engine = self.worker.engine
        if engine is None or not self.cfg.save_on_shutdown:
            return 0
        return self.saver.save_at_shutdown(engine, joined, self._say)

    def _say(self, level: str, text: str) -> None:
        """Log through rclpy while its context is up; after a signal shut it down, print."""
        if self.context.ok():
            getattr(self.get_logger(), level)(text)
        else:
            print(f"[scal3r_mapping] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Console script `scal3r_mapping [-h] [--config NAME|PATH] [--ros-args ...]`
    (`cli.main`)."""
    return cli.main(argv, MappingNode)


if __name__ == "__main__":
    sys.exit(main())
