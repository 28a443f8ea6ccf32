"""scal3r_kitti_to_bag --oxts: a tiny fake KITTI raw drive (OXTS lines with known values,
one of them bad) beside the tiny odometry sequence -> bag -> read back with rosbags:
NavSatFix position, status and covariance, Imu orientation (against the rotation built
from the devkit's angle definitions), rates and accelerations, stamps on the images'
clock, the IMU mount on /tf_static, and every bad input as exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kitti_fixture import FRAME_DT, make_kitti_dataset
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

from scal3r_ros.tools import kitti
from scal3r_ros.tools.kitti_to_bag import KITTI_DAY, main

N = 5  # sequence frames
GPS, IMU = "/kitti/oxts/gps/fix", "/kitti/oxts/imu"
STORE = get_typestore(Stores.ROS2_KILTED)
DRIVE_T0 = np.datetime64("2011-10-03 12:55:34.123456789", "ns").astype(np.int64)
OXTS_DT = np.array([-3, 4, 2, -1, 3, 0, 1, -2]) * 1_000_000  # OXTS vs its frame, ns
BAD = 2  # the drive sample whose line holds a NaN
# the raw calibration of the fake date folder: IMU ~ at KITTI's place (behind and below
# the velodyne, axes as the car's), velodyne axes -> optical axes, a small rectification
T_VELO_IMU = np.eye(4)
T_VELO_IMU[:3, :3] = Rotation.from_euler("xyz", [0.01, -0.02, 0.03]).as_matrix()
T_VELO_IMU[:3, 3] = [-0.81, 0.32, -0.80]
T_CAM_VELO = np.eye(4)
T_CAM_VELO[:3, :3] = Rotation.from_euler("xyz", [0.004, -0.006, 0.002]).as_matrix() @ np.array(
    [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]
)
T_CAM_VELO[:3, 3] = [-0.004, -0.076, -0.272]
R_RECT = Rotation.from_euler("xyz", [0.004, 0.007, -0.009]).as_matrix()


def _frame_ns(i: int) -> int:
    """Raw image_02 time of drive frame i (KITTI's ~10 Hz, a little jitter)."""
    return int(DRIVE_T0 + round(i * FRAME_DT * 1e9) + (i % 3) * 137_000)


def _oxts_values(j: int) -> list[float]:
    v = np.zeros(30)
    v[kitti.OXTS["lat"]] = 49.011 + 1e-5 * j
    v[kitti.OXTS["lon"]] = 8.423 - 2e-5 * j
    v[kitti.OXTS["alt"]] = 112.5 + 0.1 * j
    # angles far from zero, so that an axis or order mix-up cannot pass
    v[kitti.OXTS["roll"]] = 0.05 + 0.04 * j
    v[kitti.OXTS["pitch"]] = -0.12 + 0.03 * j
    v[kitti.OXTS["yaw"]] = 2.6 - 0.9 * j
    for k, name in enumerate(("ax", "ay", "az", "af", "al", "au")):
        v[kitti.OXTS[name]] = (0.3, -0.2, 9.7, 0.25, -0.15, 9.75)[k] + 0.01 * j
    for k, name in enumerate(("wx", "wy", "wz", "wf", "wl", "wu")):
        v[kitti.OXTS[name]] = (0.011, -0.022, 0.033, 0.012, -0.021, 0.034)[k] * (j + 1)
    v[kitti.OXTS["pos_accuracy"]] = 0.4 + 0.1 * j
    v[kitti.OXTS["vel_accuracy"]] = 0.05
    v[kitti.OXTS["navstat"]] = 2 if j == 4 else 4  # 4: locked; 2: initialising
    v[kitti.OXTS["numsats"]] = 9
    v[kitti.OXTS["posmode"]] = 3 if j == 3 else 6  # 3: SPS; 6: RTK integer
    v[kitti.OXTS["velmode"]] = v[kitti.OXTS["orimode"]] = 6
    return [float(x) for x in v]


def _fmt(t_ns: int) -> str:
    s = str(np.datetime64(int(t_ns), "ns")).replace("T", " ")
    return s


def make_raw_drive(
    root: Path,
    drive: str = "2011_10_03_drive_0027",
    n: int = 8,
    calib: bool = True,
    image_times: bool = True,
) -> Path:
    """root/<date>/<drive>_sync/{oxts, image_02/timestamps.txt}; returns the oxts folder."""
    date = root / drive[:10]
    oxts = date / f"{drive}_sync" / "oxts"
    (oxts / "data").mkdir(parents=True)
    (oxts / "timestamps.txt").write_text(
        "".join(_fmt(_frame_ns(j) + OXTS_DT[j % len(OXTS_DT)]) + "\n" for j in range(n))
    )
    for j in range(n):
        values = " ".join(repr(x) for x in _oxts_values(j))
        if j == BAD:
            values = values.replace(repr(_oxts_values(j)[4]), "nan", 1)
        (oxts / "data" / f"{j:010d}.txt").write_text(values + "\n")
    if image_times:
        (oxts.parent / "image_02").mkdir()
        (oxts.parent / "image_02" / "timestamps.txt").write_text(
            "".join(_fmt(_frame_ns(i)) + "\n" for i in range(n))
        )
    if calib:

        def rt(T):
            return (
                "R: " + " ".join(f"{x:.12e}" for x in T[:3, :3].ravel()) + "\n"
                "T: " + " ".join(f"{x:.12e}" for x in T[:3, 3]) + "\n"
            )

        stamp = "calib_time: 25-May-2012 10:40:19\n"
        (date / "calib_imu_to_velo.txt").write_text(stamp + rt(T_VELO_IMU))
        (date / "calib_velo_to_cam.txt").write_text(
            stamp + rt(T_CAM_VELO) + "delta_f: 0.0 0.0\ndelta_c: 0.0 0.0\n"
        )
        (date / "calib_cam_to_cam.txt").write_text(
            stamp
            + "corner_dist: 9.950000e-02\n"
            + "R_rect_00: "
            + " ".join(f"{x:.12e}" for x in R_RECT.ravel())
            + "\n"
        )
    return oxts


def _read(bag: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append(
                (t, STORE.deserialize_cdr(raw, conn.msgtype), raw)
            )
    return out


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _image_stamp(i: int) -> int:
    return int(round((KITTI_DAY + float(f"{i * FRAME_DT:.6e}")) * 1e9))


def _oxts_stamp(j: int, raw_start: int = 0) -> int:
    """Bag stamp of drive sample j: its raw time relative to the sequence's frame 0."""
    t_oxts = int(np.datetime64(_fmt(_frame_ns(j) + OXTS_DT[j]), "ns").astype(np.int64))
    return _image_stamp(0) + t_oxts - _frame_ns(raw_start)


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The devkit's angles, by hand: yaw about up (0 = east), then pitch about the
    car's left axis (positive: front down), then roll about forward (positive: left up)."""
    cr, sr, cp, sp, cy, sy = (f(a) for a in (roll, pitch, yaw) for f in (np.cos, np.sin))
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_kitti_dataset(tmp_path_factory.mktemp("kitti"), n_frames=N, width=64, height=20)


@pytest.fixture(scope="module")
def oxts_bag(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    oxts = make_raw_drive(root)
    bag = root / "bag"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(dataset), "-o", str(bag), "-q", "--oxts", str(oxts)])
    assert code == 0
    return bag, out.getvalue(), oxts


def test_topics_counts_and_the_bad_line_reported_once(oxts_bag):
    bag, stdout, oxts = oxts_bag
    with Reader(bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert types[GPS] == "sensor_msgs/msg/NavSatFix" and types[IMU] == "sensor_msgs/msg/Imu"
    # drive samples 0-4 lie within the frames' span (+-50 ms); sample 2 is bad
    assert counts[GPS] == counts[IMU] == 4
    assert counts["/kitti/camera_color_left/image_raw"] == N
    assert f"  {GPS}: 4" in stdout and f"  {IMU}: 4" in stdout
    assert stdout.count("skipped 1 OXTS sample") == 1
    assert f"{BAD:010d}.txt: non-finite values" in stdout
    assert "drive frame 0" in stdout and "image_02/timestamps.txt" in stdout


def test_navsatfix_position_status_covariance_and_stamps(oxts_bag):
    bag, _, _ = oxts_bag
    fixes = _read(bag)[GPS]
    drive = [0, 1, 3, 4]
    assert [t for t, _, _ in fixes] == [_oxts_stamp(j) for j in drive]
    for (t, fix, _), j in zip(fixes, drive, strict=True):
        v = _oxts_values(j)
        assert _ns(fix.header.stamp) == t
        assert fix.header.frame_id == "imu_link"  # the OXTS reports its own position
        assert (fix.latitude, fix.longitude, fix.altitude) == (v[0], v[1], v[2])
        sigma = v[kitti.OXTS["pos_accuracy"]]
        np.testing.assert_allclose(
            np.asarray(fix.position_covariance).reshape(3, 3),
            np.diag([sigma**2, sigma**2, (2 * sigma) ** 2]),
        )
        assert fix.position_covariance_type == 2  # DIAGONAL_KNOWN
        assert fix.status.service == 1  # GPS
    # RTK integer -> GBAS fix (2); SPS -> plain fix (0); navstat "initialising" -> no fix
    assert [f.status.status for _, f, _ in fixes] == [2, 2, 0, -1]


def test_imu_orientation_rates_accelerations(oxts_bag):
    bag, _, _ = oxts_bag
    imus = _read(bag)[IMU]
    drive = [0, 1, 3, 4]
    assert [t for t, _, _ in imus] == [_oxts_stamp(j) for j in drive]
    for (_, imu, _), j in zip(imus, drive, strict=True):
        v = _oxts_values(j)
        assert imu.header.frame_id == "imu_link"
        q = imu.orientation
        R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        roll, pitch, yaw = (v[kitti.OXTS[k]] for k in ("roll", "pitch", "yaw"))
        np.testing.assert_allclose(R, _rpy_matrix(roll, pitch, yaw), atol=1e-9)
        # the devkit's signs: positive pitch = front down, positive roll = left side up
        if pitch > 0:
            assert (R @ [1, 0, 0])[2] < 0
        if roll > 0:
            assert (R @ [0, 1, 0])[2] > 0
        cov = np.asarray(imu.orientation_covariance).reshape(3, 3)
        assert cov[0, 0] > 0 and np.all(np.diag(cov) < np.radians(1.0) ** 2)
        w, a = imu.angular_velocity, imu.linear_acceleration
        assert (w.x, w.y, w.z) == tuple(v[kitti.OXTS[k]] for k in ("wx", "wy", "wz"))
        assert (a.x, a.y, a.z) == tuple(v[kitti.OXTS[k]] for k in ("ax", "ay", "az"))
        assert list(imu.linear_acceleration_covariance) == [0.0] * 9  # unknown


def test_imu_mount_on_tf_static_matches_the_camera_placement(oxts_bag, dataset):
    bag, _, _ = oxts_bag
    msgs = _read(bag)
    ((t, tf, _),) = msgs["/tf_static"]
    assert t == _oxts_stamp(0) < _image_stamp(0)  # the first message of the bag
    by_child = {tr.child_frame_id: tr for tr in tf.transforms}
    assert set(by_child) == {"camera_color_left", "camera_color_right", "imu_link"}

    def matrix(tr) -> np.ndarray:
        T = np.eye(4)
        q, p = tr.transform.rotation, tr.transform.translation
        T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        T[:3, 3] = [p.x, p.y, p.z]
        return T

    assert by_child["imu_link"].header.frame_id == "base_link"
    # base -> left camera (as written) -> rectified cam0 -> unrectified cam0 -> velo -> imu
    seq = kitti.load_sequence(dataset)
    T_left_cam0 = np.eye(4)
    T_left_cam0[:3, 3] = kitti.camera_offset(seq.P("image_2"))
    R_rect = np.eye(4)
    R_rect[:3, :3] = R_RECT
    expected = matrix(by_child["camera_color_left"]) @ T_left_cam0 @ R_rect @ T_CAM_VELO
    expected = expected @ T_VELO_IMU
    np.testing.assert_allclose(matrix(by_child["imu_link"]), expected, atol=1e-6)
    # where KITTI's IMU sits: ~1.1 m behind the camera, ~0.8 m above the ground, level
    T = matrix(by_child["imu_link"])
    assert -1.3 < T[0, 3] < -0.9 and 0.6 < T[2, 3] < 1.0
    assert np.degrees(Rotation.from_matrix(T[:3, :3]).magnitude()) < 3.0
    # the messages stay in time order: every OXTS sample before the frame after it
    with Reader(bag) as reader:
        stamps = [t for _, t, _ in reader.messages()]
    assert stamps == sorted(stamps)


def test_raw_start_and_oxts_clock_without_calibration(dataset, tmp_path, capsys):
    """--raw-start 2: the sequence's frame 0 is drive frame 2. Without image_02 times the
    OXTS clock aligns by the drive's own sample 2; without calibration: base_link."""
    oxts = make_raw_drive(tmp_path, n=8, calib=False, image_times=False)
    bag = tmp_path / "bag"
    drive_dir = str(oxts.parent)  # the drive folder will do
    assert main([str(dataset), "-o", str(bag), "-q", "--oxts", drive_dir, "--raw-start", "2"]) == 0
    out = capsys.readouterr().out
    assert "drive frame 2" in out and "oxts/timestamps.txt" in out
    assert "no raw calibration" in out and "in base_link" in out
    msgs = _read(bag)
    ((_, tf, _),) = msgs["/tf_static"]
    assert {tr.child_frame_id for tr in tf.transforms} == {
        "camera_color_left",
        "camera_color_right",
    }
    fixes = msgs[GPS]
    drive = [3, 4, 5, 6]  # 2..6 in the span, 2 is the bad line
    t_ref = int(np.datetime64(_fmt(_frame_ns(2) + OXTS_DT[2]), "ns").astype(np.int64))
    for (t, fix, _), j in zip(fixes, drive, strict=True):
        t_j = int(np.datetime64(_fmt(_frame_ns(j) + OXTS_DT[j]), "ns").astype(np.int64))
        assert t == _image_stamp(0) + t_j - t_ref
        assert fix.latitude == _oxts_values(j)[0]
        assert fix.header.frame_id == "base_link"
    assert len(fixes) == len(drive)
    assert all(imu.header.frame_id == "base_link" for _, imu, _ in msgs[IMU])


def test_read_oxts_skips_and_names_every_kind_of_bad_sample(tmp_path):
    oxts = tmp_path / "oxts"
    (oxts / "data").mkdir(parents=True)
    good = " ".join(repr(x) for x in _oxts_values(0))
    lines = [
        ("2011-10-03 12:55:34.0", good),
        ("2011-10-03 12:55:34.1", "1 2 3"),  # too few numbers
        ("not a date", good),
        ("2011-10-03 12:55:34.3", None),  # no data file
        ("2011-10-03 12:55:34.4", good.replace(" ", " x ", 1)),  # text
        ("2011-10-03 12:55:34.2", good),  # earlier than the previous sample
        ("2011-10-03 12:55:34.6", good),
    ]
    for j, (_, data) in enumerate(lines):
        if data is not None:
            (oxts / "data" / f"{j:010d}.txt").write_text(data + "\n")
    (oxts / "timestamps.txt").write_text("".join(t + "\n" for t, _ in lines))
    data = kitti.read_oxts(oxts)
    assert list(data.index) == [0, 6]
    assert np.diff(data.stamps_ns).tolist() == [600_000_000]
    np.testing.assert_array_equal(data.values[0], _oxts_values(0))
    why = {p.name: reason for p, reason in data.skipped}
    assert why == {
        "0000000001.txt": "3 numbers instead of 30",
        "0000000002.txt": "timestamps.txt line 3 is not a date",
        "0000000003.txt": "missing",
        "0000000004.txt": why["0000000004.txt"],
        "0000000005.txt": "its timestamp is not after the previous sample's",
    }
    assert why["0000000004.txt"].startswith("unreadable")


def test_raw_start_from_the_devkit_table(tmp_path):
    assert kitti.raw_start_frame("08", tmp_path / "2011_09_30_drive_0028_sync" / "oxts") == 1100
    assert kitti.raw_start_frame("00", tmp_path / "2011_10_03_drive_0027_sync" / "oxts") == 0
    assert kitti.raw_start_frame("11", tmp_path / "2011_10_03_drive_0027_sync" / "oxts") == 0
    assert kitti.raw_start_frame("08", tmp_path / "my_drive" / "oxts") == 0
    with pytest.raises(kitti.KittiError, match="2011_09_30_drive_0028"):
        kitti.raw_start_frame("08", tmp_path / "2011_09_30_drive_0027_sync" / "oxts")


def _bad_cases(root: Path, dataset: Path) -> dict[str, tuple[list[str], str]]:
    wrong = make_raw_drive(root / "wrong", drive="2011_09_30_drive_0028")
    short = make_raw_drive(root / "short", n=3)
    none_good = make_raw_drive(root / "none", n=2)
    for f in (none_good / "data").iterdir():
        f.write_text("garbage\n")
    far = make_raw_drive(root / "far", n=40)
    later = make_raw_drive(root / "later")  # the OXTS clock an hour off the images'
    stamps = (later / "timestamps.txt").read_text().splitlines()
    shifted = [np.datetime64(t, "ns") + np.timedelta64(3600, "s") for t in stamps]
    (later / "timestamps.txt").write_text("".join(_fmt(t.astype(np.int64)) + "\n" for t in shifted))
    return {
        "missing folder": (["--oxts", str(root / "nope")], "OXTS folder not found"),
        "another drive": (["--oxts", str(wrong)], "sequence 00 is raw drive 2011_10_03_drive_0027"),
        "too few frames": (["--oxts", str(short)], "has 3 frames"),
        "no usable sample": (["--oxts", str(none_good)], "holds no usable OXTS sample"),
        "raw-start without oxts": (["--raw-start", "3"], "--raw-start needs --oxts"),
        "negative raw-start": (["--oxts", str(far), "--raw-start", "-1"], "must be >= 0"),
        # 5 frames from drive frame 36 need 41
        "beyond the drive": (["--oxts", str(far), "--raw-start", "36"], "has 40 frames"),
        "no sample in the span": (["--oxts", str(later)], "falls within the written frames'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "another drive",
        "too few frames",
        "no usable sample",
        "raw-start without oxts",
        "negative raw-start",
        "beyond the drive",
        "no sample in the span",
    ],
)
def test_bad_oxts_input_exit_2_and_no_bag(case, dataset, tmp_path, capsys):
    args, expected = _bad_cases(tmp_path, dataset)[case]
    bag = tmp_path / "bag"
    assert main([str(dataset), "-o", str(bag), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert err.count("error:") == 1
    assert not bag.exists()


@pytest.mark.ros
def test_rclpy_reads_them_and_the_bag_player_replays_them(oxts_bag):
    """ROS's own deserializer takes the messages, and scal3r_play_bag publishes both
    topics (it checks every message against rclpy's type before publishing it)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu, NavSatFix

    bag, _, _ = oxts_bag
    msgs = _read(bag)
    fix = deserialize_message(bytes(msgs[GPS][0][2]), NavSatFix)
    assert fix.latitude == _oxts_values(0)[0] and fix.status.status == 2
    imu = deserialize_message(bytes(msgs[IMU][-1][2]), Imu)
    assert imu.linear_acceleration.z == _oxts_values(4)[kitti.OXTS["az"]]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scal3r_ros.tools.bag_player",
            str(bag),
            "-q",
            "--no-clock",
            "--rate",
            "10",
            "--topics",
            GPS,
            IMU,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{GPS} [sensor_msgs/msg/NavSatFix]: 4" in out
    assert f"{IMU} [sensor_msgs/msg/Imu]: 4" in out
