"""scal3r_evaluate against evo (ATE, RPE) and against the KITTI devkit's definition.

Real data: the first 1201 poses of KITTI 00 (ground truth + an ORB-SLAM estimate, from
evo's test data; see test/data/kitti00_SOURCE.md). Synthetic: the built-in drive with
noise, a Sim(3) gauge and jittered stamps (TUM association).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scal3r_ros.mapping import metrics
from scal3r_ros.mapping.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.tools import evaluate as ev

evo_metrics = pytest.importorskip("evo.core.metrics")
from evo.core import sync  # noqa: E402
from evo.core.trajectory import PosePath3D  # noqa: E402
from evo.tools import file_interface  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
GT = DATA / "kitti00_gt_first1201.txt"
ORB = DATA / "kitti00_orb_first1201.txt"
TIMES = DATA / "kitti00_times_first1201.txt"


def _evo_ape(ref, est, correct_scale=True, relation=None):
    est = copy.deepcopy(est)
    est.align(ref, correct_scale=correct_scale)
    m = evo_metrics.APE(relation or evo_metrics.PoseRelation.translation_part)
    m.process_data((ref, est))
    return m, est


def _evo_rpe(ref, est_aligned, relation, delta, unit, all_pairs=False):
    m = evo_metrics.RPE(relation, delta, unit, all_pairs=all_pairs, pairs_from_reference=True)
    m.process_data((ref, est_aligned))
    return m


def _close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# ------------------------------------------------------------------ real KITTI data
@pytest.fixture(scope="module")
def kitti():
    ref = file_interface.read_kitti_poses_file(str(GT))
    est = file_interface.read_kitti_poses_file(str(ORB))
    return ref, est


@pytest.mark.parametrize("align", ["sim3", "se3"])
def test_ate_matches_evo_on_kitti00(kitti, tmp_path, align):
    ref, est = kitti
    cfg = ev.EvalConfig(align=align, plots=False)
    s = ev.evaluate_files(ORB, GT, tmp_path, cfg)
    ape, _ = _evo_ape(ref, est, correct_scale=(align == "sim3"))
    ours = s["ate"]["translation_m"]
    for key in ("rmse", "mean", "median", "std", "min", "max"):
        assert _close(ours[key], ape.get_statistic(getattr(evo_metrics.StatisticsType, key)),
                      rel=1e-7), key  # fmt: skip
    assert s["n_poses"] == 1201 and s["matched_by"].startswith("index")
    # orientation part: evo's APE on rotation angles of the same aligned estimate
    ape_r, _ = _evo_ape(ref, est, align == "sim3", evo_metrics.PoseRelation.rotation_angle_deg)
    assert _close(s["ate"]["rotation_deg"]["rmse"], ape_r.get_statistic(
        evo_metrics.StatisticsType.rmse), rel=1e-6)  # fmt: skip
    assert json.loads((tmp_path / "evaluation.json").read_text())["ate"] == s["ate"]


@pytest.mark.parametrize(
    "delta,unit,all_pairs",
    [
        (1, "frames", False),
        (10, "frames", False),
        (10, "frames", True),
        (100.0, "m", False),
        (50.0, "m", True),
    ],  # fmt: skip
)
def test_rpe_matches_evo_on_kitti00(kitti, delta, unit, all_pairs):
    ref, est = kitti
    _, est_al = _evo_ape(ref, est, correct_scale=True)
    evo_unit = evo_metrics.Unit.frames if unit == "frames" else evo_metrics.Unit.meters
    cfg = ev.EvalConfig(rpe_delta=delta, rpe_unit=unit, rpe_all_pairs=all_pairs, plots=False)
    s = ev.evaluate_poses(np.array(est.poses_se3), np.array(ref.poses_se3), cfg)
    rt = _evo_rpe(ref, est_al, evo_metrics.PoseRelation.translation_part, delta, evo_unit,
                  all_pairs)  # fmt: skip
    rr = _evo_rpe(ref, est_al, evo_metrics.PoseRelation.rotation_angle_deg, delta, evo_unit,
                  all_pairs)  # fmt: skip
    assert s["rpe"]["n_pairs"] == len(rt.error) > 5
    for key in ("rmse", "mean", "max", "median"):
        st = getattr(evo_metrics.StatisticsType, key)
        assert _close(s["rpe"]["translation_m"][key], rt.get_statistic(st), rel=1e-6), key
        assert _close(s["rpe"]["rotation_deg"][key], rr.get_statistic(st), rel=1e-6,
                      abs_=1e-7), key  # fmt: skip


def _devkit_reference(est: np.ndarray, gt: np.ndarray, lengths, step=10):
    """Plain transcription of the devkit's loops (calcSequenceErrors), for comparison."""
    dist = [0.0]
    for i in range(1, len(gt)):
        dist.append(dist[-1] + float(np.linalg.norm(gt[i, :3, 3] - gt[i - 1, :3, 3])))
    t_errs, r_errs = [], []
    for first in range(0, len(gt), step):
        for L in lengths:
            last = next((i for i in range(first, len(gt)) if dist[i] > dist[first] + L), -1)
            if last == -1:
                continue
            d_gt = np.linalg.inv(gt[first]) @ gt[last]
            d_est = np.linalg.inv(est[first]) @ est[last]
            e = np.linalg.inv(d_est) @ d_gt
            c = max(min(0.5 * (e[0, 0] + e[1, 1] + e[2, 2] - 1.0), 1.0), -1.0)
            r_errs.append(math.acos(c) / L)
            t_errs.append(float(np.linalg.norm(e[:3, 3])) / L)
    return 100 * np.mean(t_errs), np.degrees(np.mean(r_errs)) * 100, len(t_errs)


