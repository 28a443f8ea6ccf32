"""The message stage: what the node publishes per window, built and published with the
node's own output classes (`scal3r_ros.ros.outputs`, `CameraMount`), no subscribers.

Without rclpy (or with ``--no-ros``) this stage is not measured: its cells read
``NO_ROS_CELL`` and the window figures exclude it.
"""

from __future__ import annotations

import importlib
import time

# what MessageBuilder needs from ROS: without any of them the message stage is not measured
ROS_MODULES = (
    "rclpy",
    "builtin_interfaces.msg",
    "geometry_msgs.msg",
    "nav_msgs.msg",
    "rcl_interfaces.msg",
    "sensor_msgs.msg",
    "tf2_msgs.msg",
)
NO_ROS_CELL = "n/a (no rclpy)"


def ros_missing() -> str | None:
    """Why the message stage cannot run here: the first of ``ROS_MODULES`` that does not
    import (None: all do). Only these are probed, so an import error anywhere else (our
    own ``scal3r_ros.ros`` modules included) still raises."""
    for name in ROS_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} cannot be imported ({type(exc).__name__}: {exc})"
    return None


class MessageBuilder:
    """Builds and publishes what the node publishes per window, with the node's own pieces
    and defaults: the map anchor and camera mount (`CameraMount`), /tf, odometry and
    ~/path (`PoseOutputs`), the window's ~/cloud (`CloudOutputs`; ~/map, throttled to
    map_publish_period by the node, is left out)."""

    def __init__(self) -> None:
        import rclpy
        from nav_msgs.msg import Odometry
        from nav_msgs.msg import Path as PathMsg
        from sensor_msgs.msg import PointCloud2
        from tf2_msgs.msg import TFMessage

        from scal3r_ros.ros.frames import FrameConverter, camera_mount
        from scal3r_ros.ros.mount import CameraMount
        from scal3r_ros.ros.outputs.cloud import CloudOutputs
        from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs
        from scal3r_ros.ros.params import NodeConfig

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("scal3r_bench", context=self.context)

        def publisher(msg_type, topic: str, depth: int):
            return self.node.create_publisher(msg_type, f"/scal3r_bench/{topic}", depth).publish

        cfg = NodeConfig()
        converter = FrameConverter(camera_mount(cfg.camera_xyz, cfg.camera_rpy))
        self.mount = CameraMount(
            cfg, converter, publisher(TFMessage, "tf_static", 1), lambda text: None
        )
        self.outputs = [  # the pose outputs first (see `on_events`)
            PoseOutputs(
                converter,
                PoseFrames(cfg.map_frame, cfg.odom_frame, cfg.base_frame),
                publisher(TFMessage, "tf", 10),
                publisher(Odometry, "odometry", 10),
                publisher(PathMsg, "path", 1),
                path_period=cfg.path_publish_period,
                path_max_poses=cfg.path_max_poses,
            ),
            CloudOutputs(converter, cfg.map_frame, publisher(PointCloud2, "cloud", 10)),
        ]
        self.reset()

    def reset(self) -> None:
        self.mount.reset()
        for out in self.outputs:
            out.reset()

    def close(self) -> None:
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)

    def on_events(self, events: list) -> float:
        """Publish ``events``; returns when the pose messages (/tf, odometry, path) were
        out: a pose's latency ends there, before the window's cloud is built."""
        self.mount.on_events(events)
        poses_out = time.perf_counter()
        for out in self.outputs:
            out.on_events(events)
            if out is self.outputs[0]:
                poses_out = time.perf_counter()
        return poses_out
