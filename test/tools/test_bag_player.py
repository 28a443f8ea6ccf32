"""scal3r_play_bag across processes: a bag made by scal3r_kitti_to_bag from the tiny
KITTI folder is played in a subprocess; a node in the test process receives images,
camera info, /tf_static (latched) and /clock, in order with the recorded stamps; loop,
start offset and topic filter; bad input; end to end into the mapping node with
use_sim_time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kitti_fixture import FRAME_DT, make_kitti_dataset

from scal3r_ros.tools.kitti_to_bag import KITTI_DAY
from scal3r_ros.tools.kitti_to_bag import main as kitti_to_bag

pytestmark = pytest.mark.ros

N = 8
LEFT = "/kitti/camera_color_left"
RIGHT = "/kitti/camera_color_right"
GT_PATH = "/kitti/ground_truth/path"


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _stamp(i: int) -> int:
    return int(round((KITTI_DAY + float(f"{i * FRAME_DT:.6e}")) * 1e9))


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti")
    seq = make_kitti_dataset(root / "ds", n_frames=N, width=64, height=20)
    out = root / "bag"
    assert kitti_to_bag([str(seq), "-o", str(out), "-q"]) == 0
    return out


class Listener:
    """Records (arrival time, message) per topic in the test process."""

    def __init__(self, topics: dict[str, type], latched: tuple[str, ...] = ()) -> None:
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bag_listener", context=self.context)
        self.msgs: dict[str, list] = defaultdict(list)
        for topic, typ in topics.items():
            qos = QoSProfile(
                depth=1000,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL
                if topic in latched
                else DurabilityPolicy.VOLATILE,
            )
            self.node.create_subscription(typ, topic, lambda m, t=topic: self._on(t, m), qos)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _on(self, topic: str, msg) -> None:
        self.msgs[topic].append((time.monotonic(), msg))

    def spin_until(self, cond, timeout: float, proc=None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
            if cond():
                return True
            if proc is not None and proc.poll() is not None:
                # the player has exited: what it sent is on its way; a grace period, not
                # a fixed wait (a loaded machine delivers late)
                deadline, proc = min(deadline, time.monotonic() + 10.0), None
        return False

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def stamps(self, topic: str) -> list[int]:
        if topic == "/clock":
            return [_ns(m.clock) for _, m in self.msgs[topic]]
        return [_ns(m.header.stamp) for _, m in self.msgs[topic]]

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _play(bag: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scal3r_ros.tools.bag_player", str(bag), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return -9, out
    return proc.returncode, out


def _listener(extra: dict | None = None) -> Listener:
    from nav_msgs.msg import Path as PathMsg
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    topics = {
        f"{LEFT}/image_raw": Image,
        f"{LEFT}/camera_info": CameraInfo,
        f"{RIGHT}/image_raw": Image,
        "/clock": Clock,
        "/tf_static": TFMessage,
        GT_PATH: PathMsg,
        **(extra or {}),
    }
    return Listener(topics, latched=("/tf_static", GT_PATH))


WAIT = ["--wait-for", f"{LEFT}/image_raw", f"{LEFT}/camera_info", f"{RIGHT}/image_raw", "/clock"]


def test_plays_images_camera_info_tf_static_and_clock_in_order(bag):
    rec = _listener()
    rate = 4.0
    proc = _play(bag, "--rate", str(rate), *WAIT)
    try:
        ok = rec.spin_until(
            lambda: (
                len(rec.msgs[f"{LEFT}/image_raw"]) >= N and len(rec.msgs[f"{RIGHT}/image_raw"]) >= N
            ),
            60,
            proc,
        )
        code, out = _finish(proc)
        assert ok and code == 0, out
        # the last /clock tick may still be on its way (no fixed wait: a loaded machine)
        rec.spin_until(lambda: rec.stamps("/clock")[-1:] == [_stamp(N - 1)], 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        rec.close()
    expected = [_stamp(i) for i in range(N)]
    assert rec.stamps(f"{LEFT}/image_raw") == expected
    assert rec.stamps(f"{RIGHT}/image_raw") == expected
    assert rec.stamps(f"{LEFT}/camera_info") == expected
    img = rec.msgs[f"{LEFT}/image_raw"][3][1]
    assert (img.width, img.height, img.encoding, img.header.frame_id) == (
        64,
        20,
        "rgb8",
        "camera_color_left",
    )
    # /clock: monotone, from the bag's start to its last message
    clock = rec.stamps("/clock")
    assert clock == sorted(clock) and clock[0] == expected[0] and clock[-1] == expected[-1]
    assert set(expected) <= set(clock)  # a /clock tick at every message time
    # (the player sends it just before the message; cross-topic arrival order is not
    # observable here: an executor takes ready subscriptions in its own order)
    # latched topics, once
    ((_, tf),) = rec.msgs["/tf_static"]
    assert {t.child_frame_id for t in tf.transforms} == {"camera_color_left", "camera_color_right"}
    assert len(rec.msgs[GT_PATH]) == 1 and len(rec.msgs[GT_PATH][0][1].poses) == N
    # paced at the chosen rate: the player never sends faster than the bag at x rate (its
    # own wall time; arrival times at this listener depend on the machine's load)
    wall = float(re.search(r"([0-9.]+) s wall at rate", out).group(1))
    assert wall >= 0.99 * (N - 1) * FRAME_DT / rate, out
    assert "done" in out and f"{LEFT}/image_raw [sensor_msgs/msg/Image]: {N}" in out
    assert "/tf_static [tf2_msgs/msg/TFMessage, latched]: 1" in out


def test_loop_jumps_back_and_sigint_exits_cleanly(bag):
    rec = _listener()
    proc = _play(bag, "--rate", "20", "--loop", *WAIT)
    try:
        ok = rec.spin_until(lambda: len(rec.msgs[f"{LEFT}/image_raw"]) >= 2 * N + 2, 60, proc)
        proc.send_signal(signal.SIGINT)
        code, out = _finish(proc)
        assert ok and code == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
        rec.close()
    stamps = rec.stamps(f"{LEFT}/image_raw")
    expected = [_stamp(i) for i in range(N)]
    assert stamps[:N] == expected and stamps[N : 2 * N] == expected  # the bag again
    clock = rec.stamps("/clock")
    jumps = [i for i in range(1, len(clock)) if clock[i] < clock[i - 1]]
    assert jumps, "no backwards /clock jump after the end of the bag"
    assert clock[jumps[0] - 1] == expected[-1] and clock[jumps[0]] == expected[0]
    assert len(rec.msgs["/tf_static"]) == 1  # not re-sent on each loop
    assert "interrupted" in out and "complete pass(es)" in out


def test_start_offset_and_topic_filter(bag):
    rec = _listener()
    offset = 2.5 * FRAME_DT  # frames 3.. remain
    proc = _play(
        bag,
        "--rate",
        "10",
        "--start-offset",
        str(offset),
        "--topics",
        f"{LEFT}/image_raw",
        f"{LEFT}/camera_info",
        "/tf_static",
        "--wait-for",
        f"{LEFT}/image_raw",
        f"{LEFT}/camera_info",
        "/clock",
    )
    try:
        code, out = _finish(proc, timeout=60)
        # the player exits once its reliable samples are acknowledged; take them all in
        rec.spin_until(
            lambda: (
                len(rec.msgs[f"{LEFT}/camera_info"]) >= N - 3
                and len(rec.msgs[f"{LEFT}/image_raw"]) >= N - 3
            ),
            30,
        )
    finally:
        rec.close()
    assert code == 0, out
    assert rec.stamps(f"{LEFT}/image_raw") == [_stamp(i) for i in range(3, N)]
    assert rec.stamps(f"{LEFT}/camera_info") == [_stamp(i) for i in range(3, N)]
    assert not rec.msgs[f"{RIGHT}/image_raw"] and not rec.msgs[GT_PATH]
    assert len(rec.msgs["/tf_static"]) == 1  # before the offset, but static: still sent
    assert rec.stamps("/clock")[0] == _stamp(3)


def test_best_effort_qos_reaches_sensor_data_subscribers(bag):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rec = Listener({})  # no reliable subscription: it would not match a best-effort writer
    got = []
    rec.node.create_subscription(Image, f"{LEFT}/image_raw", got.append, qos_profile_sensor_data)
    proc = _play(bag, "--rate", "5", "--qos", "best_effort", "--wait-for", f"{LEFT}/image_raw")
    try:
        ok = rec.spin_until(lambda: len(got) >= N - 1, 60, proc)
        code, out = _finish(proc)
    finally:
        rec.close()
    assert ok and code == 0, out
    assert len(got) >= N - 1  # best effort may lose one under load, usually none


def test_sqlite3_compressed_bag_and_ros_args_remap(bag, tmp_path):
    """A sqlite3 bag of CompressedImage plays too; --ros-args goes to rclpy (a remap)."""
    from sensor_msgs.msg import CompressedImage

    seq = make_kitti_dataset(tmp_path / "ds", n_frames=4, width=64, height=20, stereo=False)
    out = tmp_path / "sq"
    assert (
        kitti_to_bag(
            [str(seq), "-o", str(out), "-q", "--storage", "sqlite3", "--compressed", "png"]
        )
        == 0
    )
    rec = Listener({"/remapped": CompressedImage})
    proc = _play(
        out,
        "--rate",
        "10",
        "--wait-for",
        f"{LEFT}/image_raw/compressed",
        "--ros-args",
        "-r",
        f"{LEFT}/image_raw/compressed:=/remapped",
    )
    try:
        code, out_text = _finish(proc, timeout=60)
        rec.spin_until(lambda: len(rec.msgs["/remapped"]) >= 4, 30)  # acknowledged: take them in
    finally:
        rec.close()
    assert code == 0, out_text
    assert rec.stamps("/remapped") == [_stamp(i) for i in range(4)]
    msg = rec.msgs["/remapped"][0][1]
    assert bytes(msg.data) == (seq / "image_2" / "000000.png").read_bytes()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["{tmp}/nothing"], "no bag at"),
        (["{tmp}"], "cannot open"),
        (["{bag}", "--topics", "/nope"], "topics not in the bag: /nope"),
        (["{bag}", "--start-offset", "100"], "past the bag's end"),
        (["{bag}", "--rate", "0"], "--rate must be > 0"),
    ],
)
def test_bad_input_exit_2(bag, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, bag=bag) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "scal3r_ros.tools.bag_player", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr


def test_message_class_by_name():
    from scal3r_ros.tools.bag_player import message_class

    assert message_class("sensor_msgs/msg/Image").__name__ == "Image"
    assert message_class("rosgraph_msgs/Clock").__name__ == "Clock"
    for bad in ("nope_msgs/msg/X", "sensor_msgs/msg/Nope", "Image"):
        with pytest.raises(ImportError):
            message_class(bad)


# ------------------------------------------------------------ bags a node cannot use
def _raw(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return bytes(serialize_message(msg))


def _odometry(i: int) -> bytes:
    from nav_msgs.msg import Odometry

    m = Odometry()
    m.header.stamp.sec, m.header.frame_id, m.child_frame_id = i, "odom", "base_link"
    m.pose.pose.position.x = float(i)
    return _raw(m)


def _tf(i: int) -> bytes:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.stamp.sec, t.header.frame_id, t.child_frame_id = i, "odom", "base_link"
    return _raw(TFMessage(transforms=[t]))


def _image(i: int) -> bytes:
    from sensor_msgs.msg import Image

    m = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
    m.header.stamp.sec, m.header.frame_id = i, "cam"
    return _raw(m)


def _write_bag(
    path: Path, topics: dict[str, tuple[str, list[bytes]]], storage: str = "sqlite3"
) -> Path:
    """A rosbag2 folder: topic -> (type, raw CDR messages one second apart)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    writer.open()
    for topic, (msgtype, msgs) in topics.items():
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for i, raw in enumerate(msgs):
            writer.write(conn, (i + 1) * 1_000_000_000, raw)
    writer.close()
    return path


