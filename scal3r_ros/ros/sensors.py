"""The robot's other sensors on the ROS side: nav_msgs/Odometry, sensor_msgs/NavSatFix and
sensor_msgs/Imu subscriptions, converted for the engine's `SensorFusion` (odometry and GNSS
factors in the pose graph) and for the map's levelling (`GravityLevel`, read by
`CameraMount`).

Each source is on when its topic parameter is set. Callbacks run on the executor; the
fusion locks its own inputs, the gravity estimate is guarded here. Every message is counted
as used or rejected (with the reason) for ~/status and /diagnostics; a bad message is a
count and, the first time, a warning, never an exception.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import Imu, NavSatFix

from scal3r_ros.mapping.config import SensorSection
from scal3r_ros.mapping.sensor_fusion import SensorFusion, SensorFusionConfig
from scal3r_ros.mapping.sensors.gnss import GnssFix
from scal3r_ros.mapping.sensors.gravity import GravityConfig, GravityLevel
from scal3r_ros.ros import qos
from scal3r_ros.ros.conversions import stamp_to_ns
from scal3r_ros.ros.frames import matrix_from_quaternion

ODOM_VARIANCES = (0, 7, 14, 21, 28, 35)  # diagonal of a row-major 6x6 covariance


def odometry_pose(msg: Odometry) -> tuple[np.ndarray, np.ndarray | None]:
    """T_odom_base (4x4) and the pose covariance diagonal (None when all zero: unknown)."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    T = np.eye(4)
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    n = float(np.linalg.norm(quat))
    T[:3, :3] = matrix_from_quaternion(quat) if np.isfinite(n) and n > 0.5 else np.nan
    T[:3, 3] = (p.x, p.y, p.z)
    cov = np.asarray(msg.pose.covariance, dtype=np.float64)
    var = cov[list(ODOM_VARIANCES)] if cov.size == 36 else np.zeros(6)
    return T, (var if var.any() else None)


def gnss_fix(msg: NavSatFix) -> GnssFix:
    return GnssFix(
        stamp_to_ns(msg.header.stamp),
        float(msg.latitude),
        float(msg.longitude),
        float(msg.altitude),
        int(msg.status.status),
        tuple(float(v) for v in msg.position_covariance),
        int(msg.position_covariance_type),
    )


def imu_up(msg: Imu) -> np.ndarray | None:
    """Up in the IMU's axes from its orientation (a z-up world frame), when it has one."""
    if msg.orientation_covariance[0] == -1.0:
        return None
    q = msg.orientation
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.isfinite(quat).all() or np.linalg.norm(quat) < 0.5:
        return None
    return matrix_from_quaternion(quat).T @ np.array([0.0, 0.0, 1.0])


class SensorInputs:
    """The subscriptions of the configured sources; ``fusion`` (None when neither odometry
    nor GNSS is on) goes to the engine, ``gravity_up`` to the mount."""

    def __init__(
        self,
        node: Node,
        section: SensorSection,
        base_frame: str,
        static_chain: Callable[[str], np.ndarray | None],
        warn: Callable[[str], None],
        qos_kind: str = "sensor_data",
    ) -> None:
        self.section, self.base_frame = section, base_frame
        self._static_chain, self._warn = static_chain, warn
        cfg = SensorFusionConfig.from_section(section)
        self.fusion = SensorFusion(cfg) if (cfg.odometry or cfg.gnss) else None
        self.gravity = (
            GravityLevel(
                GravityConfig(section.gravity_samples, max_spread=section.gravity_max_spread)
            )
            if section.imu_topic
            else None
        )
        self._lock = threading.Lock()  # gravity and the counters
        self.used: Counter = Counter()
        self.rejected: Counter = Counter()  # "<source>_<reason>"
        self._warned: set[str] = set()
        for topic, msg_type, callback in (
            (section.odometry_topic, Odometry, self.on_odometry),
            (section.gnss_topic, NavSatFix, self.on_navsatfix),
            (section.imu_topic, Imu, self.on_imu),
        ):
            if topic:
                node.create_subscription(msg_type, topic, callback, qos.sensor_profile(qos_kind))

    @property
    def graph_sources(self) -> bool:
        """Odometry or GNSS in the pose graph: the map's scale is the graph's."""
        return self.fusion is not None

    # ------------------------------------------------------------ callbacks (executor)
    def on_odometry(self, msg: Odometry) -> None:
        assert self.fusion is not None
        T, var = odometry_pose(msg)
        use_cov = self.section.odometry_use_covariance
        ok = self.fusion.add_odometry(stamp_to_ns(msg.header.stamp), T, var if use_cov else None)
        self._count("odometry", ok, "invalid_pose", "odometry pose not finite or not a rotation")

    def on_navsatfix(self, msg: NavSatFix) -> None:
        assert self.fusion is not None
        ok = self.fusion.add_gnss(gnss_fix(msg))
        self._count("gnss", ok, "unused", "NavSatFix not used (no fix, invalid or too uncertain)")

    def on_imu(self, msg: Imu) -> None:
        assert self.gravity is not None
        R = self._imu_rotation(msg.header.frame_id)
        stamp = stamp_to_ns(msg.header.stamp)
        up = imu_up(msg)
        with self._lock:
            if up is not None:
                ok = self.gravity.set_up(R @ up, stamp)
            else:
                a = msg.linear_acceleration
                before = self.gravity.rejected
                self.gravity.add(R @ np.array([a.x, a.y, a.z], dtype=np.float64), stamp)
                ok = self.gravity.rejected == before
        self._count("imu", ok, "moving_or_invalid", "")

    def _imu_rotation(self, frame: str) -> np.ndarray:
        """base_frame <- IMU frame rotation from /tf_static; the IMU's axes are taken as
        base_frame's (said once) when no chain is known."""
        if frame and frame != self.base_frame:
            T = self._static_chain(frame)
            if T is not None:
                return T[:3, :3]
            self._warn_once(
                "imu_frame",
                f"no /tf_static from {self.base_frame} to the IMU frame {frame!r}: its axes "
                f"are taken as {self.base_frame}'s",
            )
        return np.eye(3)

    # ------------------------------------------------------------ readers
    def gravity_up(self) -> tuple[np.ndarray, int] | None:
        """(up in base axes, stamp) once measured (the mount levels the map with it)."""
        if self.gravity is None:
            return None
        with self._lock:
            if self.gravity.up is None:
                return None
            return self.gravity.up.copy(), self.gravity.stamp_ns

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Messages used and rejected per source (rejected keys: ``<source>_<reason>``)."""
        with self._lock:
            return dict(self.used), dict(self.rejected)

    def reset(self) -> None:
        """A map reset: the levelling is measured again (the engine's reset resets the
        fusion, whose ENU anchor stays)."""
        with self._lock:
            if self.gravity is not None:
                self.gravity.reset()

    def _count(self, source: str, ok: bool, reason: str, text: str) -> None:
        with self._lock:
            if ok:
                self.used[source] += 1
            else:
                self.rejected[f"{source}_{reason}"] += 1
        if not ok and text:
            self._warn_once(source, f"{text} (counted in ~/status)")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(text)