def test_kitti_metric_matches_devkit_transcription_on_kitti00(kitti):
    ref, est = kitti
    gt = np.array(ref.poses_se3)
    _, est_al = _evo_ape(ref, est, correct_scale=True)  # evo's Sim(3) alignment
    e = np.array(est_al.poses_se3)
    t, r, n = _devkit_reference(e, gt, metrics.KITTI_LENGTHS)
    k = metrics.kitti_errors(e, gt)
    assert len(k.segments) == n > 400
    assert _close(k.t_err_pct, t, rel=1e-9) and _close(k.r_err_deg_per_100m, r, rel=1e-7)
    assert k.per_length()[800.0][2] > 0 and not k.note  # the excerpt is ~880 m long
    # through the tool (its own alignment): same numbers
    s = ev.evaluate_poses(np.array(est.poses_se3), gt, ev.EvalConfig(plots=False))
    assert _close(s["kitti"]["t_err_pct"], t, rel=1e-6)
    assert _close(s["kitti"]["r_err_deg_per_100m"], r, rel=1e-6)


def test_kitti_metric_known_scale_error():
    """Straight 1 m steps, estimate 10 % too long, no alignment: a segment of L m ends at
    the first frame more than L m away (L + 1 m), so its error is 0.1 (L + 1) / L."""
    n = 400
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 2, 3] = np.arange(n)  # forward along camera z
    est = gt.copy()
    est[:, :3, 3] *= 1.1
    lengths = (50.0, 100.0, 200.0)
    k = metrics.kitti_errors(est, gt, lengths, step=10)
    per = k.per_length()
    for L in lengths:
        assert per[L][0] == pytest.approx(10.0 * (L + 1) / L, rel=1e-12)
        assert per[L][1] == pytest.approx(0.0, abs=1e-12)
        assert per[L][2] == len(range(0, n - int(L) - 1, 10))
    expected = np.mean(k.segments[:, 2])  # mean over segments, not over lengths
    assert k.t_err_pct == pytest.approx(100 * expected)
    # a known heading drift: 1 deg yaw per 10 m gives ~10 deg/100 m (chord < arc length)
    yaw = np.radians(0.1) * np.arange(n)
    curved = np.tile(np.eye(4), (n, 1, 1))
    c, s = np.cos(yaw), np.sin(yaw)
    curved[:, 0, 0], curved[:, 0, 2], curved[:, 2, 0], curved[:, 2, 2] = c, s, -s, c
    curved[:, :3, 3] = gt[:, :3, 3]
    k2 = metrics.kitti_errors(curved, gt, (100.0,), step=10)
    assert k2.r_err_deg_per_100m == pytest.approx(0.1 * 101, rel=1e-9)


