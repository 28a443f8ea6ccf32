"""The node's periodic progress line in its log: which topics it waits on before the first
frame, then frames in/processed/dropped, windows, map points, fps and latency; off at 0."""

from __future__ import annotations

import re

import pytest
from builtin_interfaces.msg import Time
from helpers import make_drive
from node_harness import NODE, Recorder, oracle_node_args, start, stop
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from scal3r_ros_msgs.msg import MappingStatus
from sensor_msgs.msg import Image

from scal3r_ros.ros.conversions import rgb_to_image
from scal3r_ros.ros.outputs.status import progress_line

pytestmark = pytest.mark.ros
N = 24
PROGRESS = re.compile(
    r"(buffering|mapping): frames (\d+) in, (\d+) processed, (\d+) dropped "
    r"\(queue \d+/\d+\); (\d+) windows; (\d+) map points; [\d.]+ fps; latency "
)


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def test_progress_line_names_every_number():
    msg = MappingStatus(
        frames_received=120,
        frames_processed=104,
        frames_dropped=2,
        chunks_processed=6,
        queue_length=3,
        queue_capacity=64,
        map_points=832164,
        fps=9.84,
        latency_ms=1234.0,
        loop_closures=1,
        state_text="mapping",
    )
    line = progress_line(msg)
    assert line == (
        "mapping: frames 120 in, 104 processed, 2 dropped (queue 3/64); "
        "6 windows; 832164 map points; 9.8 fps; latency 1.23 s, 1 loop closure"
    )
    assert PROGRESS.match(line)
    msg.latency_ms = 1.7e12  # image stamps of another clock (a bag without use_sim_time)
    assert progress_line(msg).endswith(
        "latency unknown (image stamps are not on this node's clock: use_sim_time?), 1 loop closure"
    )


def test_node_logs_progress_while_mapping_and_not_when_off(tmp_path):
    log = tmp_path / "node.log"
    rec = Recorder("progress_tester")
    node = start(
        oracle_node_args(
            tmp_path / "maps",
            chunk_size=8,
            overlap=4,
            status_period=0.1,
            progress_log_period=0.3,
            map_publish_period=0.2,
            oracle_frames=N,
            save_on_shutdown=False,
        ),
        log,
    )
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    pub = rec.node.create_publisher(Image, "/camera/image_raw", qos)
    drive = make_drive(n_frames=N)

    def send(frames) -> None:
        for i in frames:
            pub.publish(
                rgb_to_image(drive.render(i)[0], _stamp(drive.stamp_ns(i)), "camera_optical")
            )
            rec.spin_until(lambda: False, 0.02)

    def lines() -> list[re.Match]:
        return [m for m in map(PROGRESS.search, log.read_text().splitlines()) if m]

    try:
        # before the first frame: says which topic it is waiting on
        assert rec.spin_until(
            lambda: "waiting for images on /camera/image_raw" in log.read_text(), 60, [node]
        ), log.read_text()
        assert rec.spin_until(lambda: pub.get_subscription_count() > 0, 60, [node])
        send(range(N // 2))
        # a progress line with the frames and windows of the status
        assert rec.spin_until(
            lambda: any(int(m[3]) > 0 and int(m[5]) > 0 for m in lines()), 120, [node]
        ), log.read_text()
        first = lines()[-1]
        assert int(first[2]) <= N // 2 and int(first[4]) == 0  # in; nothing dropped

        # 0: off (a dynamic parameter)
        off = Parameter(
            name="progress_log_period",
            value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.0),
        )
        result = rec.call(
            SetParameters, f"{NODE}/set_parameters", SetParameters.Request(parameters=[off])
        )
        assert result.results[0].successful
        send(range(N // 2, N))

        def all_processed() -> bool:
            st = rec.last(f"{NODE}/status")
            return st is not None and st.frames_processed >= N - 4 and st.chunks_processed >= 5

        assert rec.spin_until(all_processed, 120, [node]), log.read_text()
        # ten more status ticks (1 s at 0.1 s): more than one progress period had it been on
        ticks = len(rec.msgs[f"{NODE}/status"])
        assert rec.spin_until(lambda: len(rec.msgs[f"{NODE}/status"]) >= ticks + 10, 60, [node])
        assert stop(node) == 0
        # nothing after it was set to 0: no line counts a frame of the second half
        assert all(int(m[2]) <= N // 2 for m in lines()), log.read_text()
    finally:
        stop(node)
        rec.close()
