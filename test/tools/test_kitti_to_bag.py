"""scal3r_kitti_to_bag on a tiny generated KITTI folder: topics, stamps, frames, camera
info, ground truth; the bag read back with rosbags and with rclpy's deserializer; every
kind of bad folder gives exit code 2 and one message naming the problem."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kitti_fixture import FRAME_DT, make_kitti_dataset, scaled_projection
from PIL import Image as PILImage
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from scal3r_ros.tools import kitti
from scal3r_ros.tools.kitti_to_bag import KITTI_DAY, main

N, W, H = 5, 64, 20
LEFT = "/kitti/camera_color_left"
RIGHT = "/kitti/camera_color_right"
STORE = get_typestore(Stores.ROS2_KILTED)


def _read(bag: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    """topic -> [(bag timestamp, deserialized message, raw CDR)] in bag order."""
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            msg = STORE.deserialize_cdr(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((t, msg, bytes(raw)))
    return out


def _storage(bag: Path) -> str:
    import yaml

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return meta["storage_identifier"]


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _expected_stamp(i: int, start: float = KITTI_DAY) -> int:
    return int(round((start + float(f"{i * FRAME_DT:.6e}")) * 1e9))


def _quat_matrix(q) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_kitti_dataset(tmp_path_factory.mktemp("kitti"), n_frames=N, width=W, height=H)


@pytest.fixture(scope="module")
def stereo_bag(dataset, tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("bags") / "kitti_00"
    assert main([str(dataset), "-o", str(bag), "-q"]) == 0
    return bag


def test_stereo_bag_topics_types_and_storage(stereo_bag):
    with Reader(stereo_bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert _storage(stereo_bag) == "mcap"
    assert types == {
        f"{LEFT}/image_raw": "sensor_msgs/msg/Image",
        f"{LEFT}/camera_info": "sensor_msgs/msg/CameraInfo",
        f"{RIGHT}/image_raw": "sensor_msgs/msg/Image",
        f"{RIGHT}/camera_info": "sensor_msgs/msg/CameraInfo",
        "/tf_static": "tf2_msgs/msg/TFMessage",
        "/kitti/ground_truth/path": "nav_msgs/msg/Path",
        "/kitti/ground_truth/pose": "geometry_msgs/msg/PoseStamped",
    }
    assert counts["/tf_static"] == 1 and counts["/kitti/ground_truth/path"] == 1
    assert all(counts[t] == N for t in types if t not in ("/tf_static", "/kitti/ground_truth/path"))


def test_topics_match_the_kitti_config():
    import yaml

    from scal3r_ros.share import config_file

    params = yaml.safe_load(config_file("kitti").read_text())["/**"]["ros__parameters"]
    assert params["image_topics"] == [f"{LEFT}/image_raw"]
    assert params["camera_info_topics"] == [f"{LEFT}/camera_info"]
    assert params["camera_frame"] == "camera_color_left"


def test_images_stamps_and_frames(stereo_bag, dataset):
    msgs = _read(stereo_bag)
    for topic, folder, frame in (
        (LEFT, "image_2", "camera_color_left"),
        (RIGHT, "image_3", "camera_color_right"),
    ):
        images = msgs[f"{topic}/image_raw"]
        infos = msgs[f"{topic}/camera_info"]
        for i, ((t, img, _), (ti, info, _)) in enumerate(zip(images, infos, strict=True)):
            assert _ns(img.header.stamp) == t == _ns(info.header.stamp) == ti == _expected_stamp(i)
            assert img.header.frame_id == info.header.frame_id == frame
            assert (img.width, img.height, img.encoding, img.step) == (W, H, "rgb8", 3 * W)
            png = np.asarray(PILImage.open(dataset / folder / f"{i:06d}.png").convert("RGB"))
            np.testing.assert_array_equal(img.data.reshape(H, W, 3), png)


def test_camera_info_keeps_intrinsics_and_stereo_baseline(stereo_bag):
    msgs = _read(stereo_bag)
    left = msgs[f"{LEFT}/camera_info"][0][1]
    right = msgs[f"{RIGHT}/camera_info"][0][1]
    P2, P3 = scaled_projection("P2", W, H), scaled_projection("P3", W, H)
    for info, P in ((left, P2), (right, P3)):
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        np.testing.assert_allclose(info.k.reshape(3, 3), P[:, :3])
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], P[:, :3])
        np.testing.assert_allclose(info.r, np.eye(3).ravel())
        np.testing.assert_allclose(info.d, 0.0)
    assert left.p[3] == 0.0
    # ROS stereo convention: right P[3] = -fx * baseline (cam2 -> cam3, KITTI's ~0.53 m)
    baseline = -right.p[3] / right.p[0]
    assert baseline == pytest.approx(kitti.stereo_baseline(P2, P3), rel=1e-9)
    assert baseline == pytest.approx(0.5327, abs=2e-3)
    assert right.p[7] == 0.0


def test_tf_static_mounts_cameras_on_base_link(stereo_bag):
    ((t, msg, _),) = _read(stereo_bag)["/tf_static"]
    assert t == _expected_stamp(0)
    mounts = {tr.child_frame_id: tr for tr in msg.transforms}
    assert set(mounts) == {"camera_color_left", "camera_color_right"}
    for tr in mounts.values():
        assert tr.header.frame_id == "base_link"
        # optical frame: z (view) = base x (forward), x (right) = -base y, y (down) = -base z
        R = _quat_matrix(tr.transform.rotation)
        np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-9)
        np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-9)
    left, right = mounts["camera_color_left"].transform, mounts["camera_color_right"].transform
    assert (left.translation.x, left.translation.y, left.translation.z) == (0.0, 0.0, 1.65)
    assert right.translation.y == pytest.approx(-0.5327, abs=2e-3)  # to the right
    assert right.translation.z == pytest.approx(1.65, abs=0.01)
    assert abs(right.translation.x) < 0.01


def test_ground_truth_path_and_poses_in_base_link_convention(stereo_bag):
    msgs = _read(stereo_bag)
    ((t, path, _),) = msgs["/kitti/ground_truth/path"]
    poses = msgs["/kitti/ground_truth/pose"]
    assert path.header.frame_id == "map" and t == _expected_stamp(0)
    assert len(path.poses) == len(poses) == N
    xyz = []
    for i, (p, (tp, ps, _)) in enumerate(zip(path.poses, poses, strict=True)):
        assert _ns(p.header.stamp) == _ns(ps.header.stamp) == tp == _expected_stamp(i)
        assert p.header.frame_id == ps.header.frame_id == "map"
        assert p.pose.position.x == pytest.approx(ps.pose.position.x)
        xyz.append([p.pose.position.x, p.pose.position.y, p.pose.position.z])
    xyz = np.array(xyz)
    np.testing.assert_allclose(xyz[0], 0.0, atol=1e-12)  # map = first base_link
    # ~1 m per frame (cam0 drives 1 m; cam2, 6 cm to its left, a bit less in a left turn)
    np.testing.assert_allclose(np.linalg.norm(np.diff(xyz, axis=0), axis=1), 1.0, atol=0.01)
    assert np.all(np.diff(xyz[:, 0]) > 0.9)  # forward is +x
    assert xyz[-1, 1] > 0.05  # the fixture turns left: +y
    np.testing.assert_allclose(xyz[:, 2], 0.0, atol=1e-9)  # stays on the road plane


@pytest.mark.ros
def test_rclpy_deserializes_the_bag_as_ros_messages(stereo_bag):
    """The CDR in the bag is what ROS 2 itself reads: rclpy's deserializer, ROS types."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    msgs = _read(stereo_bag)
    img = deserialize_message(msgs[f"{LEFT}/image_raw"][2][2], Image)
    assert (img.width, img.height, img.encoding) == (W, H, "rgb8")
    assert img.header.frame_id == "camera_color_left"
    assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == _expected_stamp(2)
    np.testing.assert_array_equal(
        np.frombuffer(bytes(img.data), np.uint8), msgs[f"{LEFT}/image_raw"][2][1].data
    )
    info = deserialize_message(msgs[f"{RIGHT}/camera_info"][0][2], CameraInfo)
    assert info.p[3] < 0 and info.k[0] == pytest.approx(scaled_projection("P3", W, H)[0, 0])
    tf = deserialize_message(msgs["/tf_static"][0][2], TFMessage)
    assert {t.child_frame_id for t in tf.transforms} == {"camera_color_left", "camera_color_right"}
    path = deserialize_message(msgs["/kitti/ground_truth/path"][0][2], PathMsg)
    assert len(path.poses) == N
    pose = deserialize_message(msgs["/kitti/ground_truth/pose"][-1][2], PoseStamped)
    assert pose.pose.position.x > 3.5
    # the recorded type hashes are ROS's own (same message definitions as the wheels)
    share = Path(sys.prefix) / "share" / "sensor_msgs" / "msg" / "Image.json"
    if share.is_file():
        import json

        ros_hash = json.loads(share.read_text())["type_hashes"][0]["hash_string"]
        with Reader(stereo_bag) as reader:
            digest = {c.topic: c.digest for c in reader.connections}
        assert digest[f"{LEFT}/image_raw"] == ros_hash


