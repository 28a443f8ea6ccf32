"""The node's saved trajectories: base_link (map frame) and camera (KITTI convention).

KITTI's poses/NN.txt, TUM RGB-D and the synthetic drive give *camera* poses; scoring the
node's base_link file against them measures the axis change (~120 deg), not the run.
``MapSaver.save`` (the node's saves) is called on an engine that mapped the synthetic drive (oracle
backend: exact geometry in a random Sim(3) gauge per chunk) with a tilted, offset mount.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.ros.frames import FrameConverter, camera_mount
from scal3r_ros.ros.saving import MapSaver
from scal3r_ros.tools import evaluate as ev

pytestmark = pytest.mark.ros
N_FRAMES = 48
LENGTHS = (10.0, 20.0)  # KITTI segment lengths that fit the short drive


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, np.ndarray, SyntheticDrive]:
    drive = make_drive(n_frames=N_FRAMES)
    eng = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(seed=3)))
    push_and_collect(eng, drive)
    _, stamps, c2w = eng.poses()
    conv = FrameConverter(camera_mount((1.2, 0.1, 1.65), (0.02, 0.08, -0.03)))
    conv.set_anchor(c2w[0])  # as the node: map = the first frame's base_link
    conv.scale = 2.0  # a scale source's estimate: carried into every saved file
    out = tmp_path_factory.mktemp("save")
    files = MapSaver(conv, out).save(eng, out, save_map=False)
    names = ["trajectory_camera_kitti.txt", "trajectory_camera_tum.txt", "trajectory_kitti.txt"]
    assert sorted(f.name for f in files) == [*names, "trajectory_tum.txt"]
    # camera ground truth in KITTI's convention: relative to the first camera
    gt = drive.gt_poses()
    gt = np.linalg.inv(gt[0]) @ gt
    write_poses(out / "gt_kitti.txt", stamps, gt, "kitti")
    write_poses(out / "gt_tum.txt", stamps, gt, "tum")
    return out, stamps, drive


def _score(out: Path, name: str, align: str = "sim3") -> dict:
    gt = out / ("gt_tum.txt" if name.endswith("tum.txt") else "gt_kitti.txt")
    cfg = ev.EvalConfig(align=align, kitti_lengths=LENGTHS, plots=False)
    return ev.evaluate_files(out / name, gt, None, cfg)


@pytest.mark.parametrize("name", ["trajectory_camera_kitti.txt", "trajectory_camera_tum.txt"])
def test_camera_trajectory_scores_as_correct_against_camera_ground_truth(saved, name):
    out, _, drive = saved
    for align in ("sim3", "scale"):  # scale only: the world frames agree (first = identity)
        s = _score(out, name, align)
        assert s["n_poses"] == N_FRAMES
        assert s["ate"]["translation_m"]["rmse"] < 1e-3 * drive.path_length(), align
        assert s["ate"]["rotation_deg"]["rmse"] < 0.01, align
        assert s["kitti"]["t_err_pct"] < 0.01 and s["kitti"]["r_err_deg_per_100m"] < 0.01


@pytest.mark.parametrize("name", ["trajectory_kitti.txt", "trajectory_tum.txt"])
def test_base_link_trajectory_is_not_a_camera_trajectory(saved, name):
    s = _score(saved[0], name)
    assert s["ate"]["rotation_deg"]["rmse"] > 90  # the optical/body axis change, ~120 deg
    assert s["kitti"]["t_err_pct"] > 50


def test_camera_files_follow_kitti_conventions(saved):
    out, stamps, _ = saved
    kitti = np.loadtxt(out / "trajectory_camera_kitti.txt")
    assert kitti.shape == (N_FRAMES, 12)
    assert np.allclose(kitti[0].reshape(3, 4), np.eye(4)[:3], atol=1e-9)  # first = identity
    tum = np.loadtxt(out / "trajectory_camera_tum.txt")
    assert np.array_equal(np.round(tum[:, 0] * 1e9).astype(np.int64), stamps)  # image stamps
    assert np.allclose(tum[:, 1:4], kitti[:, [3, 7, 11]], atol=1e-8)
    # forward is the optical z axis: the camera moves along +z of its own frame
    step = kitti[1].reshape(3, 4)[:, 3]
    assert step[2] > 0.9 * np.linalg.norm(step)