def test_short_sequence_reports_nan_and_says_why(tmp_path):
    drive = SyntheticDrive(SyntheticConfig(n_frames=200))
    gt = drive.gt_poses()[:30]  # ~28 m
    stamps = np.array([drive.stamp_ns(i) for i in range(30)])
    write_poses(tmp_path / "gt.txt", stamps, gt, "tum")
    write_poses(tmp_path / "est.txt", stamps, gt, "tum")
    s = ev.evaluate_files(tmp_path / "est.txt", tmp_path / "gt.txt", tmp_path / "out")
    assert s["kitti"]["t_err_pct"] is None and s["kitti"]["n_segments"] == 0
    assert "shorter than the shortest segment" in s["kitti"]["note"]
    js = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert js["kitti"]["t_err_pct"] is None
    assert "nan" in ev.format_table(s)
    # custom short lengths give real numbers (exact estimate: zero error)
    s2 = ev.evaluate_files(tmp_path / "est.txt", tmp_path / "gt.txt", None,
                           ev.EvalConfig(kitti_lengths=(5.0, 10.0)))  # fmt: skip
    assert s2["kitti"]["n_segments"] > 0 and s2["kitti"]["t_err_pct"] < 1e-9


# ------------------------------------------------------------------ TUM association
def _noisy_estimate(drive: SyntheticDrive, seed: int = 1):
    """Drive GT with pose noise, a Sim(3) gauge (scale 0.37), a few frames dropped."""
    rng = np.random.default_rng(seed)
    gt = drive.gt_poses()
    n = len(gt)
    keep = np.sort(rng.choice(n, size=n - 12, replace=False))
    from scipy.spatial.transform import Rotation

    est = gt[keep].copy()
    est[:, :3, 3] += rng.normal(scale=0.15, size=(len(keep), 3))
    est[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.01, size=(len(keep), 3))
                                          ).as_matrix() @ est[:, :3, :3]  # fmt: skip
    G = metrics.Sim3(0.37, Rotation.from_euler("xyz", [0.3, -1.0, 2.0]).as_matrix(), [5, -2, 1])
    est = metrics.apply_alignment(G, est)
    stamps = np.array([drive.stamp_ns(i) for i in keep]) + rng.integers(-4, 5, len(keep)) * 10**6
    return keep, stamps, est


def test_tum_association_matches_evo(tmp_path):
    drive = SyntheticDrive(SyntheticConfig(n_frames=150))
    keep, stamps, est = _noisy_estimate(drive)
    gt_stamps = np.array([drive.stamp_ns(i) for i in range(drive.n_frames)])
    write_poses(tmp_path / "gt.txt", gt_stamps, drive.gt_poses(), "tum")
    write_poses(tmp_path / "est.txt", stamps, est, "tum")
    s = ev.evaluate_files(tmp_path / "est.txt", tmp_path / "gt.txt", tmp_path / "o",
                          ev.EvalConfig(kitti_lengths=(20.0, 40.0)))  # fmt: skip
    ref_t = file_interface.read_tum_trajectory_file(str(tmp_path / "gt.txt"))
    est_t = file_interface.read_tum_trajectory_file(str(tmp_path / "est.txt"))
    ref_s, est_s = sync.associate_trajectories(ref_t, est_t, max_diff=0.01)
    assert s["n_poses"] == est_s.num_poses == len(keep)
    ape, est_al = _evo_ape(ref_s, est_s)
    assert _close(s["ate"]["translation_m"]["rmse"],
                  ape.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-7)  # fmt: skip
    assert s["ate"]["sim3"]["scale"] == pytest.approx(1 / 0.37, rel=0.02)
    rpe = _evo_rpe(ref_s, est_al, evo_metrics.PoseRelation.translation_part, 1,
                   evo_metrics.Unit.frames)  # fmt: skip
    assert _close(s["rpe"]["translation_m"]["rmse"],
                  rpe.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-6)  # fmt: skip
    # the noise is what the ATE sees: ~0.15 m per axis -> ~0.26 m
    assert 0.15 < s["ate"]["translation_m"]["rmse"] < 0.4
    for name in ("trajectory.png", "errors.png", "evaluation.json"):
        assert (tmp_path / "o" / name).stat().st_size > 1000