def test_sqlite3_compressed_png_left_only_with_selection(dataset, tmp_path):
    bag = tmp_path / "sel"
    assert (
        main(
            [
                str(dataset),
                "-o",
                str(bag),
                "-q",
                "--storage",
                "sqlite3",
                "--compressed",
                "png",
                "--left-only",
                "--start",
                "1",
                "--stride",
                "2",
                "--max-frames",
                "2",
                "--start-time",
                "100.5",
            ]
        )
        == 0
    )
    assert _storage(bag) == "sqlite3"
    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
    assert topics[f"{LEFT}/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
    assert not any(t.startswith(RIGHT) for t in topics) and f"{LEFT}/image_raw" not in topics
    msgs = _read(bag)
    frames = [1, 3]
    comp = msgs[f"{LEFT}/image_raw/compressed"]
    assert [_ns(m.header.stamp) for _, m, _ in comp] == [_expected_stamp(i, 100.5) for i in frames]
    for (_, m, _), i in zip(comp, frames, strict=True):
        assert m.format == "rgb8; png compressed bgr8"
        assert m.data.tobytes() == (dataset / "image_2" / f"{i:06d}.png").read_bytes()
    gt = msgs["/kitti/ground_truth/path"][0][1]
    assert len(gt.poses) == 2 and gt.poses[0].pose.position.x == pytest.approx(0.0, abs=1e-12)
    assert gt.poses[1].pose.position.x == pytest.approx(2.0, abs=0.01)  # two frames apart
    ((_, tf, _),) = msgs["/tf_static"]
    assert [t.child_frame_id for t in tf.transforms] == ["camera_color_left"]


def test_jpeg_and_gt_tf_and_explicit_poses(dataset, tmp_path):
    seq_copy = make_kitti_dataset(
        tmp_path / "nogt", n_frames=N, width=W, height=H, with_poses=False
    )
    bag = tmp_path / "jpeg"
    poses = dataset.parent.parent / "poses" / "00.txt"
    assert (
        main(
            [
                str(seq_copy),
                "-o",
                str(bag),
                "-q",
                "--compressed",
                "jpeg",
                "--poses",
                str(poses),
                "--gt-tf",
                "--gt-frame",
                "world",
            ]
        )
        == 0
    )
    msgs = _read(bag)
    m = msgs[f"{LEFT}/image_raw/compressed"][0][1]
    assert m.format == "rgb8; jpeg compressed bgr8"
    decoded = np.asarray(PILImage.open(io.BytesIO(m.data.tobytes())).convert("RGB"), np.float64)
    png = np.asarray(PILImage.open(dataset / "image_2" / "000000.png").convert("RGB"), np.float64)
    assert np.abs(decoded - png).mean() < 20
    tfs = msgs["/tf"]
    assert len(tfs) == N
    assert {(t.header.frame_id, t.child_frame_id) for _, m, _ in tfs for t in m.transforms} == {
        ("world", "base_link_gt")
    }
    assert msgs["/kitti/ground_truth/path"][0][1].header.frame_id == "world"


def test_without_poses_there_is_no_ground_truth(tmp_path):
    seq = make_kitti_dataset(
        tmp_path / "ds", n_frames=3, width=W, height=H, stereo=False, with_poses=False
    )
    assert main([str(seq), "-o", str(tmp_path / "b"), "-q"]) == 0
    msgs = _read(tmp_path / "b")
    assert set(msgs) == {"/tf_static", f"{LEFT}/image_raw", f"{LEFT}/camera_info"}
    # --no-ground-truth drops poses that exist
    seq2 = make_kitti_dataset(tmp_path / "ds2", n_frames=3, width=W, height=H, stereo=False)
    assert main([str(seq2), "-o", str(tmp_path / "b2"), "-q", "--no-ground-truth"]) == 0
    assert "/kitti/ground_truth/path" not in _read(tmp_path / "b2")


def test_kitti_readers_api(dataset):
    times = kitti.read_times(dataset / "times.txt")
    np.testing.assert_allclose(times, np.arange(N) * FRAME_DT, atol=1e-9)
    calib = kitti.read_calib(dataset / "calib.txt")
    assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"} and calib["P2"].shape == (3, 4)
    poses = kitti.read_kitti_poses(kitti.default_poses_path(dataset))
    assert poses.shape == (N, 4, 4)
    np.testing.assert_allclose(poses[0], np.eye(4))
    seq = kitti.load_sequence(dataset)
    assert seq.stereo and len(seq) == N and seq.name == "00"
    assert seq.poses_path == kitti.default_poses_path(dataset)


def test_write_kitti_poses_roundtrip(tmp_path):
    from kitti_fixture import poses as fixture_poses

    P = fixture_poses(7)
    kitti.write_kitti_poses(tmp_path / "p.txt", P)
    np.testing.assert_allclose(kitti.read_kitti_poses(tmp_path / "p.txt"), P, atol=1e-8)


# ====================================================================== bad folders
def _break(case: str, seq: Path, root: Path) -> tuple[list[str], str]:
    """Damage a fresh dataset; returns (extra args, text the error must contain)."""
    if case == "no_image_2":
        for p in (seq / "image_2").iterdir():
            p.unlink()
        (seq / "image_2").rmdir()
        return [], "no image_2/ folder"
    if case == "empty_image_2":
        for p in (seq / "image_2").iterdir():
            p.unlink()
        return [], "image_2 holds no .png/.jpg images"
    if case == "no_times":
        (seq / "times.txt").unlink()
        return [], "times file not found"
    if case == "times_count":
        lines = (seq / "times.txt").read_text().splitlines()
        (seq / "times.txt").write_text("\n".join(lines[:-1]) + "\n")
        return [], f"has {N - 1} times but image_2/ has {N} images"
    if case == "times_not_increasing":
        (seq / "times.txt").write_text("0.0\n0.1\n0.1\n0.3\n0.4\n")
        return [], "times.txt:3: times must increase"
    if case == "times_garbage":
        (seq / "times.txt").write_text("0.0\n0.1\nabc\n0.3\n0.4\n")
        return [], "times.txt:3: expected a time in seconds"
    if case == "no_calib":
        (seq / "calib.txt").unlink()
        return [], "calibration file not found"
    if case == "calib_malformed":
        lines = (seq / "calib.txt").read_text().splitlines()
        lines[2] = lines[2].rsplit(" ", 1)[0]  # P2 with 11 numbers
        (seq / "calib.txt").write_text("\n".join(lines) + "\n")
        return [], "calib.txt:3: malformed calibration line"
    if case == "calib_no_p3":
        lines = (seq / "calib.txt").read_text().splitlines()
        (seq / "calib.txt").write_text("\n".join(x for x in lines if not x.startswith("P3")))
        return [], "no P3 line"
    if case == "image_3_mismatch":
        (seq / "image_3" / f"{N - 1:06d}.png").unlink()
        return [], f"image_3/ has {N - 1} images"
    if case == "unreadable_image":
        (seq / "image_2" / "000002.png").write_bytes(b"not a png at all")
        return [], "unreadable image"
    if case == "truncated_image":
        png = seq / "image_3" / "000003.png"
        png.write_bytes(png.read_bytes()[:60])  # header readable, pixels missing
        return [], "000003.png"
    if case == "size_mismatch":
        PILImage.new("RGB", (W + 2, H)).save(seq / "image_2" / "000001.png")
        return [], "all images must have one size"
    if case == "poses_count":
        p = root / "poses" / "00.txt"
        p.write_text("\n".join(p.read_text().splitlines()[:3]) + "\n")
        return [], f"has 3 poses but {seq / 'times.txt'} has {N} times"
    if case == "poses_malformed":
        p = root / "poses" / "00.txt"
        lines = p.read_text().splitlines()
        lines[1] = "1 2 3"
        p.write_text("\n".join(lines) + "\n")
        return [], "00.txt:2: expected 12 numbers"
    if case == "explicit_poses_missing":
        return ["--poses", str(root / "nope.txt")], "poses file not found"
    if case == "no_folder":
        return ["__replace__", str(root / "sequences" / "99")], "sequence folder not found"
    if case == "start_past_end":
        return ["--start", str(N)], f"--start {N} is outside"
    raise AssertionError(case)


CASES = [
    "no_image_2",
    "empty_image_2",
    "no_times",
    "times_count",
    "times_not_increasing",
    "times_garbage",
    "no_calib",
    "calib_malformed",
    "calib_no_p3",
    "image_3_mismatch",
    "unreadable_image",
    "truncated_image",
    "size_mismatch",
    "poses_count",
    "poses_malformed",
    "explicit_poses_missing",
    "no_folder",
    "start_past_end",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_folder_exit_2_with_one_clear_message(case, tmp_path, capsys):
    seq = make_kitti_dataset(tmp_path / "ds", n_frames=N, width=W, height=H)
    extra, expected = _break(case, seq, tmp_path / "ds")
    target = str(seq)
    if extra[:1] == ["__replace__"]:
        target, extra = extra[1], []
    bag = tmp_path / "out"
    assert main([target, "-o", str(bag), "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and expected in err, err
    assert not bag.exists()  # nothing half-written is left behind


def test_several_problems_are_listed_in_one_message(tmp_path, capsys):
    seq = make_kitti_dataset(tmp_path / "ds", n_frames=N, width=W, height=H)
    (seq / "times.txt").unlink()
    (seq / "calib.txt").write_text("P2 718 0 607\n")
    assert main([str(seq), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "times file not found" in err and "calib.txt:1: malformed" in err


def test_existing_output_is_refused_unless_overwrite(dataset, tmp_path, capsys):
    bag = tmp_path / "b"
    assert main([str(dataset), "-o", str(bag), "-q", "--max-frames", "1"]) == 0
    assert main([str(dataset), "-o", str(bag), "-q", "--max-frames", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([str(dataset), "-o", str(bag), "-q", "--max-frames", "2", "--overwrite"]) == 0
    with Reader(bag) as reader:
        assert reader.message_count == 1 + 1 + 2 * (2 + 2 + 1)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main([str(dataset), "-o", str(precious), "-q", "--overwrite"]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"


def test_console_script_exit_code_and_progress_bar(dataset, tmp_path):
    run = [sys.executable, "-m", "scal3r_ros.tools.kitti_to_bag"]
    ok = subprocess.run(
        [*run, str(dataset), "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "5/5" in ok.stderr and "frame" in ok.stderr  # tqdm
    assert "wrote" in ok.stdout and "/kitti/camera_color_left/image_raw: 5" in ok.stdout
    bad = subprocess.run(
        [*run, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "sequence folder not found" in bad.stderr


def test_output_parents_are_created(dataset, tmp_path):
    """`--output bags/kitti_00` with no `bags/` yet: the folders are made, as mkdir -p."""
    bag = tmp_path / "bags" / "deeper" / "kitti_00"
    assert main([str(dataset), "-o", str(bag), "-q", "--max-frames", "2"]) == 0
    with Reader(bag) as reader:
        assert {c.topic for c in reader.connections} >= {f"{LEFT}/image_raw"}


@pytest.mark.parametrize("case", ["unreadable_image", "truncated_image"])
def test_created_parents_are_removed_when_conversion_fails(case, tmp_path, capsys):
    seq = make_kitti_dataset(tmp_path / "ds", n_frames=N, width=W, height=H)
    extra, expected = _break(case, seq, tmp_path / "ds")
    assert main([str(seq), "-o", str(tmp_path / "new" / "kitti_00"), "-q", *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # nothing half-made is left behind


def test_output_under_a_file_is_a_clear_error(dataset, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main([str(dataset), "-o", str(tmp_path / "afile" / "kitti_00"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "afile" in err and "not a folder" in err, err
