"""Bad input and failures: the node stays up, counts and reports; bad starts exit non-zero."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from helpers import make_drive
from node_harness import NODE, Recorder, node_args, oracle_node_args, start, stop
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from scal3r_ros.ros.conversions import rgb_to_image

pytestmark = pytest.mark.ros


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _diag_values(rec: Recorder) -> dict[str, str]:
    msg = rec.last("/diagnostics")
    return {} if msg is None else {kv.key: kv.value for kv in msg.status[0].values}


def _camera_publishers(rec: Recorder):
    """Reliable publishers on the node's raw, compressed and camera-info topics."""
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    return (
        rec.node.create_publisher(Image, "/camera/image_raw", qos),
        rec.node.create_publisher(CompressedImage, "/camera/compressed", qos),
        rec.node.create_publisher(CameraInfo, "/camera/camera_info", qos),
    )


def _start_small_oracle(tmp_path, **params):
    """An oracle node on a 40-frame drive, 8/4 windows, status every 0.2 s, reliable input."""
    args = oracle_node_args(
        tmp_path / "maps", chunk_size=8, overlap=4, status_period=0.2, oracle_frames=40, **params
    )
    return start(args, tmp_path / "node.log")


def test_bad_input_is_counted_and_the_node_keeps_mapping(tmp_path):
    rec = Recorder("bad_input_tester")
    node = _start_small_oracle(
        tmp_path,
        compressed_topics=["/camera/compressed"],
        camera_info_topics=["/camera/camera_info"],
    )
    pub, pub_c, pub_info = _camera_publishers(rec)
    drive = make_drive(n_frames=40)
    try:
        assert rec.spin_until(
            lambda: pub.get_subscription_count() > 0 and pub_c.get_subscription_count() > 0,
            60,
            [node],
        )

        def good(i: int) -> Image:
            return rgb_to_image(drive.render(i)[0], _stamp(drive.stamp_ns(i)), "camera_optical")

        def send(msg) -> None:
            (pub_c if isinstance(msg, CompressedImage) else pub).publish(msg)
            rec.spin_until(lambda: False, 0.03)

        for i in range(6):
            send(good(i))
        info = CameraInfo(width=160, height=48)
        info.header.frame_id = "camera_optical"
        info.k = [float("nan")] * 9
        pub_info.publish(info)  # NaN intrinsics: ignored, counted
        bad = good(6)
        bad.encoding = "yuv422"
        send(bad)  # unsupported encoding
        bad = good(6)
        bad.step = 10
        send(bad)  # step/size mismatch
        bad = good(6)
        bad.data = bytes(100)
        send(bad)  # truncated data
        odd = rgb_to_image(
            np.zeros((30, 50, 3), np.uint8), _stamp(drive.stamp_ns(6)), "camera_optical"
        )
        send(odd)  # size changes mid-stream
        corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg")
        corrupt.header.stamp, corrupt.header.frame_id = _stamp(drive.stamp_ns(6)), "camera_optical"
        send(corrupt)
        send(good(5))  # duplicate stamp
        for i in range(6, 20):
            send(good(i))
        send(good(2))  # stamps jump back (bag loop): reset after 3 frames in a row (2, 3, 4)
        for i in range(3, 14):
            send(good(i))

        def reported() -> bool:
            v = _diag_values(rec)
            st = rec.last(f"{NODE}/status")
            return (
                v.get("time_jump_resets") == "1"
                and st is not None
                and st.chunks_processed >= 6
                and rec.last(f"{NODE}/status").queue_length == 0
            )

        assert rec.spin_until(reported, 60, [node]), _diag_values(rec)
        v = _diag_values(rec)
        assert v["dropped_bad_image"] == "4"  # encoding, step, truncated, corrupt jpeg
        assert v["dropped_size_changed"] == "1" and v["dropped_duplicate_stamp"] == "1"
        assert v["bad_camera_info"] == "1" and "dropped_bad_camera_info" not in v
        # a CameraInfo or a map reset is not a frame: received = the 38 images sent
        st = rec.last(f"{NODE}/status")
        assert st.frames_received == 38
        assert st.frames_dropped == 4 + 1 + 1  # bad_image, size_changed, duplicate_stamp
        diag = rec.last("/diagnostics").status[0]
        assert diag.level == diag.WARN and "bad_image 4" in diag.message
        assert node.poll() is None
        assert stop(node) == 0
        saved = list((tmp_path / "maps").glob("map_*/trajectory_tum.txt"))
        assert len(saved) == 1  # saved on SIGINT: the frames after the reset (2..13)
        assert np.loadtxt(saved[0]).shape == (12, 8)
    finally:
        stop(node)
        rec.close()