def test_associate_stamps_nearest_within_max_diff():
    i_e, i_g = ev.associate_stamps(np.array([0.0, 1.004, 2.02, 3.0]), np.arange(0, 5, 0.5))
    assert i_e.tolist() == [0, 1, 3] and i_g.tolist() == [0, 2, 6]
    # the estimate longer than the ground truth: walk the ground truth instead
    i_e, i_g = ev.associate_stamps(np.arange(0, 5, 0.5), np.array([1.004, 3.0]))
    assert i_e.tolist() == [2, 6] and i_g.tolist() == [0, 1]


def test_kitti_gt_with_times_associates_a_tum_estimate(tmp_path):
    ref = file_interface.read_kitti_poses_file(str(GT))
    gt = np.array(ref.poses_se3)
    t = np.loadtxt(TIMES)
    sel = np.arange(0, len(gt), 3)
    stamps = np.round(t[sel] * 1e9).astype(np.int64)
    write_poses(tmp_path / "est.txt", stamps, gt[sel], "tum")
    s = ev.evaluate_files(tmp_path / "est.txt", GT, None, ev.EvalConfig(plots=False),
                          gt_times=TIMES)  # fmt: skip
    assert s["n_poses"] == len(sel) and s["ate"]["translation_m"]["rmse"] < 1e-6
    with pytest.raises(ev.EvaluationError, match="cannot match by index"):
        ev.evaluate_files(tmp_path / "est.txt", GT, None, ev.EvalConfig(plots=False))


# ------------------------------------------------------------------ console script
def test_cli_writes_outputs_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = ev.main([str(ORB), str(GT), "--out", str(out), "--rpe-delta", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    js = json.loads((out / "evaluation.json").read_text())
    assert f"{js['ate']['translation_m']['rmse']:.4f}" in printed
    assert js["rpe"]["delta"] == 10 and js["formats"] == ["kitti", "kitti"]
    assert (out / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4 5\n")
    assert ev.main([str(bad), str(GT)]) == 2
    assert "expected 8" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("".join(GT.read_text().splitlines(keepends=True)[:100]))
    assert ev.main([str(short), str(GT), "--no-plots"]) == 2
    assert "100 estimated vs 1201" in capsys.readouterr().err


def test_alignment_modes_recover_known_transforms():
    drive = SyntheticDrive(SyntheticConfig(n_frames=60))
    gt = drive.gt_poses()
    G = metrics.Sim3(2.5, np.eye(3), [1.0, 2.0, 3.0])
    est = metrics.apply_alignment(G.inverse(), gt)
    assert metrics.ate(est, gt, "sim3").rmse < 1e-9
    assert metrics.ate(est, gt, "se3").rmse > 1.0  # scale can't be fixed rigidly
    assert metrics.ate(est, gt, "none").rmse > 1.0
    assert metrics.fit_alignment(est, gt, "scale").s == pytest.approx(2.5)
    with pytest.raises(ValueError, match="alignment"):
        metrics.ate(est, gt, "bogus")
    # PosePath3D round trip: evo agrees the SE(3) case is worse
    ape, _ = _evo_ape(PosePath3D(poses_se3=list(gt)), PosePath3D(poses_se3=list(est)), False)
    assert _close(metrics.ate(est, gt, "se3").rmse,
                  ape.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-7)  # fmt: skip
