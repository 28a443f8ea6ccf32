"""scal3r_evaluate against evo (ATE, RPE) and against the KITTI devkit's definition.

Real data: the first 1201 poses of KITTI 00 (ground truth + an ORB-SLAM estimate, from
evo's test data; see test/data/kitti00_SOURCE.md). evo is not a dependency: its numbers
were computed once by scripts/make_evo_fixtures.py (evo's Python API, in its own venv)
and stored in test/data/evo_expected.json (see test/data/evo_expected_SOURCE.md).
Synthetic: the built-in drive with noise, a Sim(3) gauge and jittered stamps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, make_drive
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping import metrics
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.tools import evaluate as ev
from scal3r_ros.tools.kitti import read_kitti_poses
from scal3r_ros.tools.kitti_to_bag import KITTI_DAY

GT = DATA / "kitti00_gt_first1201.txt"
ORB = DATA / "kitti00_orb_first1201.txt"
TIMES = DATA / "kitti00_times_first1201.txt"
ORB_TUM = DATA / "kitti00_orb_tum_subset.txt"  # 40 poses left out, jittered stamps
EVO = json.loads((DATA / "evo_expected.json").read_text())
STATS = ("rmse", "mean", "median", "std", "min", "max")
# Translations agree to the last bits. Rotation angles differ by ~1e-7 relative: the
# files' rotations are orthonormal to ~6e-8 only, and evo projects them onto SO(3)
# (scipy) before taking the angle while we use the matrices as written (as the devkit).
TOL = {"translation_m": dict(rel=1e-9, abs_=1e-12), "rotation_deg": dict(rel=1e-6, abs_=1e-9)}


def _close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def _assert_stats(ours: dict, evo: dict, what: str) -> None:
    for part, tol in TOL.items():
        for key in STATS:
            assert _close(ours[part][key], evo[part][key], **tol), (what, part, key)


def _case_id(c: dict) -> str:
    pairs = "all" if c["all_pairs"] else "consecutive"
    src = "ref" if c["pairs_from_reference"] else "est"
    return f"{c['align']}-{c['delta']:g}{c['unit']}-{pairs}-{src}"


def _rpe_cfg(c: dict) -> ev.EvalConfig:
    return ev.EvalConfig(
        align=c["align"],
        rpe_delta=c["delta"],
        rpe_unit=c["unit"],
        rpe_all_pairs=c["all_pairs"],
        rpe_pairs_from_reference=c["pairs_from_reference"],
        plots=False,
    )


def _assert_rpe(s: dict, c: dict) -> None:
    r = s["rpe"]
    assert r["n_pairs"] == c["n_pairs"] > 3
    assert r["pairs_from"] == ("reference" if c["pairs_from_reference"] else "estimate")
    _assert_stats(r, c, _case_id(c))


# ------------------------------------------------------------------ real KITTI data vs evo
@pytest.fixture(scope="module")
def kitti() -> tuple[np.ndarray, np.ndarray]:
    return read_kitti_poses(GT), read_kitti_poses(ORB)


def test_fixture_inputs_are_the_shipped_files():
    """evo_expected.json was computed from exactly these files (SHA-256)."""
    import hashlib

    for name, digest in EVO["provenance"]["inputs"].items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("case", EVO["kitti00"]["ape"], ids=lambda c: c["align"])
def test_ate_matches_evo_on_kitti00(tmp_path, case):
    cfg = ev.EvalConfig(align=case["align"], plots=False)
    s = ev.evaluate_files(ORB, GT, tmp_path, cfg)
    assert s["n_poses"] == case["n_poses"] == 1201 and s["matched_by"].startswith("index")
    _assert_stats(s["ate"], case, case["align"])
    assert json.loads((tmp_path / "evaluation.json").read_text())["ate"] == s["ate"]


@pytest.mark.parametrize("case", EVO["kitti00"]["rpe"], ids=_case_id)
def test_rpe_matches_evo_on_kitti00(kitti, case):
    gt, est = kitti
    cfg = _rpe_cfg(case)
    s = ev.evaluate_poses(est, gt, cfg)
    _assert_rpe(s, case)
    # the pairs themselves: evo's delta_ids are the second index of each pair
    r = metrics.rpe(
        metrics.ate(est, gt, case["align"]).aligned,
        gt,
        case["delta"],
        case["unit"],
        case["all_pairs"],
        pairs_from_reference=case["pairs_from_reference"],
    )
    if case["all_pairs"]:
        assert int(r.pairs[:, 1].sum()) == case["delta_ids_sum"]
    else:
        assert r.pairs[:, 1].tolist() == case["delta_ids"]
        assert r.pairs[0, 0] == 0  # consecutive pairs start at the first pose


def test_default_rpe_takes_metre_pairs_on_the_estimate_path_as_evo(kitti):
    """Defaults = evo_rpe's defaults (pairs on the estimate); the reference convention is
    an option, and on real data the two differ by more than the tolerance."""
    gt, est = kitti
    by_key = {
        (c["align"], c["delta"], c["unit"], c["all_pairs"], c["pairs_from_reference"]): c
        for c in EVO["kitti00"]["rpe"]
    }
    s = ev.evaluate_poses(est, gt, ev.EvalConfig(rpe_delta=100, rpe_unit="m", plots=False))
    default = by_key[("sim3", 100.0, "m", False, False)]
    from_ref = by_key[("sim3", 100.0, "m", False, True)]
    _assert_rpe(s, default)
    assert abs(default["translation_m"]["rmse"] / from_ref["translation_m"]["rmse"] - 1) > 5e-3
    # the CLI option reaches it, under evo's name too
    for flag in ("--rpe-pairs-from-reference", "--pairs-from-reference"):
        summary = _cli_summary(["--rpe-delta", "100", "--rpe-unit", "m", flag, "--no-plots"])
        _assert_rpe(summary, from_ref)


def _cli_summary(extra: list[str], est: Path = ORB, gt: Path = GT) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert ev.main([str(est), str(gt), "--out", d, *extra]) == 0
        return json.loads((Path(d) / "evaluation.json").read_text())


def test_pairs_by_distance_follow_the_chosen_path():
    """A straight drive whose estimate is twice as long: 10 m pairs are 5 frames apart
    on the estimate's path, 10 on the ground truth's, and start at the first pose."""
    n = 41
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 2, 3] = np.arange(n)  # 1 m per frame
    est = gt.copy()
    est[:, :3, 3] *= 2.0
    r_est = metrics.rpe(est, gt, 10.0, "m")
    r_ref = metrics.rpe(est, gt, 10.0, "m", pairs_from_reference=True)
    assert r_est.pairs.tolist() == [[i, i + 5] for i in range(0, 40, 5)]
    assert r_ref.pairs.tolist() == [[i, i + 10] for i in range(0, 40, 10)]
    assert np.allclose(r_est.trans_errors, 5.0) and np.allclose(r_ref.trans_errors, 10.0)
    assert r_est.summary()["pairs_from"] == "estimate"


def test_tum_estimate_against_kitti_gt_with_times_matches_evo():
    """Stamp association (40 poses missing, +-4 ms jitter) then ATE/RPE, as evo."""
    fx = EVO["kitti00_tum_subset"]
    s = ev.evaluate_files(ORB_TUM, GT, None, ev.EvalConfig(plots=False), gt_times=TIMES)
    assert s["n_poses"] == fx["n_matched"] == 1161 and s["matched_by"].startswith("stamps")
    _assert_stats(s["ate"], fx["ape"][0], "tum ape")
    for case in fx["rpe"]:
        _assert_rpe(ev.evaluate_files(ORB_TUM, GT, None, _rpe_cfg(case), gt_times=TIMES), case)


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
    gt, est = kitti
    e = metrics.ate(est, gt, "sim3").aligned
    t, r, n = _devkit_reference(e, gt, metrics.KITTI_LENGTHS)
    k = metrics.kitti_errors(e, gt)
    assert len(k.segments) == n > 400
    assert _close(k.t_err_pct, t, rel=1e-9) and _close(k.r_err_deg_per_100m, r, rel=1e-7)
    assert k.per_length()[800.0][2] > 0 and not k.note  # the excerpt is ~880 m long
    # through the tool (its own alignment): same numbers
    s = ev.evaluate_poses(est, gt, ev.EvalConfig(plots=False))
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
    drive = make_drive(n_frames=200)
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
    s2 = ev.evaluate_files(
        tmp_path / "est.txt", tmp_path / "gt.txt", None, ev.EvalConfig(kitti_lengths=(5.0, 10.0))
    )
    assert s2["kitti"]["n_segments"] > 0 and s2["kitti"]["t_err_pct"] < 1e-9


# ------------------------------------------------------------------ TUM association
def _noisy_estimate(drive: SyntheticDrive, seed: int = 1):
    """Drive GT with pose noise, a Sim(3) gauge (scale 0.37), a few frames dropped."""
    rng = np.random.default_rng(seed)
    gt = drive.gt_poses()
    n = len(gt)
    keep = np.sort(rng.choice(n, size=n - 12, replace=False))
    est = gt[keep].copy()
    est[:, :3, 3] += rng.normal(scale=0.15, size=(len(keep), 3))
    est[:, :3, :3] = (
        Rotation.from_rotvec(rng.normal(scale=0.01, size=(len(keep), 3))).as_matrix()
        @ est[:, :3, :3]
    )
    G = metrics.Sim3(0.37, Rotation.from_euler("xyz", [0.3, -1.0, 2.0]).as_matrix(), [5, -2, 1])
    est = metrics.apply_alignment(G, est)
    stamps = np.array([drive.stamp_ns(i) for i in keep]) + rng.integers(-4, 5, len(keep)) * 10**6
    return keep, stamps, est


def test_tum_association_pairs_the_right_poses(tmp_path):
    drive = make_drive(n_frames=150)
    keep, stamps, est = _noisy_estimate(drive)
    gt_stamps = np.array([drive.stamp_ns(i) for i in range(drive.n_frames)])
    write_poses(tmp_path / "gt.txt", gt_stamps, drive.gt_poses(), "tum")
    write_poses(tmp_path / "est.txt", stamps, est, "tum")
    s = ev.evaluate_files(
        tmp_path / "est.txt",
        tmp_path / "gt.txt",
        tmp_path / "o",
        ev.EvalConfig(kitti_lengths=(20.0, 40.0)),
    )
    assert s["n_poses"] == len(keep)
    # the same numbers as the known association (the files hold 9 decimals)
    known = metrics.ate(est, drive.gt_poses()[keep], "sim3")
    assert _close(s["ate"]["translation_m"]["rmse"], known.rmse, rel=1e-6)
    assert s["ate"]["sim3"]["scale"] == pytest.approx(1 / 0.37, rel=0.02)
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
    gt = read_kitti_poses(GT)
    t = np.loadtxt(TIMES)
    sel = np.arange(0, len(gt), 3)
    stamps = np.round(t[sel] * 1e9).astype(np.int64)
    write_poses(tmp_path / "est.txt", stamps, gt[sel], "tum")
    s = ev.evaluate_files(
        tmp_path / "est.txt", GT, None, ev.EvalConfig(plots=False), gt_times=TIMES
    )
    assert s["n_poses"] == len(sel) and s["ate"]["translation_m"]["rmse"] < 1e-6
    with pytest.raises(ev.EvaluationError, match="cannot match by index") as err:
        ev.evaluate_files(tmp_path / "est.txt", GT, None, ev.EvalConfig(plots=False))
    assert "ground truth has no stamps" in str(err.value) and "--gt-times" in str(err.value)


# ------------------------------------------------------------------ runs missing their tail
N_TAIL = 4  # e.g. 300 frames processed, 296 poses saved


def _tail_missing_run(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The node's two files for a run whose last frames have no pose: KITTI (no stamps)
    and TUM with the bag's stamps (scal3r_kitti_to_bag: its start time + times.txt)."""
    gt, est = read_kitti_poses(GT), read_kitti_poses(ORB)
    n = len(gt) - N_TAIL
    stamps = np.round((KITTI_DAY + np.loadtxt(TIMES)[:n]) * 1e9).astype(np.int64)
    kitti = tmp_path / "trajectory_camera_kitti.txt"
    write_poses(kitti, stamps, est[:n], "kitti")
    write_poses(tmp_path / "trajectory_camera_tum.txt", stamps, est[:n], "tum")
    return kitti, tmp_path / "trajectory_camera_tum.txt", gt, est


