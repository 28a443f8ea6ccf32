"""What the node says about itself: ~/status, /diagnostics and the progress log line.

An `Output`: it counts from the engine's events what it reports (windows' timings and
memory, loop closures, rejected alignments, latency, the scale), and on the status timer
(`publish`) adds the worker's and the inputs' counters, read as copies under their
owners' locks (`MappingWorker.stats_snapshot`, `ImageInput.counts`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from scal3r_ros_msgs.msg import MappingStatus

from scal3r_ros.mapping.events import (
    AlignmentReport,
    LoopClosureUpdate,
    MapUpdate,
    PosesUpdate,
    RelocalisationUpdate,
    SensorFusionUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.worker import WorkerStats
from scal3r_ros.ros import qos
from scal3r_ros.ros.conversions import ns_to_stamp
from scal3r_ros.ros.outputs import ScaleUpdate
from scal3r_ros.ros.params import NodeConfig

# the MappingStatus fields of each other sensor (/diagnostics keys), by its topic parameter
SENSOR_FIELDS = {
    "odometry_topic": (
        "odometry_used",
        "odometry_rejected",
        "odometry_factors",
        "odometry_residual_m",
    ),
    "gnss_topic": (
        "gnss_used",
        "gnss_rejected",
        "gnss_priors",
        "gnss_outliers",
        "gnss_residual_m",
    ),
    "imu_topic": ("imu_used", "imu_rejected"),
}


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


class StatusOutputs:
    """~/status, /diagnostics and the progress line (an `Output`). ``worker_stats`` and
    ``input_counts`` return copies; ``scale`` is the estimate before the first window."""

    def __init__(
        self,
        node: Node,
        cfg: NodeConfig,
        backend: str,
        device: str,
        worker_stats: Callable[[], tuple[WorkerStats, int]],
        input_counts: Callable[[], tuple[dict[str, int], dict[str, int]]],
        scale: ScaleUpdate,
        sensor_counts: Callable[[], tuple[dict[str, int], dict[str, int]]] | None = None,
        map_tilt_deg: Callable[[], float | None] | None = None,
    ) -> None:
        self.cfg, self.backend, self.device = cfg, backend, device
        self._sensor_counts = sensor_counts or (lambda: ({}, {}))
        self._map_tilt_deg = map_tilt_deg or (lambda: None)
        self._node, self._worker_stats, self._input_counts = node, worker_stats, input_counts
        self._pub = node.create_publisher(MappingStatus, "~/status", qos.RELIABLE_OUTPUT)
        self._pub_diag = node.create_publisher(DiagnosticArray, "/diagnostics", qos.RELIABLE_OUTPUT)
        self._lock = threading.Lock()  # worker thread (events) vs timer (publish)
        self._progress_at = time.monotonic()  # progress is logged from here on
        self._progress_counts: tuple[int, ...] | None = None
        self._node_error = ("", 0)  # (message, worker errors when it was set)
        self.session = ("", "")  # (folder, mode) of the loaded session; ("", ""): none
        self.reset()
        self._scale = scale

    def reset(self) -> None:
        with self._lock:
            self._newest_ns = 0
            self._latency_s = 0.0
            self._timings: dict[str, float] = {}
            self._memory: dict[str, float] = {}
            self._loops = 0
            self._degenerate = 0
            self._fusion: SensorFusionUpdate | None = None
            self._intrinsics = ("", 0.0, 0)  # newest window's source, focal ratio; fallbacks
            self._focal_off = False  # the focal ratio is beyond focal_ratio_warn
            self._reloc: RelocalisationUpdate | None = None

    def set_session(self, folder: str, mode: str) -> None:
        """A session was loaded (after `reset`): ~/status says relocalising from now on."""
        with self._lock:
            self.session = (folder, mode)
            self._reloc = None

    def set_error(self, message: str) -> None:
        """An error of the node's own (a refused session): ~/status last_error until the
        worker reports a newer one."""
        errors = self._worker_stats()[0].errors
        with self._lock:
            self._node_error = (message, errors)

    # ------------------------------------------------------------ worker thread
    def on_events(self, events: list[MapUpdate]) -> None:
        now_ns = self._node.get_clock().now().nanoseconds
        for ev in events:
            if isinstance(ev, AlignmentReport) and not ev.ok:
                self._node.get_logger().warning(
                    f"chunk {ev.chunk_id}: alignment to chunk {ev.other_chunk_id} rejected "
                    f"({ev.reason}); placed by {ev.fallback or 'nothing'}"
                )
        with self._lock:
            for ev in events:
                if isinstance(ev, PosesUpdate) and not ev.corrected and len(ev.stamps_ns):
                    self._newest_ns = max(self._newest_ns, int(max(ev.stamps_ns)))
                    self._latency_s = max(0.0, (now_ns - self._newest_ns) / 1e9)
                elif isinstance(ev, LoopClosureUpdate):
                    self._loops += 1
                elif isinstance(ev, AlignmentReport) and not ev.ok:
                    self._degenerate += 1
                elif isinstance(ev, StatsUpdate):
                    self._timings, self._memory = dict(ev.timings), dict(ev.memory)
                    self._on_intrinsics(ev)
                elif isinstance(ev, ScaleUpdate):
                    self._scale = ev
                elif isinstance(ev, SensorFusionUpdate):
                    self._fusion = ev
                elif isinstance(ev, RelocalisationUpdate):
                    self._reloc = ev

    def _on_intrinsics(self, ev: StatsUpdate) -> None:
        """The newest window's intrinsics; a warning when its predicted / known focal
        ratio leaves 1 +- focal_ratio_warn, a note when it is back (once per transition)."""
        if not ev.intrinsics_source:
            return
        self._intrinsics = (ev.intrinsics_source, ev.focal_ratio, ev.intrinsics_fallbacks)
        if ev.focal_ratio <= 0.0:  # no known K to compare with: no news
            return
        warn = self.cfg.focal_ratio_warn
        off = warn > 0 and abs(ev.focal_ratio - 1.0) > warn
        if off != self._focal_off:
            self._focal_off = off
            log = self._node.get_logger()
            if off:
                log.warning(
                    f"chunk {ev.chunk_id}: predicted / known focal length {ev.focal_ratio:.3f}"
                    f" (beyond 1 +- focal_ratio_warn {warn:g}): a wrong CameraInfo or camera_k"
                    f" calibration, or a window the network misjudged; unprojecting with "
                    f"{ev.intrinsics_source} intrinsics"
                )
            else:
                log.info(
                    f"chunk {ev.chunk_id}: predicted / known focal length {ev.focal_ratio:.3f}"
                    f" is within 1 +- {warn:g} again"
                )

    # ------------------------------------------------------------ status timer
    def snapshot(self) -> tuple[MappingStatus, dict[str, int], dict[str, int]]:
        """The status message, frames dropped by reason (inputs and worker) and notices."""
        s, queued = self._worker_stats()
        drops, notices = self._input_counts()
        received = s.received + sum(drops.values())
        for k, v in s.dropped.items():
            drops[k] = drops.get(k, 0) + v
        with self._lock:
            timings, memory, scale = self._timings, self._memory, self._scale
            newest_ns, latency_s, loops = self._newest_ns, self._latency_s, self._loops
            fusion, reloc, session = self._fusion, self._reloc, self.session
            node_error, errors_then = self._node_error
            source, ratio, _ = self._intrinsics
        cfg = self.cfg
        msg = MappingStatus()
        msg.frames_received = received
        msg.frames_processed = s.processed
        msg.frames_dropped = sum(drops.values())
        msg.chunks_processed = s.chunks
        msg.last_error = s.last_error
        if node_error and (s.errors == errors_then or not s.last_error):
            msg.last_error = node_error  # newer than the worker's last error
        msg.header.stamp = ns_to_stamp(newest_ns)
        msg.header.frame_id = cfg.map_frame
        msg.loop_closures = loops
        msg.queue_length = queued
        msg.queue_capacity = cfg.queue_size
        msg.latency_ms = float(latency_s * 1e3)
        total = sum(timings.values())
        msg.chunk_time_ms = float(total * 1e3)
        msg.fps = float(cfg.chunk_size - cfg.overlap) / max(total, 1e-9) if timings else 0.0
        msg.map_points = int(memory.get("map_points", 0))
        msg.gpu_memory_mb = float(memory.get("gpu_peak_bytes", 0.0) / 2**20)
        msg.host_rss_mb = float(memory.get("rss_bytes", 0.0) / 2**20)
        msg.device, msg.backend, msg.gcs_mode = self.device, self.backend, cfg.gcs_mode
        msg.scale_source = scale.estimate.source if cfg.graph_scale else cfg.scale_source
        msg.scale = scale.scale
        self._fill_sensors(msg, fusion)
        msg.scale_confidence = float(scale.estimate.confidence)
        msg.intrinsics_source, msg.focal_ratio = source, float(ratio)
        self._fill_session(msg, session, reloc)
        if s.errors and s.last_error and not s.busy and s.chunks == 0:
            msg.state, msg.state_text = MappingStatus.STATE_ERROR, "error"
        elif session[0] and (reloc is None or reloc.state != "localised"):
            msg.state, msg.state_text = MappingStatus.STATE_RELOCALISING, "relocalising"
        elif session[0]:
            msg.state, msg.state_text = MappingStatus.STATE_LOCALISED, "localised"
        elif msg.chunks_processed == 0:
            msg.state, msg.state_text = MappingStatus.STATE_BUFFERING, "buffering"
        else:
            msg.state, msg.state_text = MappingStatus.STATE_MAPPING, "mapping"
        return msg, drops, notices

    @staticmethod
    def _fill_session(
        msg: MappingStatus, session: tuple[str, str], reloc: RelocalisationUpdate | None
    ) -> None:
        msg.session, msg.session_mode = session
        msg.reloc_matched_chunk = -1
        msg.reloc_inlier_ratio = msg.reloc_rmse = float("nan")
        if reloc is not None:
            msg.reloc_windows_tried = int(reloc.windows_tried)
            msg.reloc_frames_tried = int(reloc.frames_tried)
            msg.reloc_matched_chunk = int(reloc.matched_chunk_id)
            msg.reloc_inlier_ratio = float(reloc.inlier_ratio)
            msg.reloc_rmse = float(reloc.rmse)
            msg.reloc_reason = reloc.reason

    def _fill_sensors(self, msg: MappingStatus, fusion: SensorFusionUpdate | None) -> None:
        used, rejected = self._sensor_counts()
        counts = fusion.counts if fusion is not None else {}
        residuals = fusion.residuals if fusion is not None else {}
        msg.odometry_used = used.get("odometry", 0)
        msg.odometry_rejected = sum(v for k, v in rejected.items() if k.startswith("odometry_"))
        msg.odometry_factors = counts.get("odometry_used", 0)
        msg.odometry_residual_m = residuals.get("odometry_m", float("nan"))
        msg.gnss_used = used.get("gnss", 0)
        msg.gnss_rejected = sum(v for k, v in rejected.items() if k.startswith("gnss_"))
        msg.gnss_priors = counts.get("gnss_used", 0)
        msg.gnss_outliers = counts.get("gnss_outliers", 0)
        msg.gnss_residual_m = residuals.get("gnss_m", float("nan"))
        msg.imu_used = used.get("imu", 0)
        msg.imu_rejected = sum(v for k, v in rejected.items() if k.startswith("imu_"))
        tilt = self._map_tilt_deg()
        msg.map_tilt_deg = float("nan") if tilt is None else float(tilt)
        anchor = fusion.enu_anchor if fusion is not None and fusion.enu is not None else None
        msg.georeferenced = anchor is not None
        msg.enu_latitude, msg.enu_longitude, msg.enu_altitude = anchor or (float("nan"),) * 3

    def publish(self) -> None:
        msg, drops, notices = self.snapshot()
        self._pub.publish(msg)
        with self._lock:
            est, degenerate = self._scale.estimate, self._degenerate
            fallbacks, focal_off = self._intrinsics[2], self._focal_off
        diag = DiagnosticStatus(name="scal3r_mapping: mapping", hardware_id=msg.device)
        level, text = DiagnosticStatus.OK, msg.state_text
        if msg.last_error:
            level, text = DiagnosticStatus.WARN, f"last error: {msg.last_error}"
        elif drops or notices:
            level = DiagnosticStatus.WARN
            parts = [f"{k} {v}" for k, v in sorted(notices.items())]
            if drops:
                parts.insert(
                    0, "dropped frames: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
                )
            text = "; ".join(parts)
        elif msg.scale_source != "none" and not est.ok:
            level, text = DiagnosticStatus.WARN, f"scale: {est.status}"
        elif focal_off:
            level = DiagnosticStatus.WARN
            text = f"predicted / known focal length {msg.focal_ratio:.3f} (calibration?)"
        diag.level, diag.message = level, text
        values = {
            "frames_received": msg.frames_received,
            "frames_processed": msg.frames_processed,
            "frames_dropped": msg.frames_dropped,
            "chunks": msg.chunks_processed,
            "queue_length": msg.queue_length,
            "queue_capacity": msg.queue_capacity,
            "latency_ms": f"{msg.latency_ms:.1f}",
            "chunk_time_ms": f"{msg.chunk_time_ms:.1f}",
            "gpu_memory_mb": f"{msg.gpu_memory_mb:.1f}",
            "host_rss_mb": f"{msg.host_rss_mb:.1f}",
            "map_points": msg.map_points,
            "loop_closures": msg.loop_closures,
            "degenerate_alignments": degenerate,
            "backend": msg.backend,
            "gcs_mode": msg.gcs_mode,
            "scale_source": msg.scale_source,
            "scale": f"{msg.scale:.6g}",
            "scale_confidence": f"{msg.scale_confidence:.2f}",
            "scale_status": est.status,
            "intrinsics_source": msg.intrinsics_source,
            "focal_ratio": f"{msg.focal_ratio:.4f}",
            "intrinsics_fallbacks": fallbacks,
        }
        for topic, names in SENSOR_FIELDS.items():
            if getattr(self.cfg, topic):
                for name in names:
                    v = getattr(msg, name)
                    values[name] = f"{v:.3f}" if isinstance(v, float) else v
        if msg.session:
            values["session"] = msg.session
            values["session_mode"] = msg.session_mode
            values["reloc_windows_tried"] = msg.reloc_windows_tried
            values["reloc_frames_tried"] = msg.reloc_frames_tried
            if msg.state == MappingStatus.STATE_LOCALISED:
                values["reloc_matched_chunk"] = msg.reloc_matched_chunk
                values["reloc_inlier_ratio"] = f"{msg.reloc_inlier_ratio:.3f}"
            elif msg.reloc_reason:
                values["reloc_reason"] = msg.reloc_reason
        if self.cfg.imu_topic:
            values["map_tilt_deg"] = f"{msg.map_tilt_deg:.2f}"
        if self.cfg.gnss_topic:
            values["georeferenced"] = msg.georeferenced
            if msg.georeferenced:
                values["enu_origin"] = (
                    f"{msg.enu_latitude:.7f}, {msg.enu_longitude:.7f}, {msg.enu_altitude:.2f}"
                )
        values.update({f"dropped_{k}": v for k, v in drops.items()})
        values.update(notices)
        diag.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[diag])
        arr.header.stamp = self._node.get_clock().now().to_msg()
        self._pub_diag.publish(arr)
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
        counts = (
            msg.frames_received,
            msg.frames_processed,
            msg.frames_dropped,
            msg.chunks_processed,
        )
        if msg.frames_received == 0:
            topics = ", ".join(self.cfg.image_topics + self.cfg.compressed_topics)
            self._node.get_logger().info(f"waiting for images on {topics} (none received yet)")
        elif counts != self._progress_counts:
            self._node.get_logger().info(progress_line(msg))
        self._progress_counts = counts
