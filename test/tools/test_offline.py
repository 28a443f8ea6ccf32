"""scal3r_offline end to end: synthetic drive, image folder, ROS 2 bag, tiny network.

The oracle backend returns the synthetic drive's exact geometry under a random Sim(3)
per chunk, so after chunk alignment the trajectory must match the ground truth up to
one global Sim(3): a tiny ATE checks reading, stamping, ordering and the engine path.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.tools import offline
from scal3r_ros.tools.evaluate import read_trajectory

N = 60  # frames of the small drives below (chunks 16/8 -> 7 chunks)
SMALL = ["--chunk-size", "16", "--overlap", "8", "--kitti-lengths", "10,20", "--no-progress"]
# the random tiny network on CPU, small inputs, 8/4 windows (its poses are meaningless)
TINY = ["--backend", "tiny", "--device", "cpu", "--max-size", "70", "--chunk-size", "8"]
TINY += ["--overlap", "4", "--no-loop-closure", "--no-progress"]


def _ply_vertex_count(path: Path) -> int:
    head = path.read_bytes()[:1000].split(b"end_header")[0].decode()
    assert head.startswith("ply")
    return int(next(ln.split()[2] for ln in head.splitlines() if ln.startswith("element vertex")))


def _check_outputs(out: Path, n: int) -> dict:
    tum = np.loadtxt(out / "trajectory_tum.txt", ndmin=2)
    kitti = np.loadtxt(out / "trajectory_kitti.txt", ndmin=2)
    assert tum.shape == (n, 8) and kitti.shape == (n, 12)
    assert np.all(np.diff(tum[:, 0]) > 0)
    assert _ply_vertex_count(out / "map.ply") > 1000
    run = json.loads((out / "run.json").read_text())
    assert run["frames_placed"] == n and run["gcs"] == "exact"
    return run


def _write_png_folder(folder: Path, drive: SyntheticDrive) -> None:
    folder.mkdir()
    for i in range(drive.n_frames):
        Image.fromarray(drive.render(i)[0]).save(folder / f"{i:06d}.png")


DRIVE = dict(n_frames=N)  # the conftest's ``drive`` fixture


def test_synthetic_oracle_exact_run(tmp_path, capsys):
    out = tmp_path / "syn"
    assert offline.main(["--synthetic", str(N), "--out", str(out), *SMALL]) == 0
    run = _check_outputs(out, N)
    assert run["backend"] == "oracle" and run["chunks"] == offline.n_chunks(N, 16, 8) == 7
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["ate"]["translation_m"]["rmse"] < 0.01  # drive path ~190 m
    assert ev["kitti"]["t_err_pct"] < 0.05 and ev["kitti"]["n_segments"] > 5
    assert abs(ev["ate"]["sim3"]["scale"] - 1.0) > 1e-3  # the oracle's gauge was undone
    assert (out / "trajectory.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "ATE  RMSE" in printed and str(out / "map.ply") in printed


def test_image_folder_with_tum_and_kitti_ground_truth(tmp_path, drive):
    imgs = tmp_path / "images"
    _write_png_folder(imgs, drive)
    (imgs / "notes.txt").write_text("not an image")
    drive.save_gt(tmp_path / "gt_tum.txt", "tum")
    drive.save_gt(tmp_path / "gt_kitti.txt", "kitti")
    out = tmp_path / "run_tum"
    rc = offline.main(
        [
            str(imgs),
            "--backend",
            "oracle",
            "--gt",
            str(tmp_path / "gt_tum.txt"),
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    _check_outputs(out, N)
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["matched_by"].startswith("stamps") and ev["n_poses"] == N
    assert ev["ate"]["translation_m"]["rmse"] < 0.01
    # stamps were assigned from the index with the drive's rate and start
    est = read_trajectory(out / "trajectory_tum.txt")
    assert np.allclose(est.stamps, [drive.stamp_ns(i) * 1e-9 for i in range(N)], atol=1e-6)

    # KITTI ground truth (no stamps): matched by input index, also when subsampling
    out2 = tmp_path / "run_kitti"
    rc = offline.main(
        [
            str(imgs),
            "--backend",
            "oracle",
            "--gt",
            str(tmp_path / "gt_kitti.txt"),
            "--every",
            "2",
            "--out",
            str(out2),
            *SMALL,
        ]
    )
    assert rc == 0
    ev2 = json.loads((out2 / "evaluation.json").read_text())
    assert ev2["n_poses"] == N // 2 and ev2["matched_by"].startswith("index")
    assert ev2["ate"]["translation_m"]["rmse"] < 0.01


def test_bag_input_with_topic_choice(tmp_path, drive):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Img = ts.types["sensor_msgs/msg/Image"]
    Comp = ts.types["sensor_msgs/msg/CompressedImage"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_raw = w.add_connection("/cam/image_raw", Img.__msgtype__, typestore=ts)
        c_png = w.add_connection("/cam/image_raw/compressed", Comp.__msgtype__, typestore=ts)
        for i in range(N):
            s = drive.stamp_ns(i)
            hdr = Header(stamp=Time(sec=s // 10**9, nanosec=s % 10**9), frame_id="cam")
            rgb = drive.render(i)[0]
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # bgr8: the decoder must swap back
            h, wd = rgb.shape[:2]
            msg = Img(
                header=hdr,
                height=h,
                width=wd,
                encoding="bgr8",
                is_bigendian=0,
                step=wd * 3,
                data=bgr.ravel(),
            )
            w.write(c_raw, s + 5_000_000, ts.serialize_cdr(msg, Img.__msgtype__))
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            comp = Comp(header=hdr, format="png", data=np.frombuffer(buf.getvalue(), np.uint8))
            w.write(c_png, s + 5_000_000, ts.serialize_cdr(comp, Comp.__msgtype__))
    drive.save_gt(tmp_path / "gt.txt", "tum")
    # two image topics: must choose
    assert offline.main([str(bag), "--backend", "oracle", "--out", str(tmp_path / "x")]) == 2
    for topic in ("/cam/image_raw", "/cam/image_raw/compressed"):
        out = tmp_path / topic.replace("/", "_")
        rc = offline.main(
            [
                str(bag),
                "--topic",
                topic,
                "--backend",
                "oracle",
                "--gt",
                str(tmp_path / "gt.txt"),
                "--out",
                str(out),
                *SMALL,
            ]
        )
        assert rc == 0
        _check_outputs(out, N)
        ev = json.loads((out / "evaluation.json").read_text())
        # header stamps were used (the bag's receive times are 5 ms later)
        assert ev["n_poses"] == N and ev["ate"]["translation_m"]["rmse"] < 0.01


def test_list_images_matches_the_official_order(tmp_path):
    for name in ["b.jpg", "a.png", "c.jpeg", "a0.bmp", "z.txt", "d.PNG", "10.png", "9.png"]:
        (tmp_path / name).write_bytes(b"x")
    names = [p.name for p in offline.list_images(tmp_path)]
    assert names == ["10.png", "9.png", "a.png", "a0.bmp", "b.jpg", "c.jpeg"]


def test_bad_inputs_fail_with_a_message(tmp_path, capsys):
    assert offline.main([str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert offline.main([str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no images" in capsys.readouterr().err
    assert offline.main(["--no-progress"]) == 2
    assert "--synthetic" in capsys.readouterr().err


def test_tiny_network_exact_mode(tmp_path):
    """The random tiny Scal3R network through the exact schedule on a few frames: the
    pipeline runs and writes parseable outputs (its poses are meaningless)."""
    out = tmp_path / "tiny"
    t0 = time.perf_counter()
    rc = offline.main(
        [
            "--synthetic",
            "12",
            *TINY,
            "--kitti-lengths",
            "5",
            "--out",
            str(out),
        ]
    )
    elapsed = time.perf_counter() - t0
    assert rc == 0, elapsed
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "tiny" and run["chunks"] == 2 and run["frames_placed"] == 12
    tum = np.loadtxt(out / "trajectory_tum.txt", ndmin=2)
    assert tum.shape == (12, 8) and np.isfinite(tum).all()
    assert "evaluation" in run and np.isfinite(run["evaluation"]["ate"]["translation_m"]["rmse"])


def test_kitti_sequence_folder_uses_its_times_and_ground_truth(tmp_path):
    from kitti_fixture import FRAME_DT, make_kitti_dataset

    seq = make_kitti_dataset(tmp_path / "kitti", n_frames=12, width=64, height=20)
    out = tmp_path / "k"
    rc = offline.main(
        [
            str(seq),
            *TINY,
            "--kitti-lengths",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    est = read_trajectory(out / "trajectory_tum.txt")
    assert np.allclose(est.stamps, np.arange(12) * FRAME_DT, atol=1e-6)  # times.txt
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["n_poses"] == 12 and ev["matched_by"].startswith("index")
    assert ev["ground_truth"].endswith("00.txt")
    assert ev["path_length_m"] > 5  # the fixture's ground truth, not a stand-in


@pytest.mark.parametrize("content", [None, b"definitely not a checkpoint"])
def test_scal3r_backend_without_a_usable_checkpoint_exits_2(tmp_path, monkeypatch, content):
    """No traceback: a missing (or corrupt) checkpoint is a user mistake, exit 2."""
    monkeypatch.setenv("SCAL3R_ROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCAL3R_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        "--synthetic",
        "5",
        "--backend",
        "scal3r",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    ckpt = tmp_path / "cache" / "scal3r.pt"
    if content is not None:
        ckpt = tmp_path / "mine.pt"
        ckpt.write_bytes(content)
        args += ["--checkpoint", str(ckpt)]
    proc = subprocess.run(
        [sys.executable, "-m", "scal3r_ros.tools.offline", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "scal3r_offline: error:" in proc.stderr
    assert str(ckpt) in proc.stderr
    if content is None:
        assert "hf download xbillowy/Scal3R" in proc.stderr
    else:
        assert "weights_only" not in proc.stderr
