"""Messages cross a process boundary over DDS on localhost, intact.

A publisher runs in its own interpreter (real Fast DDS, shared memory + loopback UDP);
this process subscribes and checks every field and byte.
"""

import pathlib
import signal
import subprocess
import sys
import time

import dds_payloads as payloads
import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from scal3r_ros_msgs.msg import MappingStatus
from sensor_msgs.msg import Image, PointCloud2

from scal3r_ros.ros.conversions import cloud_to_array, image_to_rgb, unpack_rgb

pytestmark = pytest.mark.ros
HERE = pathlib.Path(__file__).parent
SEQ = 7


@pytest.fixture(scope="module")
def received():
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "dds_publisher.py"), str(SEQ)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("dds_test_subscriber", context=context)
    got: dict[str, object] = {}
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    for name, typ in (("status", MappingStatus), ("image", Image), ("cloud", PointCloud2)):
        node.create_subscription(
            typ, f"/scal3r_test/{name}", lambda m, n=name: got.setdefault(n, (m, time.time())), qos
        )
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.time() + 60
    try:
        while len(got) < 3 and time.time() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert len(got) == 3, f"received only {sorted(got)}; publisher output:\n{out}"
    return got


def test_status_message_roundtrip(received):
    msg, _ = received["status"]
    for field, value in payloads.status_fields(SEQ).items():
        got = getattr(msg, field)
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6), field
        else:
            assert got == value, field
    assert msg.header.frame_id == "map"


def test_image_1242x375_rgb8_intact(received):
    msg, _ = received["image"]
    assert (msg.width, msg.height, msg.encoding) == (payloads.IMAGE_W, payloads.IMAGE_H, "rgb8")
    assert msg.header.frame_id == "camera_optical"
    np.testing.assert_array_equal(image_to_rgb(msg), payloads.image(SEQ))


def test_cloud_200k_points_intact(received):
    msg, _ = received["cloud"]
    xyz, rgb, conf = payloads.cloud(SEQ)
    arr = cloud_to_array(msg)
    assert len(arr) == payloads.CLOUD_POINTS
    np.testing.assert_array_equal(np.stack([arr["x"], arr["y"], arr["z"]], 1), xyz)
    np.testing.assert_array_equal(unpack_rgb(arr["rgb"]), rgb)
    np.testing.assert_array_equal(arr["confidence"], conf)
