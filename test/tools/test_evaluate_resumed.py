"""scal3r_evaluate --reference: a run resumed in a saved map, scored in that map's frame."""

from __future__ import annotations

import json

import numpy as np
from helpers import make_drive

from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.tools.evaluate import main

LAP = 60


def _sim(poses: np.ndarray, S: Sim3) -> np.ndarray:
    out = poses.copy()
    out[:, :3, :3] = S.R @ poses[:, :3, :3]
    out[:, :3, 3] = S.s * poses[:, :3, 3] @ S.R.T + S.t
    return out


def _files(tmp_path, resumed_frame: Sim3, offset_m: float):
    """GT of two laps; the saved run (lap 1) in a map frame S0; the resumed run = the
    loaded frames as saved plus lap 2 in ``resumed_frame``, shifted by ``offset_m``."""
    drive = make_drive(n_frames=2 * LAP, extra_laps=1.0)
    gt = drive.gt_poses()
    stamps = np.array([drive.stamp_ns(i) for i in range(2 * LAP)])
    S0 = Sim3(0.5, np.eye(3), np.array([3.0, -2.0, 0.5]))  # gt -> lap 1's map frame
    ref = _sim(gt[:LAP], S0)
    new = _sim(gt[LAP:], resumed_frame)
    new[:, 0, 3] += offset_m
    write_poses(tmp_path / "gt.txt", stamps, gt, "tum")
    write_poses(tmp_path / "lap1.txt", stamps[:LAP], ref, "tum")
    write_poses(tmp_path / "resumed.txt", stamps, np.concatenate([ref, new]), "tum")
    return S0


def _ate(tmp_path, *extra) -> dict:
    out = tmp_path / "eval"
    args = [str(tmp_path / "resumed.txt"), str(tmp_path / "gt.txt"), "--out", str(out)]
    rc = main([*args, "--no-plots", *extra])
    assert rc == 0
    return json.loads((out / "evaluation.json").read_text())


def test_the_new_frames_are_scored_in_the_saved_map_frame(tmp_path):
    same = Sim3(0.5, np.eye(3), np.array([3.0, -2.0, 0.5]))  # lap 1's map frame
    S0 = _files(tmp_path, resumed_frame=same, offset_m=0.2)
    res = _ate(tmp_path, "--reference", str(tmp_path / "lap1.txt"))
    assert res["n_poses"] == LAP and res["reference"]["poses_left_out"] == LAP
    assert res["reference"]["own_ate_m"] < 1e-6
    # 0.2 map units of offset, in the ground truth's metres (the map frame's scale is 0.5)
    assert abs(res["ate"]["translation_m"]["rmse"] - 0.2 / S0.s) < 1e-6


def test_a_resume_in_another_frame_is_caught_where_a_plain_alignment_hides_it(tmp_path):
    turned = Sim3(0.5, np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.array([40.0, 0, 0]))
    _files(tmp_path, resumed_frame=turned, offset_m=0.0)
    plain = _ate(tmp_path)  # sim3 over loaded + new frames: a bad fit, but of both
    ref = _ate(tmp_path, "--reference", str(tmp_path / "lap1.txt"))
    assert ref["ate"]["translation_m"]["rmse"] > 10.0  # the new frames are elsewhere
    assert ref["ate"]["translation_m"]["rmse"] > plain["ate"]["translation_m"]["rmse"]


def test_a_reference_that_covers_the_whole_estimate_is_a_clear_error(tmp_path, capsys):
    _files(tmp_path, resumed_frame=Sim3(), offset_m=0.0)
    lap1 = str(tmp_path / "lap1.txt")
    args = [lap1, str(tmp_path / "gt.txt"), "--no-plots", "--out", str(tmp_path / "e")]
    rc = main([*args, "--reference", lap1])
    assert rc == 2 and "nothing resumed" in capsys.readouterr().err
