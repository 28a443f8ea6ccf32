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
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import rclpy
import yaml
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image

from scal3r_ros.mapping.config import OracleSection
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive, drive_summary
from scal3r_ros.ros.conversions import ns_to_stamp, rgb_to_image
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
    args, ros_args = parser.parse_known_args(argv)
    try:
        drive_args = drive_parameters(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"[scal3r_synthetic_camera] --config: {exc}", file=sys.stderr)
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
    print(
        f"[scal3r_synthetic_camera] the drive of --config {args.config}: "
        f"{drive_summary(drive.config)}",
        flush=True,
    )

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
    deadline = time.monotonic() + args.wait_subscribers
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    t_next = time.monotonic()
    try:
        for i in range(drive.n_frames):
            stamp = ns_to_stamp(drive.stamp_ns(i))
            rgb, _ = drive.render(i)
            if pub_clock is not None:
                pub_clock.publish(Clock(clock=stamp))
            pub_info.publish(camera_info(drive, stamp, args.frame_id))
            pub.publish(rgb_to_image(rgb, stamp, args.frame_id))
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        if args.reliable:  # do not exit before the last frames are delivered
            pub.wait_for_all_acked(Duration(seconds=30))
        print(f"[scal3r_synthetic_camera] published {drive.n_frames} frames", flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
