"""`scal3r_synthetic_camera`: publish the built-in synthetic drive as a camera.

Images carry the drive's own stamps (so an oracle-backend node can look up ground
truth), optionally with a matching /clock for `use_sim_time`. Used by the demo and the
node tests; also handy to try the node without a camera or a bag.

The drive (frames, laps, seed, image size) is defined once, by the node's ``oracle_*``
parameters in a parameter file (``--config``, default the bundled ``synthetic`` that
``scal3r_mapping --config synthetic`` reads; the oracle section's defaults for what the file does
not set): the camera takes its defaults from there, so the two agree unless an option
overrides one side. A node whose oracle is given another drive reports the mismatch
(``mapping.backends.oracle.DriveMismatch``) instead of mapping it.

Beside the images, the camera can publish what a car's other sensors would measure on
the same drive (``mapping.sim.sensors``, the maths the mapping tests use), each at every
image stamp and before its image: ``--odometry`` (nav_msgs/Odometry, the base pose in an
``odom`` frame at the first base pose, through the node's camera mount ``--camera-xyz``/
``--camera-rpy``), ``--gnss`` (sensor_msgs/NavSatFix, the base origin in WGS84 about
``--anchor`` with ``--gnss-sigma`` noise and ``--gnss-jumps`` multipath jumps) and
``--imu`` (sensor_msgs/Imu: the specific force in base axes, first ``--still-s`` seconds of
samples at ``--imu-rate`` Hz while the car waits at the start; orientation unknown unless
``--imu-orientation``). ``--tilt-deg`` puts the drive on a slope: only the sensors' "up"
changes (IMU, ENU), the images stay those of the oracle's drive, so base_link is not level
at the first frame and the node's gravity levelling has work to do. Without these options
the camera publishes exactly what it did before.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import yaml
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, Imu, NavSatFix

from scal3r_ros.mapping.config import OracleSection
from scal3r_ros.mapping.sensors.gnss import GnssFix
from scal3r_ros.mapping.sim import sensors as sim
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive, drive_summary
from scal3r_ros.ros.conversions import ns_to_stamp, rgb_to_image
from scal3r_ros.ros.frames import camera_mount, quaternion_from_matrix
from scal3r_ros.share import config_file

# camera option -> the node parameter that defines the same property of the drive
DRIVE_PARAMETERS = {
    "frames": "oracle_frames",
    "laps": "oracle_laps",
    "seed": "oracle_seed",
    "width": "oracle_width",
    "height": "oracle_height",
}


def drive_parameters(config: str = "synthetic") -> dict[str, Any]:
    """The drive a node started with ``--config <config>`` expects, keyed by camera option:
    the file's ``oracle_*`` parameters (any node section), the oracle section's defaults for the
    rest. Raises FileNotFoundError / ValueError for a missing or unreadable file."""
    defaults = OracleSection()
    values = {opt: getattr(defaults, name) for opt, name in DRIVE_PARAMETERS.items()}
    path = config_file(config)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    by_name = {name: opt for opt, name in DRIVE_PARAMETERS.items()}
    for section in doc.values() if isinstance(doc, dict) else ():
        params = section.get("ros__parameters", {}) if isinstance(section, dict) else {}
        for name, value in params.items():
            if name in by_name:
                values[by_name[name]] = type(values[by_name[name]])(value)
    return values


def camera_info(drive: SyntheticDrive, stamp, frame_id: str) -> CameraInfo:
    cfg = drive.config
    msg = CameraInfo(width=cfg.width, height=cfg.height, distortion_model="plumb_bob")
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    K = drive.K.copy()  # the drive's pixel centres are at +0.5; CameraInfo's at integers
    K[:2, 2] -= 0.5
    msg.k = [float(v) for v in K.ravel()]
    msg.p = [
        float(K[0, 0]),
        0.0,
        float(K[0, 2]),
        0.0,
        0.0,
        float(K[1, 1]),
        float(K[1, 2]),
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
    ]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    return msg


def _set_quaternion(q, R: np.ndarray) -> None:
    q.x, q.y, q.z, q.w = (float(v) for v in quaternion_from_matrix(R))


def odometry_msg(T: np.ndarray, var: np.ndarray | None, stamp, frame: str, child: str) -> Odometry:
    """``T`` (base pose in ``frame``) with a diagonal pose covariance (``var``: six
    variances, x y z roll pitch yaw; None: all zero, "unknown")."""
    msg = Odometry(child_frame_id=child)
    msg.header.stamp, msg.header.frame_id = stamp, frame
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in T[:3, 3])
    _set_quaternion(msg.pose.pose.orientation, T[:3, :3])
    if var is not None:
        cov = np.zeros((6, 6))
        cov[np.diag_indices(6)] = var
        msg.pose.covariance = [float(v) for v in cov.ravel()]
    return msg


def navsat_msg(fix: GnssFix, frame: str) -> NavSatFix:
    msg = NavSatFix(latitude=fix.latitude, longitude=fix.longitude, altitude=fix.altitude)
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(fix.stamp_ns), frame
    msg.status.status = fix.status
    msg.status.service = msg.status.SERVICE_GPS
    msg.position_covariance = [float(v) for v in fix.covariance]
    msg.position_covariance_type = fix.covariance_type
    return msg


def imu_msg(accel: np.ndarray, R_enu_base: np.ndarray | None, stamp, frame: str) -> Imu:
    """Specific force in ``frame``'s axes; the orientation (in ENU) when given, else marked
    unknown (``orientation_covariance[0] = -1``, sensor_msgs/Imu's convention). Angular
    velocity is not simulated (covariance[0] = -1 too)."""
    msg = Imu()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    a = msg.linear_acceleration
    a.x, a.y, a.z = (float(v) for v in accel)
    msg.linear_acceleration_covariance = [1e-4, 0.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0, 1e-4]
    msg.angular_velocity_covariance[0] = -1.0
    if R_enu_base is None:
        msg.orientation_covariance[0] = -1.0
    else:
        _set_quaternion(msg.orientation, R_enu_base)
        msg.orientation_covariance = [1e-4, 0.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0, 1e-4]
    return msg


@dataclass
class SimulatedSensors:
    """The optional sensor topics of one drive: messages for the still period and for
    each image stamp, from ``mapping.sim.sensors``."""

    drive: SyntheticDrive
    args: argparse.Namespace

    def __post_init__(self) -> None:
        a = self.args
        self.mount = camera_mount(a.camera_xyz, a.camera_rpy)
        self.world = sim.SensorWorld(a.tilt_deg, a.heading_deg, tuple(a.anchor))
        self.rng = np.random.default_rng(a.sensor_seed)
        self.odometry = (
            sim.odometry_poses(self.drive, self.mount, a.odometry_noise, a.sensor_seed)
            if a.odometry
            else None
        )
        if self.odometry is not None and a.odometry_noise > 0:
            # the random walk's variance grows with the distance: sum of (noise * step)^2
            steps = np.linalg.norm(np.diff(self.odometry[:, :3, 3], axis=0), axis=1)
            walk = np.r_[0.0, np.cumsum((a.odometry_noise * steps) ** 2)]
            self.odometry_var = np.stack([walk] * 3 + [0.01 * walk] * 3, axis=1) + 1e-6
        else:
            self.odometry_var = None

    def active(self) -> bool:
        return bool(self.args.odometry or self.args.gnss or self.args.imu)

    def still(self) -> list[tuple[int, str, Any]]:
        """(stamp, topic, message) of the IMU samples before the first image."""
        a = self.args
        if not a.imu or a.still_s <= 0:
            return []
        out = []
        for t in sim.still_stamps_ns(self.drive, a.still_s, a.imu_rate):
            accel = sim.imu_accel(
                self.drive, 0, self.world, self.mount, True, a.imu_noise, self.rng
            )
            out.append((int(t), a.imu, self._imu(accel, 0, int(t))))
        return out

    def at_frame(self, i: int) -> list[tuple[str, Any]]:
        """(topic, message) of each sensor at image ``i``'s stamp."""
        a, d = self.args, self.drive
        stamp = ns_to_stamp(d.stamp_ns(i))
        out: list[tuple[str, Any]] = []
        if self.odometry is not None:
            var = None if self.odometry_var is None else self.odometry_var[i]
            msg = odometry_msg(self.odometry[i], var, stamp, a.odometry_frame, a.base_frame)
            out.append((a.odometry, msg))
        if a.gnss:
            fix = sim.gnss_fix(
                d, i, self.world, self.mount, a.gnss_sigma, self.rng, jump_fraction=a.gnss_jumps
            )
            out.append((a.gnss, navsat_msg(fix, a.base_frame)))
        if a.imu:
            accel = sim.imu_accel(d, i, self.world, self.mount, False, a.imu_noise, self.rng)
            out.append((a.imu, self._imu(accel, i, d.stamp_ns(i))))
        return out

    def _imu(self, accel: np.ndarray, i: int, stamp_ns: int) -> Imu:
        a = self.args
        R = (
            sim.base_orientation_enu(self.drive, i, self.world, self.mount)
            if a.imu_orientation
            else None
        )
        return imu_msg(accel, R, ns_to_stamp(stamp_ns), a.base_frame)


def add_sensor_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "other sensors (off unless a topic is given; from the drive's ground truth)"
    )
    g.add_argument("--odometry", metavar="TOPIC", help="publish nav_msgs/Odometry here")
    g.add_argument(
        "--odometry-noise",
        type=float,
        default=0.0,
        help="random-walk error: m per m driven (per axis), 0.1x that in rad",
    )
    g.add_argument("--odometry-frame", default="odom", help="the odometry's header frame")
    g.add_argument("--gnss", metavar="TOPIC", help="publish sensor_msgs/NavSatFix here")
    g.add_argument("--gnss-sigma", type=float, default=1.0, help="fix noise per axis [m]")
    g.add_argument(
        "--gnss-jumps", type=float, default=0.0, help="fraction of fixes 20-40 m off (multipath)"
    )
    g.add_argument(
        "--anchor",
        type=float,
        nargs=3,
        default=list(sim.DEFAULT_ANCHOR),
        metavar=("LAT", "LON", "ALT"),
        help="WGS84 position of the drive's origin [deg deg m]",
    )
    g.add_argument("--heading-deg", type=float, default=0.0, help="drive's x from east, CCW")
    g.add_argument("--imu", metavar="TOPIC", help="publish sensor_msgs/Imu here")
    g.add_argument(
        "--still-s", type=float, default=1.0, help="seconds of IMU samples still before frame 0"
    )
    g.add_argument("--imu-rate", type=float, default=100.0, help="IMU rate while still [Hz]")
    g.add_argument("--imu-noise", type=float, default=0.0, help="accelerometer sigma [m/s^2]")
    g.add_argument("--imu-orientation", action="store_true", help="fill the IMU orientation (ENU)")
    g.add_argument(
        "--tilt-deg",
        type=float,
        default=0.0,
        help="the drive on a slope of this many degrees (sensors only: IMU and GNSS up)",
    )
    g.add_argument(
        "--camera-xyz",
        type=float,
        nargs=3,
        default=[0.0, 0.0, 0.0],
        metavar=("X", "Y", "Z"),
        help="camera body in base_link [m], as the node's camera_xyz",
    )
    g.add_argument(
        "--camera-rpy",
        type=float,
        nargs=3,
        default=[0.0, 0.0, 0.0],
        metavar=("R", "P", "Y"),
        help="camera body roll/pitch/yaw in base_link [rad], as the node's camera_rpy",
    )
    g.add_argument("--base-frame", default="base_link", help="frame of the sensors' messages")
    g.add_argument("--sensor-seed", type=int, default=0, help="seed of the sensors' noise")