def _relabel(bag: Path, topic: str, new_type: str, *, metadata: bool, storage: bool) -> None:
    """Change a topic's recorded type in metadata.yaml and/or the db3's topics table."""
    import sqlite3

    import yaml

    if metadata:
        meta_path = bag / "metadata.yaml"
        meta = yaml.safe_load(meta_path.read_text())
        for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
            if t["topic_metadata"]["name"] == topic:
                t["topic_metadata"]["type"] = new_type
        meta_path.write_text(yaml.safe_dump(meta))
    if storage:
        (db,) = bag.glob("*.db3")
        with sqlite3.connect(db) as con:
            con.execute("UPDATE topics SET type = ? WHERE name = ?", (new_type, topic))


def _run(bag: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scal3r_ros.tools.bag_player",
            str(bag),
            "-q",
            "--rate",
            "50",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bag_without_images_warns_or_fails(tmp_path):
    """A Nav2-like bag (odometry and TF only): a node waiting for images would wait
    forever, so the player says so; --require-images and a bare --wait-for refuse it."""
    bag = _write_bag(
        tmp_path / "nav2",
        {
            "/odom": ("nav_msgs/msg/Odometry", [_odometry(i) for i in range(4)]),
            "/tf": ("tf2_msgs/msg/TFMessage", [_tf(i) for i in range(4)]),
        },
    )
    played = _run(bag)
    assert played.returncode == 0, played.stderr
    assert "warning: no image topic (sensor_msgs/msg/Image or CompressedImage) in the bag" in (
        played.stderr
    )
    assert "/odom [nav_msgs/msg/Odometry]: 4" in played.stdout
    refusals = {
        "--require-images": "(--require-images)",
        "--wait-for": "a bare --wait-for waits for image topics",
    }
    for flag, expected in refusals.items():
        args = [flag]
        refused = _run(bag, *args)
        assert refused.returncode == 2, refused.stderr
        assert "error: no image topic" in refused.stderr and expected in refused.stderr
        assert "done" not in refused.stdout  # nothing was played
    # a bag with an image topic is not warned about, with or without --require-images
    with_images = _write_bag(
        tmp_path / "cam",
        {
            "/cam/image_raw": ("sensor_msgs/msg/Image", [_image(i) for i in range(3)]),
            "/odom": ("nav_msgs/msg/Odometry", [_odometry(i) for i in range(3)]),
        },
        storage="mcap",
    )
    ok = _run(with_images, "--require-images")
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    assert "/cam/image_raw [sensor_msgs/msg/Image]: 3" in ok.stdout
    # ...unless --topics leaves the images out
    odom_only = _run(with_images, "--topics", "/odom")
    assert odom_only.returncode == 0 and "in the --topics selection" in odom_only.stderr


@pytest.mark.parametrize("where", ["metadata", "storage"])
def test_type_changed_in_one_place_is_reported(tmp_path, where):
    """The type changed in metadata.yaml or in the db3 only: rosbags reads none of the
    topic's messages (the player used to play 0 of them, exit 0, without a word)."""
    bag = _write_bag(
        tmp_path / "bag",
        {
            "/cam/image_raw": ("sensor_msgs/msg/Image", [_image(i) for i in range(3)]),
            "/odom": ("nav_msgs/msg/Odometry", [_odometry(i) for i in range(3)]),
        },
    )
    _relabel(
        bag,
        "/odom",
        "sensor_msgs/msg/Imu",
        metadata=where == "metadata",
        storage=where == "storage",
    )
    run = _run(bag)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "/cam/image_raw [sensor_msgs/msg/Image]: 3" in run.stdout
    assert "/odom: not played (the bag records 3" in run.stdout
    assert "error: /odom: 3 recorded message(s), none readable" in run.stderr
    # nothing left to play: refused before playing
    images = _run(bag, "--topics", "/odom")
    assert images.returncode == 2 and "no topic of the bag can be played" in images.stderr


def test_type_changed_everywhere_counts_deserialisation_failures(tmp_path):
    """Relabelled consistently (metadata and db3), the messages read but are not of the
    type: each is checked, not published, and counted; exit 1 when none played."""
    bag = _write_bag(
        tmp_path / "bag",
        {
            "/cam/image_raw": ("sensor_msgs/msg/Image", [_image(i) for i in range(3)]),
            "/odom": ("nav_msgs/msg/Odometry", [_odometry(i) for i in range(5)]),
        },
    )
    _relabel(bag, "/odom", "sensor_msgs/msg/Imu", metadata=True, storage=True)
    run = _run(bag)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "/odom [sensor_msgs/msg/Imu]: 0 (5 not published" in run.stdout
    assert "/cam/image_raw [sensor_msgs/msg/Image]: 3" in run.stdout
    assert "error: /odom: all 5 message(s) failed to deserialize as sensor_msgs/msg/Imu" in (
        run.stderr
    )
    # an image topic relabelled: --require-images still sees an image topic, but the
    # requested topic plays nothing
    _relabel(bag, "/cam/image_raw", "sensor_msgs/msg/CompressedImage", metadata=True, storage=True)
    run = _run(bag, "--topics", "/cam/image_raw", "--require-images")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "/cam/image_raw: all 3 message(s) failed" in run.stderr


def test_some_bad_messages_are_counted_and_the_rest_played(tmp_path):
    good = [_odometry(i) for i in range(6)]
    msgs = list(good)
    msgs[2] = good[2][: len(good[2]) // 2]  # cut short
    msgs[4] = _image(4)  # another type
    bag = _write_bag(
        tmp_path / "bag",
        {
            "/cam/image_raw": ("sensor_msgs/msg/Image", [_image(i) for i in range(2)]),
            "/odom": ("nav_msgs/msg/Odometry", msgs),
        },
        storage="mcap",
    )
    run = _run(bag)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "/odom [nav_msgs/msg/Odometry]: 4 (2 not published" in run.stdout


def test_check_message():
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, Imu

    from scal3r_ros.tools.bag_player import check_message

    odom = _odometry(3)
    assert check_message(odom, Odometry) is None
    assert check_message(odom + b"\0\0", Odometry) is None  # end padding
    assert "another type" in check_message(odom, Imu)  # reads, but is not an Imu
    assert check_message(odom[:40], Odometry) is not None
    assert check_message(odom, Image) is not None


@pytest.mark.slow
def test_kitti_bag_to_mapping_node_with_sim_time(bag, tmp_path):
    """KITTI folder -> bag -> player -> mapping node (tiny network, use_sim_time): the
    node's /tf carries the bag's stamps and it takes the camera mount from the bag."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))
    from node_harness import NODE, Recorder, node_args, start, stop

    rec = Recorder("kitti_e2e")
    node = start(
        node_args(
            tmp_path / "maps",
            backend="tiny",
            chunk_size=4,
            overlap=2,
            use_sim_time=True,
            input_qos="reliable",
            loop_closure=False,
            image_topics=[f"{LEFT}/image_raw"],
            camera_info_topics=[f"{LEFT}/camera_info"],
            camera_frame="camera_color_left",
            status_period=0.2,
        ),
        tmp_path / "node.log",
    )
    player = None
    try:
        assert rec.spin_until(
            lambda: rec.node.count_publishers(f"{NODE}/status") > 0, 60, [node]
        ), (tmp_path / "node.log").read_text()
        player = _play(
            bag, "--rate", "2", "--wait-for", f"{LEFT}/image_raw", f"{LEFT}/camera_info", "/clock"
        )

        def mapped() -> bool:
            stamps = {
                _ns(t.header.stamp)
                for m in rec.msgs["/tf"]
                for t in m.transforms
                if t.child_frame_id == "base_link"
            }
            return len(stamps) >= N

        ok = rec.spin_until(mapped, 240, [node])
        assert ok, (tmp_path / "node.log").read_text()
        code, out = _finish(player)
        assert code == 0, out
        base = {
            _ns(t.header.stamp)
            for m in rec.msgs["/tf"]
            for t in m.transforms
            if t.child_frame_id == "base_link"
        }
        assert base == {_stamp(i) for i in range(N)}
        log = (tmp_path / "node.log").read_text()
        assert "camera mount base_link -> camera_color_left taken from /tf_static" in log
        # sim time: the node's clock (diagnostics stamps) is the bag's /clock, not the wall
        diag = [_ns(m.header.stamp) for m in rec.msgs["/diagnostics"]]
        assert diag and all(_stamp(0) <= t <= _stamp(N - 1) for t in diag), diag
        assert stop(node) == 0, (tmp_path / "node.log").read_text()[-4000:]
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        stop(node)
        rec.close()