@pytest.mark.parametrize("content", [None, b"definitely not a checkpoint", b"PK\x03\x04trunc"])
def test_missing_or_corrupt_checkpoint_exits_nonzero_with_a_clear_message(tmp_path, content):
    ckpt = tmp_path / "scal3r.pt"
    if content is not None:
        ckpt.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", *node_args(tmp_path, backend="scal3r", checkpoint=str(ckpt))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot start" in proc.stderr and str(ckpt) in proc.stderr
    if content is None:
        assert "hf download xbillowy/Scal3R" in proc.stderr


def test_invalid_parameters_exit_nonzero(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", *node_args(tmp_path, backend="oracle", chunk_size=8, overlap=8)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "chunk_size > overlap" in proc.stderr


@pytest.mark.slow
def test_tiny_network_node_with_queue_overflow(tmp_path):
    """The real network path (tiny random weights) in the node; a burst overflows the queue."""
    rec = Recorder("tiny_tester")
    node = start(
        node_args(
            tmp_path / "maps",
            backend="tiny",
            chunk_size=4,
            overlap=2,
            queue_size=4,
            input_qos="reliable",
            input_qos_depth=200,
            status_period=0.2,
            loop_closure=False,
        ),
        tmp_path / "node.log",
    )
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    pub = rec.node.create_publisher(Image, "/camera/image_raw", qos)
    drive = make_drive(n_frames=30)
    try:
        assert rec.spin_until(lambda: pub.get_subscription_count() > 0, 60, [node])
        for i in range(30):  # a burst far faster than a CPU network chunk
            pub.publish(
                rgb_to_image(drive.render(i)[0], _stamp(drive.stamp_ns(i)), "camera_optical")
            )
            rec.spin_until(lambda: False, 0.01)

        def settled() -> bool:
            st = rec.last(f"{NODE}/status")
            return (
                st is not None
                and st.frames_received == 30
                and (st.frames_processed + st.frames_dropped == 30)
                and st.chunks_processed >= 2
            )

        assert rec.spin_until(settled, 180, [node]), (tmp_path / "node.log").read_text()
        st = rec.last(f"{NODE}/status")
        assert st.frames_dropped > 0 and st.queue_length == 0
        assert st.backend == "tiny" and len(rec.msgs["/tf"]) > 0
        assert _diag_values(rec)["dropped_queue_full"] == str(st.frames_dropped)
        assert stop(node) == 0
    finally:
        stop(node)
        rec.close()


def test_config_option_loads_a_bundled_parameter_file(tmp_path):
    # synthetic.yaml sets chunk_size 16 (default 60); an overlap of 16 must then be refused
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scal3r_ros.ros.node",
            "--config",
            "synthetic",
            "--ros-args",
            "-p",
            "overlap:=16",
            "-p",
            f"output_dir:={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "chunk_size=16, overlap=16" in proc.stderr, proc.stderr


def _png_bomb() -> bytes:
    """12000x12000 1-bit PNG: 17.5 kB, 1.5 GB once decoded (issue 16, item 7)."""
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


def test_hostile_input_costs_one_frame_each_and_the_map_survives(tmp_path):
    """Issue 16, items 5-10 across processes: implausible first frames, a PNG bomb, single
    bad stamps, a second frame_id of another size on the topic, invalid CameraInfo and a
    NaN run-time parameter are each refused and counted; the map is never reset, every
    window succeeds (oracle backend) and every good frame is in the saved trajectory."""
    rec = Recorder("hostile_input_tester")
    node = _start_small_oracle(
        tmp_path,
        on_time_jump="reset",
        compressed_topics=["/camera/compressed"],
        camera_info_topics=["/camera/camera_info"],
    )
    pub, pub_c, pub_info = _camera_publishers(rec)
    drive = make_drive(n_frames=40)
    cam = "camera_optical"
    try:
        assert rec.spin_until(
            lambda: (
                pub.get_subscription_count() > 0
                and pub_c.get_subscription_count() > 0
                and pub_info.get_subscription_count() > 0
            ),
            60,
            [node],
        )

        def send(msg, publisher=pub) -> None:
            publisher.publish(msg)
            rec.spin_until(lambda: False, 0.03)

        def good(i: int) -> Image:
            return rgb_to_image(drive.render(i)[0], _stamp(drive.stamp_ns(i)), cam)

        def restamped(i: int, sec: int, nanosec: int) -> Image:
            msg = good(i)
            msg.header.stamp = Time(sec=sec, nanosec=nanosec)
            return msg

        # implausible first frames must not fix the stream's size (item 6)
        send(rgb_to_image(np.zeros((1, 1, 3), np.uint8), _stamp(drive.stamp_ns(0)), cam))
        send(rgb_to_image(np.zeros((60, 1, 3), np.uint8), _stamp(drive.stamp_ns(0)), cam))
        bomb = CompressedImage(format="png", data=_png_bomb())  # item 7
        bomb.header.stamp, bomb.header.frame_id = _stamp(drive.stamp_ns(0)), cam
        send(bomb, pub_c)
        for i in range(10):
            send(good(i))
        # single bad stamps (item 8): 0.05 s older, zero, negative, nanosec overflow, future
        t9 = drive.stamp_ns(9) - 50_000_000
        send(restamped(9, t9 // 1_000_000_000, t9 % 1_000_000_000))
        send(restamped(9, 0, 0))
        send(restamped(9, -1, 0))
        send(restamped(9, 1, 2**32 - 1))
        send(restamped(9, 2**31 - 1, 0))
        for i in range(10, 20):
            send(good(i))
        # a second frame_id of another size on the same topic (item 9)
        for i in range(20, 30):
            send(good(i))
            other = rgb_to_image(
                np.zeros((48, 64, 3), np.uint8), _stamp(drive.stamp_ns(i)), "other_camera"
            )
            send(other)
        # invalid CameraInfo (item 10)
        for k in (
            [1e-300, 0.0, 80.0, 0.0, 1e-300, 24.0, 0.0, 0.0, 1.0],
            [100.0, 0.0, 80.0, 0.0, 100.0, 24.0, 0.0, 0.0, 0.0],
        ):
            info = CameraInfo(width=160, height=48, k=k)
            info.header.frame_id = cam
            send(info, pub_info)
        # NaN at run time (item 5): refused, the old value stays
        nan = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float("nan"))
        req = SetParameters.Request(parameters=[Parameter(name="map_publish_period", value=nan)])
        res = rec.call(SetParameters, f"{NODE}/set_parameters", req)
        assert not res.results[0].successful
        got = rec.call(
            GetParameters,
            f"{NODE}/get_parameters",
            GetParameters.Request(names=["map_publish_period"]),
        )
        assert got.values[0].double_value == 2.0

        def settled() -> bool:
            v, st = _diag_values(rec), rec.last(f"{NODE}/status")
            return (
                st is not None
                and st.frames_processed == 30
                and st.queue_length == 0
                and v.get("bad_camera_info") == "2"
                and v.get("dropped_size_changed") == "10"
            )

        assert rec.spin_until(settled, 90, [node]), (
            _diag_values(rec),
            (tmp_path / "node.log").read_text(),
        )
        v = _diag_values(rec)
        assert v["dropped_image_size"] == "3"
        assert v["dropped_invalid_stamp"] == "3" and v["dropped_future_stamp"] == "1"
        assert v["dropped_stamp_outlier"] == "1" and "time_jump_resets" not in v
        st = rec.last(f"{NODE}/status")
        assert st.last_error == "" and st.chunks_processed >= 6
        assert node.poll() is None
        assert stop(node) == 0
        saved = list((tmp_path / "maps").glob("map_*/trajectory_tum.txt"))
        assert len(saved) == 1
        stamps = np.loadtxt(saved[0])[:, 0]
        expected = [drive.stamp_ns(i) / 1e9 for i in range(30)]
        np.testing.assert_allclose(stamps, expected, atol=1e-6)  # never reset: all 30
    finally:
        stop(node)
        rec.close()


def test_a_clock_jump_back_resets_at_the_first_older_frame(tmp_path):
    """With use_sim_time a bag's /clock going back is evidence of a real time jump by
    itself: the first older frame resets (without it one older frame is an outlier)."""
    from rosgraph_msgs.msg import Clock

    rec = Recorder("clock_jump_tester")
    node = _start_small_oracle(
        tmp_path,
        on_time_jump="reset",
        use_sim_time=True,
    )
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    pub = rec.node.create_publisher(Image, "/camera/image_raw", qos)
    pub_clock = rec.node.create_publisher(Clock, "/clock", qos)
    drive = make_drive(n_frames=40)
    try:
        assert rec.spin_until(
            lambda: pub.get_subscription_count() > 0 and pub_clock.get_subscription_count() > 0,
            60,
            [node],
        )

        clock = [0]

        def tick(ns: int | None = None, step: int = 50_000_000) -> None:
            """Publish /clock (forward by ``step`` if no time is given): the node's timers,
            status included, run on this clock."""
            clock[0] = clock[0] + step if ns is None else ns
            pub_clock.publish(Clock(clock=_stamp(clock[0])))

        def send(i: int) -> None:
            tick(drive.stamp_ns(i))
            pub.publish(
                rgb_to_image(drive.render(i)[0], _stamp(drive.stamp_ns(i)), "camera_optical")
            )
            rec.spin_until(lambda: False, 0.03)

        def node_clock_is(lo: int, hi: int, step: int = 50_000_000) -> bool:
            """Tick the clock on; True once the node's clock (its /diagnostics stamp) is
            in [lo, hi): the node has seen the /clock published before."""
            tick(step=step)
            diag = rec.last("/diagnostics")
            return diag is not None and lo <= _stamp_ns(diag) < hi

        for i in range(12):
            send(i)
        end = drive.stamp_ns(12)
        assert rec.spin_until(lambda: node_clock_is(end, 2 * end), 60, [node])
        tick(drive.stamp_ns(0))  # the bag loops: /clock goes back ...
        # small steps and a wide window: a loaded node may take many ticks to publish
        # (its status timer runs every 0.2 s of this clock, i.e. every 20 ticks)
        assert rec.spin_until(lambda: node_clock_is(0, end, 10_000_000), 60, [node])
        pub.publish(
            rgb_to_image(drive.render(0)[0], _stamp(drive.stamp_ns(0)), "camera_optical")
        )  # ... and so do the stamps

        def reset_seen() -> bool:
            tick()
            return _diag_values(rec).get("time_jump_resets") == "1"

        assert rec.spin_until(reset_seen, 60, [node]), (
            _diag_values(rec),
            (tmp_path / "node.log").read_text(),
        )
        assert "the clock jumped back too" in (tmp_path / "node.log").read_text()
        assert "dropped_stamp_outlier" not in _diag_values(rec)
        assert stop(node) == 0
    finally:
        stop(node)
        rec.close()