def sensor_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the sensor options (None: nothing)."""
    lat, lon, _ = args.anchor
    values = (args.odometry_noise, args.gnss_sigma, args.still_s, args.imu_noise, args.tilt_deg)
    if not np.isfinite([*values, *args.anchor, args.heading_deg, args.imu_rate]).all():
        return "sensor options must be finite numbers"
    if args.odometry_noise < 0 or args.gnss_sigma < 0 or args.imu_noise < 0:
        return "--odometry-noise, --gnss-sigma and --imu-noise must be >= 0"
    if not 0.0 <= args.gnss_jumps <= 1.0:
        return f"--gnss-jumps is a fraction in [0, 1], got {args.gnss_jumps}"
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        return f"--anchor latitude/longitude out of range: {lat}, {lon}"
    if args.still_s < 0 or args.imu_rate <= 0:
        return "--still-s must be >= 0 and --imu-rate > 0"
    if abs(args.tilt_deg) >= 90:
        return f"--tilt-deg must be within (-90, 90), got {args.tilt_deg}"
    topics = [t for t in (args.topic, args.odometry, args.gnss, args.imu) if t]
    if len(set(topics)) != len(topics):
        return f"the image and sensor topics must differ, got {topics}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default="synthetic",
        metavar="NAME|PATH",
        help="the node's parameter file whose oracle_* parameters define the "
        "drive (default: synthetic, as `scal3r_mapping --config synthetic`); "
        "the options below override it",
    )
    parser.add_argument("--frames", type=int, help="frames of the drive (oracle_frames)")
    parser.add_argument("--width", type=int, help="image width (oracle_width)")
    parser.add_argument("--height", type=int, help="image height (oracle_height)")
    parser.add_argument("--seed", type=int, help="scene seed (oracle_seed)")
    parser.add_argument(
        "--laps",
        type=float,
        help="laps of the ~170 m loop driven over all frames, > 1: revisits (oracle_laps)",
    )
    parser.add_argument(
        "--start-frame",
        type=int,
        default=0,
        help="first frame of the drive to publish (e.g. to come back to a saved map from "
        "another point of the loop); stamps stay the drive's",
    )
    parser.add_argument(
        "--stop-frame",
        type=int,
        default=None,
        help="publish frames before this one only (default: to the end of the drive)",
    )
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (wall)")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--frame-id", default="camera_optical")
    parser.add_argument("--clock", action="store_true", help="also publish /clock")
    parser.add_argument(
        "--reliable",
        action="store_true",
        help="reliable QoS (default: best effort, like camera drivers)",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=10.0,
        help="seconds to wait for a subscriber before streaming",
    )
    add_sensor_options(parser)
    args, ros_args = parser.parse_known_args(argv)
    try:
        drive_args = drive_parameters(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"[scal3r_synthetic_camera] --config: {exc}", file=sys.stderr)
        return 2
    problem = sensor_problem(args)
    if problem:
        print(f"[scal3r_synthetic_camera] {problem}", file=sys.stderr)
        return 2
    drive_args.update({k: v for k, v in vars(args).items() if k in drive_args and v is not None})
    drive = SyntheticDrive(
        SyntheticConfig(
            n_frames=drive_args["frames"],
            width=drive_args["width"],
            height=drive_args["height"],
            seed=drive_args["seed"],
            extra_laps=drive_args["laps"] - 1.0,
        )
    )
    stop = drive.n_frames if args.stop_frame is None else args.stop_frame
    if not 0 <= args.start_frame < stop <= drive.n_frames:
        print(
            f"[scal3r_synthetic_camera] need 0 <= --start-frame < --stop-frame <= "
            f"{drive.n_frames} (the drive's frames), got {args.start_frame} and {stop}",
            file=sys.stderr,
        )
        return 2
    print(
        f"[scal3r_synthetic_camera] the drive of --config {args.config}: "
        f"{drive_summary(drive.config)}",
        flush=True,
    )

    sensors = SimulatedSensors(drive, args)
    rclpy.init(args=ros_args)
    node = rclpy.create_node("scal3r_synthetic_camera")
    # reliable: a deep history, so a busy subscriber gets every frame rather than the newest
    qos = QoSProfile(
        depth=200 if args.reliable else 10,
        reliability=ReliabilityPolicy.RELIABLE if args.reliable else ReliabilityPolicy.BEST_EFFORT,
    )
    pub = node.create_publisher(Image, args.topic, qos)
    info_topic = args.topic.rsplit("/", 1)[0] + "/camera_info"
    pub_info = node.create_publisher(CameraInfo, info_topic, qos)
    pub_clock = node.create_publisher(Clock, "/clock", 10) if args.clock else None
    sensor_pubs = sensor_publishers(node, args, qos)
    waited = [pub, *sensor_pubs.values()]
    deadline = time.monotonic() + args.wait_subscribers
    while any(p.get_subscription_count() == 0 for p in waited) and time.monotonic() < deadline:
        time.sleep(0.05)
    # wall time follows the stamps: --rate images a second (the still IMU samples first)
    wall_per_ns = 1e-9 * drive.config.fps / args.rate if args.rate > 0 else 0.0
    t0_ns = drive.stamp_ns(args.start_frame)
    still = sensors.still() if args.start_frame == 0 else []  # (the robot is moving)
    t_start = time.monotonic() + (t0_ns - still[0][0]) * wall_per_ns if still else time.monotonic()

    def wait_for(stamp_ns: int) -> None:
        time.sleep(max(0.0, t_start + (stamp_ns - t0_ns) * wall_per_ns - time.monotonic()))

    try:
        for t, topic, msg in still:
            wait_for(t)
            if pub_clock is not None:
                pub_clock.publish(Clock(clock=ns_to_stamp(t)))
            sensor_pubs[topic].publish(msg)
        for i in range(args.start_frame, stop):
            wait_for(drive.stamp_ns(i))
            stamp = ns_to_stamp(drive.stamp_ns(i))
            rgb, _ = drive.render(i)
            if pub_clock is not None:
                pub_clock.publish(Clock(clock=stamp))
            for topic, msg in sensors.at_frame(i):  # before the image: there when it is mapped
                sensor_pubs[topic].publish(msg)
            pub_info.publish(camera_info(drive, stamp, args.frame_id))
            pub.publish(rgb_to_image(rgb, stamp, args.frame_id))
        if args.reliable:  # do not exit before the last frames are delivered
            for p in waited:
                p.wait_for_all_acked(Duration(seconds=30))
        print(f"[scal3r_synthetic_camera] published {stop - args.start_frame} frames", flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def sensor_publishers(node: Node, args: argparse.Namespace, qos: QoSProfile) -> dict[str, Any]:
    """Topic -> publisher of each requested sensor (the images' QoS; the IMU's history
    deep enough for its still samples)."""
    pubs: dict[str, Any] = {}
    still = int(args.still_s * args.imu_rate) + 10
    for topic, msg_type in ((args.odometry, Odometry), (args.gnss, NavSatFix), (args.imu, Imu)):
        if topic:
            depth = max(qos.depth, still if msg_type is Imu else 0)
            profile = QoSProfile(depth=depth, reliability=qos.reliability)
            pubs[topic] = node.create_publisher(msg_type, topic, profile)
    return pubs


if __name__ == "__main__":
    sys.exit(main())
