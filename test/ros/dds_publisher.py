"""Publisher process for test_dds_crossprocess.py: repeats one payload set until killed."""

import sys
import time

import dds_payloads as payloads
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from scal3r_ros_msgs.msg import MappingStatus
from sensor_msgs.msg import Image, PointCloud2

from scal3r_ros.ros.conversions import points_to_cloud, rgb_to_image


def main() -> None:
    seq = int(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node("dds_test_publisher")
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {
        "status": node.create_publisher(MappingStatus, "/scal3r_test/status", qos),
        "image": node.create_publisher(Image, "/scal3r_test/image", qos),
        "cloud": node.create_publisher(PointCloud2, "/scal3r_test/cloud", qos),
    }
    status = MappingStatus(**payloads.status_fields(seq))
    status.header.frame_id = "map"
    image = rgb_to_image(payloads.image(seq), frame_id="camera_optical")
    cloud = points_to_cloud(*payloads.cloud(seq), frame_id="map")
    print("publisher ready", flush=True)
    try:
        while rclpy.ok():
            now = node.get_clock().now().to_msg()
            for msg in (status, image, cloud):
                msg.header.stamp = now
            for name, msg in (("status", status), ("image", image), ("cloud", cloud)):
                pubs[name].publish(msg)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
