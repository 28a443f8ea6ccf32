"""Odometry, NavSatFix and Imu on the ROS side (in-process, no DDS): message conversions,
counts, the IMU frame, the map levelled by gravity, enu -> map and the graph's scale."""

from __future__ import annotations

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Imu, NavSatFix, NavSatStatus

from scal3r_ros.mapping.config import SensorSection
from scal3r_ros.mapping.events import PosesUpdate, SensorFusionUpdate
from scal3r_ros.mapping.sensors.gravity import STANDARD_GRAVITY
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.ros.conversions import ns_to_stamp
from scal3r_ros.ros.frames import FrameConverter, camera_mount
from scal3r_ros.ros.mount import CameraMount
from scal3r_ros.ros.outputs.enu import EnuOutputs, enu_from_map
from scal3r_ros.ros.params import NodeConfig
from scal3r_ros.ros.scale import ScaleTracker
from scal3r_ros.ros.sensors import SensorInputs, gnss_fix, imu_up, odometry_pose

pytestmark = pytest.mark.ros


class FakeNode:
    """What SensorInputs and ScaleTracker use of a node."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, tuple] = {}

    def create_subscription(self, msg_type, topic, callback, qos):
        self.subscriptions[topic] = (msg_type, callback)

    def get_logger(self):
        class Log:
            def info(self, text):
                pass

            warning = info

        return Log()


def inputs(
    warnings: list[str] | None = None, chain=None, **topics
) -> tuple[SensorInputs, FakeNode]:
    node = FakeNode()
    warn = (warnings if warnings is not None else []).append
    section = SensorSection(gravity_samples=10, **topics)
    return SensorInputs(node, section, "base_link", chain or (lambda f: None), warn), node


def imu_msg(accel, frame="base_link", stamp_ns=0, orientation=None) -> Imu:
    msg = Imu()
    msg.header.frame_id, msg.header.stamp = frame, ns_to_stamp(stamp_ns)
    a = msg.linear_acceleration
    a.x, a.y, a.z = (float(v) for v in accel)
    if orientation is None:
        msg.orientation_covariance[0] = -1.0
    else:
        o = msg.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in orientation)
    return msg


def fix_msg(lat, lon, alt, status=NavSatStatus.STATUS_FIX, sigma=None) -> NavSatFix:
    msg = NavSatFix(latitude=lat, longitude=lon, altitude=alt)
    msg.status.status = status
    if sigma is not None:
        msg.position_covariance = [sigma**2, 0.0, 0.0, 0.0, sigma**2, 0.0, 0.0, 0.0, sigma**2]
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
    return msg


def test_only_the_configured_topics_are_subscribed_and_the_graph_owns_the_scale():
    none, node = inputs()
    assert node.subscriptions == {} and none.fusion is None and not none.graph_sources
    s, node = inputs(gnss_topic="/fix", imu_topic="/imu")
    assert set(node.subscriptions) == {"/fix", "/imu"} and s.graph_sources
    assert s.fusion.config.gnss and not s.fusion.config.odometry
    assert node.subscriptions["/fix"][0] is NavSatFix and node.subscriptions["/imu"][0] is Imu


def test_message_conversions():
    odom = Odometry()
    odom.pose.pose.position.x = 2.0
    q = Rotation.from_euler("z", 30, degrees=True).as_quat()
    o = odom.pose.pose.orientation
    o.x, o.y, o.z, o.w = q
    T, var = odometry_pose(odom)
    assert np.allclose(T[:3, :3], Rotation.from_quat(q).as_matrix()) and T[0, 3] == 2.0
    assert var is None  # an all-zero covariance means unknown
    odom.pose.covariance[0], odom.pose.covariance[35] = 0.04, 0.01
    assert np.allclose(odometry_pose(odom)[1], [0.04, 0, 0, 0, 0, 0.01])
    fix = gnss_fix(fix_msg(48.1, 11.5, 520.0, sigma=2.0))
    assert (fix.latitude, fix.longitude, fix.altitude, fix.status) == (48.1, 11.5, 520.0, 0)
    assert fix.covariance[0] == 4.0 and fix.covariance_type == 2
    # orientation: up in the IMU's axes; none when the covariance says "no orientation"
    tilt = Rotation.from_euler("x", 10, degrees=True)
    up = imu_up(imu_msg((0, 0, 0), orientation=tilt.as_quat()))
    assert np.allclose(up, tilt.inv().apply([0, 0, 1]))
    assert imu_up(imu_msg((0, 0, 9.8))) is None


def test_fixes_and_odometry_are_counted_used_or_rejected_with_a_warning_once():
    warnings: list[str] = []
    s, node = inputs(warnings, gnss_topic="/fix", odometry_topic="/odom")
    on_fix, on_odom = node.subscriptions["/fix"][1], node.subscriptions["/odom"][1]
    on_fix(fix_msg(48.1, 11.5, 520.0, sigma=2.0))
    on_fix(fix_msg(48.1, 11.5, 520.0, status=NavSatStatus.STATUS_NO_FIX))
    on_fix(fix_msg(float("nan"), 11.5, 520.0))
    on_fix(fix_msg(48.1, 11.5, 520.0, sigma=500.0))  # beyond gnss_max_sigma_m
    bad = Odometry()
    bad.pose.pose.orientation.w = float("nan")
    on_odom(bad)
    good = Odometry()
    good.pose.pose.orientation.w = 1.0
    on_odom(good)
    used, rejected = s.counts()
    assert used == {"gnss": 1, "odometry": 1}
    assert rejected == {"gnss_unused": 3, "odometry_invalid_pose": 1}
    assert s.fusion.gnss.rejected == {"no_fix": 1, "invalid": 1, "covariance": 1}
    assert len(warnings) == 2  # once per source


def test_gravity_from_still_samples_rotated_by_the_imu_mount():
    R_base_imu = Rotation.from_euler("z", 90, degrees=True).as_matrix()  # IMU turned 90 deg
    chain = {"imu_link": np.block([[R_base_imu, np.zeros((3, 1))], [np.zeros((1, 3)), 1]])}
    warnings: list[str] = []
    s, node = inputs(warnings, chain=chain.get, imu_topic="/imu")
    on_imu = node.subscriptions["/imu"][1]
    up_base = Rotation.from_euler("xy", [5, -3], degrees=True).inv().apply([0, 0, 1])
    accel_imu = R_base_imu.T @ (STANDARD_GRAVITY * up_base)
    on_imu(imu_msg(accel_imu * 1.5, "imu_link"))  # moving: rejected
    for k in range(10):
        assert s.gravity_up() is None
        on_imu(imu_msg(accel_imu, "imu_link", stamp_ns=k * 10**7))
    up, stamp = s.gravity_up()
    assert np.allclose(up, up_base, atol=1e-9) and stamp == 5 * 10**7  # middle sample
    assert s.counts() == ({"imu": 10}, {"imu_moving_or_invalid": 1}) and not warnings
    other, node = inputs(warnings, imu_topic="/imu")
    node.subscriptions["/imu"][1](imu_msg((0, 0, 9.8), "unknown_imu"))
    assert len(warnings) == 1 and "unknown_imu" in warnings[0]


def poses_event(c2w: np.ndarray, stamps) -> PosesUpdate:
    n = len(c2w)
    ids = np.arange(n) if not len(stamps) else np.asarray(stamps, np.int64) // 10**8
    return PosesUpdate(0, ids, np.asarray(stamps, np.int64), c2w, camera_ids=("c",) * n)


def tilted_drive(tilt: Rotation, n: int = 6):
    """Base poses in a z-up world: the robot starts tilted by ``tilt`` and drives along its x;
    engine poses = camera poses relative to the first camera (the network's gauge)."""
    T_base_cam = camera_mount()
    bases = []
    for k in range(n):
        T = np.eye(4)
        T[:3, :3] = tilt.as_matrix()
        T[:3, 3] = tilt.apply([1.0 * k, 0.0, 0.0])
        bases.append(T)
    cams = np.array([B @ T_base_cam for B in bases])
    return np.linalg.inv(cams[0]) @ cams, np.array(bases)


@pytest.mark.parametrize("when", ["before_first_image", "later"])
def test_gravity_levels_the_map_z_up(when):
    tilt = Rotation.from_euler("xy", [8, -5], degrees=True)
    c2w, bases = tilted_drive(tilt)
    stamps = np.arange(len(c2w)) * 10**8
    up_base = tilt.inv().apply([0, 0, 1])  # what a still IMU says, in base axes
    measured: list = [None]
    converter = FrameConverter(camera_mount())
    logs: list[str] = []
    mount = CameraMount(NodeConfig(), converter, lambda m: None, logs.append, lambda: measured[0])
    if when == "before_first_image":
        measured[0] = (up_base, -(10**8))
        assert not mount.on_events([poses_event(c2w[:3], stamps[:3])])  # levelled at once
    else:
        assert not mount.on_events([poses_event(c2w[:3], stamps[:3])])  # no gravity yet
        unlevelled = converter.base_poses(c2w)
        assert np.degrees(np.arccos(unlevelled[-1, :3, 2] @ bases[-1, :3, 2])) > 5  # tilted
        # measured while at frame 2 (same attitude here): the published poses turn
        measured[0] = (up_base, int(stamps[2]))
        assert mount.on_events([poses_event(c2w[3:], stamps[3:])])
    T_map_base = converter.base_poses(c2w)
    # the world's up is the map's z: base z in map = its true z in the world
    assert np.allclose(T_map_base[:, :3, 2], bases[:, :3, 2], atol=1e-9)
    true_tilt = np.degrees(np.arccos(tilt.as_matrix()[2, 2]))  # base z against up
    assert mount.tilt_deg == pytest.approx(true_tilt, abs=1e-6)
    assert any("levelled" in line for line in logs)
    mount.reset()
    assert np.allclose(converter.level, np.eye(3)) and mount.tilt_deg is None


def test_enu_to_map_carries_map_points_to_the_graphs_enu_positions():
    rng = np.random.default_rng(0)
    converter = FrameConverter(camera_mount((0.5, 0.0, 1.2), (0.0, 0.1, 0.0)), scale=3.0)
    converter.set_anchor(
        Sim3(1.0, Rotation.random(random_state=1).as_matrix(), rng.normal(size=3)).matrix()
    )
    converter.set_level(Rotation.from_euler("x", 4, degrees=True).as_matrix())
    F = Sim3(3.0, Rotation.random(random_state=2).as_matrix(), rng.normal(size=3) * 100)
    x = rng.normal(size=(20, 3))
    T = enu_from_map(converter, F.matrix())
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
    x_map = converter.points(x).astype(np.float64)
    assert np.allclose(x_map @ T[:3, :3].T + T[:3, 3], F.apply(x), atol=1e-4)
    published = []
    enu = EnuOutputs(converter, "enu", "map", published.append)
    enu.on_events([SensorFusionUpdate(3, scale=3.0)])  # no ENU yet (odometry only)
    assert not published
    enu.on_events([SensorFusionUpdate(3, scale=3.0, enu=F.matrix(), enu_anchor=(48.0, 11.0, 5.0))])
    tf = published[-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("enu", "map")
    assert tf.transform.translation.x == pytest.approx(T[0, 3])


def test_the_graph_scale_replaces_the_scale_source_once_it_has_one():
    tracker = ScaleTracker(FakeNode(), NodeConfig(gnss_topic="/fix"), graph=True)
    assert tracker.active and not tracker.current().estimate.metric
    assert tracker.current().estimate.source == "graph"
    up = tracker.on_events([SensorFusionUpdate(0)])  # no scale yet
    assert up.scale == 1.0 and not up.rescaled
    up = tracker.on_events([SensorFusionUpdate(1, scale=2.5)])
    assert up.scale == 2.5 and up.rescaled and up.estimate.source == "graph"
    assert tracker.on_events([]).scale == 2.5  # a batch without a window keeps it
    assert tracker.reset().scale == 1.0
    # a configured source serves until the graph has a scale (a silent GNSS), then yields
    both = ScaleTracker(FakeNode(), NodeConfig(scale_source="camera_height", gnss_topic="/f"), True)
    assert both.current().estimate.source == "camera_height"
    assert both.on_events([SensorFusionUpdate(0)]).estimate.source == "camera_height"
    up = both.on_events([SensorFusionUpdate(1, scale=4.0)])
    assert up.estimate.source == "graph" and up.scale == 4.0 and up.rescaled
    assert both.on_events([]).estimate.source == "graph"