def test_tail_missing_kitti_estimate_says_how_to_match_by_time(tmp_path, capsys):
    kitti, tum, _, _ = _tail_missing_run(tmp_path)
    with pytest.raises(ev.EvaluationError, match="cannot match by index") as err:
        ev.evaluate_files(kitti, GT, None, ev.EvalConfig(plots=False), gt_times=TIMES)
    msg = str(err.value)
    assert f"{1201 - N_TAIL} estimated vs 1201" in msg and "estimate has no stamps" in msg
    assert str(tum) in msg and "--est-times" in msg  # names the TUM file beside it
    assert ev.main([str(kitti), str(GT), "--no-plots"]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("scal3r_evaluate: error: cannot match by index")
    assert "Traceback" not in printed and "--gt-times" in printed


def test_tail_missing_run_matches_by_stamps(tmp_path, capsys):
    """TUM estimate with the bag's epoch stamps vs KITTI poses + times.txt: associated by
    time (times.txt's zero found as scal3r_kitti_to_bag's default start), and scored as
    the same poses matched by hand."""
    kitti, tum, gt, est = _tail_missing_run(tmp_path)
    n = len(gt) - N_TAIL
    expected = ev.evaluate_poses(est[:n], gt[:n], ev.EvalConfig(plots=False))
    out = tmp_path / "eval"
    assert ev.main([str(tum), str(GT), "--gt-times", str(TIMES), "--out", str(out)]) == 0
    s = json.loads((out / "evaluation.json").read_text())
    assert s["n_poses"] == n and s["matched_by"].startswith("stamps")
    assert f"+ {KITTI_DAY:.1f} s" in s["matched_by"]
    assert f"matched by stamps (max diff 0.01 s): {n} of {n}" in capsys.readouterr().out
    for part in ("translation_m", "rotation_deg"):
        assert _close(s["ate"][part]["rmse"], expected["ate"][part]["rmse"], rel=1e-6)
    assert _close(s["kitti"]["t_err_pct"], expected["kitti"]["t_err_pct"], rel=1e-6)
    # an explicit start time that does not fit: no match, and the message says why
    assert (
        ev.main([str(tum), str(GT), "--gt-times", str(TIMES), "--gt-start-time", "0", "--no-plots"])
        == 2
    )
    assert "--gt-start-time" in capsys.readouterr().err
    # the KITTI file with its own times file (same base as the ground truth's): by time
    times = tmp_path / "est_times.txt"
    times.write_text("".join(TIMES.read_text().splitlines(keepends=True)[:n]))
    s2 = ev.evaluate_files(
        kitti, GT, None, ev.EvalConfig(plots=False), gt_times=TIMES, est_times=times
    )
    assert s2["n_poses"] == n and _close(
        s2["ate"]["translation_m"]["rmse"], expected["ate"]["translation_m"]["rmse"], rel=1e-6
    )
    # a times file that does not fit the poses is refused with both counts
    with pytest.raises(ev.EvaluationError, match=f"1201 times for the {n} poses"):
        ev.evaluate_files(kitti, GT, None, ev.EvalConfig(plots=False), est_times=TIMES)


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
    drive = make_drive(n_frames=60)
    gt = drive.gt_poses()
    G = metrics.Sim3(2.5, np.eye(3), [1.0, 2.0, 3.0])
    est = metrics.apply_alignment(G.inverse(), gt)
    assert metrics.ate(est, gt, "sim3").rmse < 1e-9
    assert metrics.ate(est, gt, "se3").rmse > 1.0  # scale can't be fixed rigidly
    assert metrics.ate(est, gt, "none").rmse > 1.0
    assert metrics.fit_alignment(est, gt, "scale").s == pytest.approx(2.5)
    with pytest.raises(ValueError, match="alignment"):
        metrics.ate(est, gt, "bogus")
