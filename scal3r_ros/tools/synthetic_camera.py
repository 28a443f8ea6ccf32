"""`scal3r_synthetic_camera`: publish the built-in synthetic drive as a camera.

Images carry the drive's own stamps (so an oracle-backend node can look up ground
truth), optionally with a matching /clock for `use_sim_time`. Used by the demo and the
node tests; also handy to try the node without a camera or a bag.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image

from scal3r_ros.mapping.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.ros.conversions import ns_to_stamp, rgb_to_image


def camera_info(drive: SyntheticDrive, stamp, frame_id: str) -> CameraInfo:
    cfg = drive.config
    msg = CameraInfo(width=cfg.width, height=cfg.height, distortion_model="plumb_bob")
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    K = drive.K
    msg.k = [float(v) for v in K.ravel()]
    msg.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0,
             0.0, 0.0, 1.0, 0.0]  # fmt: skip
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    return msg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--laps",
        type=float,
        default=1.15,
        help="laps of the ~170 m loop driven over all frames (> 1: revisits)",
    )
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (wall)")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--frame-id", default="camera_optical")
    parser.add_argument("--clock", action="store_true", help="also publish /clock")
    parser.add_argument("--reliable", action="store_true", help="reliable QoS (default: "
                        "best effort, like camera drivers)")  # fmt: skip
    parser.add_argument("--wait-subscribers", type=float, default=10.0,
                        help="seconds to wait for a subscriber before streaming")  # fmt: skip
    args, ros_args = parser.parse_known_args(argv)

    rclpy.init(args=ros_args)
    node = rclpy.create_node("scal3r_synthetic_camera")
    # reliable: a deep history, so a busy subscriber gets every frame rather than the newest
    qos = QoSProfile(depth=200 if args.reliable else 10,
                     reliability=ReliabilityPolicy.RELIABLE if args.reliable
                     else ReliabilityPolicy.BEST_EFFORT)  # fmt: skip
    pub = node.create_publisher(Image, args.topic, qos)
    info_topic = args.topic.rsplit("/", 1)[0] + "/camera_info"
    pub_info = node.create_publisher(CameraInfo, info_topic, qos)
    pub_clock = node.create_publisher(Clock, "/clock", 10) if args.clock else None
    drive = SyntheticDrive(SyntheticConfig(n_frames=args.frames, width=args.width,
                                           height=args.height, seed=args.seed,
                                           extra_laps=args.laps - 1.0))  # fmt: skip
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
