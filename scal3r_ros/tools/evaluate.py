"""`scal3r_evaluate`: score a trajectory against ground truth (ATE, RPE, KITTI errors).

Reads TUM (``t x y z qx qy qz qw``) or KITTI (12 numbers, a 3x4 pose per line) files,
auto-detected by column count. Two trajectories with stamps are associated by time
(nearest, within ``--max-diff`` seconds); a KITTI file gets stamps from a times.txt
(``--gt-times``, ``--est-times``). Without stamps on both sides poses are matched by
index, which needs equal counts (a run whose last frames have no pose cannot be matched
so: the message says which stamps to give). The estimate is aligned to the ground truth
(Sim(3) Umeyama by default: monocular scale is arbitrary), then:

- ATE RMSE (m) and orientation error, as ``evo_ape -as``;
- RPE (translation m, rotation deg) per ``--rpe-delta`` frames or metres, as
  ``evo_rpe -as``: consecutive pairs from the first pose, metres measured on the
  (aligned) estimate's path as evo's default, or on the ground truth's with
  ``--rpe-pairs-from-reference`` (evo's ``--pairs_from_reference``). evo_rpe does not
  align by default; RPE ignores a rigid alignment, so ``--align se3`` equals plain
  ``evo_rpe``, while the default Sim(3) also corrects the estimate's scale (``-as``);
- KITTI devkit translation error (%) and rotation error (deg/100 m) over 100..800 m
  segments (``--kitti-lengths`` for short runs; NaN, with a note, when none fits).

Writes ``evaluation.json`` and ``trajectory.png`` / ``errors.png`` into ``--out`` and
prints a short table. ``evaluate_poses`` is the same in-memory (offline tool, demo).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping import metrics
from scal3r_ros.tools.kitti import read_kitti_poses, read_times
from scal3r_ros.tools.kitti_to_bag import KITTI_DAY

# Which file the mapping node saves is which (shown by --help; see ros/saving.py).
NODE_FILES = """\
files the mapping node saves (output_dir/map_*/):
  trajectory_camera_kitti.txt, trajectory_camera_tum.txt
      the camera's optical frame (x right, y down, z forward) relative to the first
      saved camera pose (identity), as KITTI's poses/NN.txt: score these against
      camera ground truth (KITTI, TUM RGB-D, the synthetic drive)
  trajectory_kitti.txt, trajectory_tum.txt
      base_link in the map frame (x forward, z up): for robot-frame ground truth
      only; against camera poses the rotation error is ~120 deg (the axes differ)

KITTI (bag from scal3r_kitti_to_bag, stamps = its --start-time + times.txt):
  scal3r_evaluate runs/kitti00/map_*/trajectory_camera_tum.txt dataset/poses/00.txt \\
      --gt-times dataset/sequences/00/times.txt --out runs/kitti00/eval
  (KITTI's poses are the left grey camera's, the bag's images the left colour one's,
  0.06 m to its side: a few centimetres of ATE; rotations are the same)
"""


class EvaluationError(ValueError):
    """Unreadable or unmatched inputs (the message says which file and why)."""


@dataclass
class TrajectoryFile:
    """Poses (N, 4, 4) camera-to-world; stamps in seconds, or None (KITTI format)."""

    poses: np.ndarray
    stamps: np.ndarray | None
    fmt: str  # "tum" | "kitti"
    path: str = ""
    times_file: str = ""  # a times.txt gave the stamps (seconds from the sequence start)
    times_start: float = 0.0  # stamp of that file's zero


@dataclass
class EvalConfig:
    """How to match, align and score (defaults: evo's and the KITTI devkit's)."""

    align: str = "sim3"  # sim3 | se3 | scale | none (applies to ATE, RPE and KITTI)
    max_diff: float = 0.01  # s, TUM stamp association
    time_offset: float = 0.0  # s, added to the estimate's stamps
    rpe_delta: float = 1.0
    rpe_unit: str = "frames"  # frames | m
    rpe_all_pairs: bool = False
    rpe_pairs_from_reference: bool = False  # metres on the ground truth's path (not evo's default)
    # added to times.txt stamps; None: 0, or scal3r_kitti_to_bag's default start time when
    # the other trajectory's stamps are epoch times and the times file's are not
    gt_start_time: float | None = None
    kitti_lengths: tuple[float, ...] = metrics.KITTI_LENGTHS
    kitti_step: int = 10
    plots: bool = True
    label: str = "estimate"


# ---------------------------------------------------------------- reading
def _data_rows(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            rows.append(s.replace(",", " ").split())
    return rows


def read_tum(path: str | Path) -> TrajectoryFile:
    """TUM file -> stamps (s) and camera-to-world poses (quaternion x y z w)."""
    path = Path(path)
    rows = _data_rows(path)
    if not rows:
        raise EvaluationError(f"{path} holds no poses")
    try:
        a = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise EvaluationError(f"{path}: not a TUM trajectory ({exc})") from exc
    if a.ndim != 2 or a.shape[1] != 8:
        raise EvaluationError(f"{path}: TUM lines need 8 numbers (t x y z qx qy qz qw)")
    q = a[:, 4:8]
    if not np.all(np.linalg.norm(q, axis=1) > 0.5):
        raise EvaluationError(f"{path}: a quaternion has (near) zero norm")
    poses = np.tile(np.eye(4), (len(a), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(q).as_matrix()
    poses[:, :3, 3] = a[:, 1:4]
    return TrajectoryFile(poses, a[:, 0], "tum", str(path))


def read_trajectory(path: str | Path, fmt: str = "auto") -> TrajectoryFile:
    """TUM or KITTI trajectory file; ``auto`` looks at the first line's column count."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"trajectory file not found: {path}")
    if fmt == "auto":
        rows = _data_rows(path)
        if not rows:
            raise EvaluationError(f"{path} holds no poses")
        n = len(rows[0])
        fmt = {8: "tum", 12: "kitti"}.get(n, "")
        if not fmt:
            raise EvaluationError(
                f"{path}: {n} columns per line; expected 8 (TUM: t x y z qx qy qz qw) or "
                "12 (KITTI: 3x4 pose)"
            )
    if fmt == "tum":
        return read_tum(path)
    if fmt == "kitti":
        try:
            return TrajectoryFile(read_kitti_poses(path), None, "kitti", str(path))
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc
    raise EvaluationError(f"unknown trajectory format {fmt!r} (auto | tum | kitti)")


# ---------------------------------------------------------------- matching
def associate_stamps(
    stamps_est: np.ndarray, stamps_gt: np.ndarray, max_diff: float = 0.01, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (est, gt) of nearest stamps within ``max_diff`` s.

    Walks the shorter list so none of its poses are lost (evo's convention); each of its
    stamps takes the nearest of the other list (ties go to the earlier one).
    """
    se = np.asarray(stamps_est, np.float64) + offset
    sg = np.asarray(stamps_gt, np.float64)
    est_short = len(se) <= len(sg)
    short, long_ = (se, sg) if est_short else (sg, se)
    order = np.argsort(long_, kind="stable")
    ls = long_[order]
    if len(ls) == 0 or len(short) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = np.searchsorted(ls, short)
    lo = np.clip(k - 1, 0, len(ls) - 1)
    hi = np.clip(k, 0, len(ls) - 1)
    pick = np.where(np.abs(short - ls[lo]) <= np.abs(ls[hi] - short), lo, hi)
    ok = np.abs(ls[pick] - short) <= max_diff
    i_short = np.nonzero(ok)[0]
    i_long = order[pick[ok]]
    return (i_short, i_long) if est_short else (i_long, i_short)


def match(est: TrajectoryFile, gt: TrajectoryFile, cfg: EvalConfig) -> tuple[np.ndarray, ...]:
    """Associated (est poses, gt poses, gt stamps or None, how) for two trajectories.

    By stamps when both have them, else by index when the counts agree; otherwise an
    error that says which stamps are missing and how to give them.
    """
    if est.stamps is not None and gt.stamps is not None:
        ie, ig = associate_stamps(est.stamps, gt.stamps, cfg.max_diff, cfg.time_offset)
        if len(ie) < 3:
            hint = "check --max-diff / --time-offset"
            if gt.times_file:
                hint += (
                    f" (and --gt-start-time: the time stamp of the first line of {gt.times_file})"
                )
            raise EvaluationError(
                f"only {len(ie)} stamps of {est.path or 'the estimate'} match "
                f"{gt.path or 'the ground truth'} within {cfg.max_diff} s "
                f"(stamps {est.stamps[0]:.3f}..{est.stamps[-1]:.3f} vs "
                f"{gt.stamps[0]:.3f}..{gt.stamps[-1]:.3f}); {hint}"
            )
        how = f"stamps (max diff {cfg.max_diff} s): {len(ie)} of {len(est.poses)} est poses"
        return est.poses[ie], gt.poses[ig], gt.stamps[ig], how
    if len(est.poses) != len(gt.poses):
        raise EvaluationError(_unmatched_message(est, gt))
    return est.poses, gt.poses, gt.stamps, f"index ({len(est.poses)} poses)"


def _unmatched_message(est: TrajectoryFile, gt: TrajectoryFile) -> str:
    """Why index matching failed and which stamps would match the two by time."""
    msg = (
        f"cannot match by index: {len(est.poses)} estimated vs {len(gt.poses)} "
        "ground-truth poses, and "
    )
    missing = [name for name, t in (("estimate", est), ("ground truth", gt)) if t.stamps is None]
    msg += f"the {' and the '.join(missing)} {'have' if len(missing) > 1 else 'has'} no stamps"
    fixes = []
    if est.stamps is None:
        fix = "give the estimate's stamps: its TUM file"
        sibling = _tum_sibling(est.path)
        fix += f" ({sibling})" if sibling else ""
        fixes.append(fix + ", or --est-times with a times file of as many lines")
    if gt.stamps is None:
        fixes.append(
            "give the ground truth's stamps: --gt-times (KITTI: "
            "sequences/NN/times.txt) or a TUM file"
        )
    return msg + "; to match by time, " + "; ".join(fixes)


def _tum_sibling(path: str) -> str:
    """The TUM file the node or the offline tool wrote beside a KITTI one, if it exists."""
    p = Path(path) if path else None
    if p is None or "kitti" not in p.name:
        return ""
    q = p.with_name(p.name.replace("kitti", "tum"))
    return str(q) if q.is_file() else ""


def _times_start(cfg: EvalConfig, times: np.ndarray, other: TrajectoryFile) -> float:
    """Stamp of a times file's zero: ``gt_start_time``, or (auto) scal3r_kitti_to_bag's
    default when the other trajectory has epoch stamps and the times file has not."""
    if cfg.gt_start_time is not None:
        return float(cfg.gt_start_time)
    if other.stamps is not None and not other.times_file and len(other.stamps):
        epoch = 1e8  # s (1973): anything later is a wall-clock stamp, not a times.txt offset
        if np.min(other.stamps) + cfg.time_offset > epoch and np.max(times) < epoch:
            return KITTI_DAY
    return 0.0


def _apply_times(traj: TrajectoryFile, times_path: str | Path, start: float = 0.0) -> None:
    t = read_times(times_path)
    if len(t) != len(traj.poses):
        raise EvaluationError(
            f"{times_path} has {len(t)} times for the {len(traj.poses)} poses of "
            f"{traj.path}: a times file gives one stamp per pose line"
        )
    traj.stamps = t + start
    traj.times_file, traj.times_start = str(times_path), float(start)


# ---------------------------------------------------------------- evaluation
def evaluate_poses(est: np.ndarray, gt: np.ndarray, cfg: EvalConfig | None = None) -> dict:
    """Metrics of associated poses; returns the JSON-ready summary (NaN -> None)."""
    cfg = cfg or EvalConfig()
    result = _evaluate(metrics.as_poses(est), metrics.as_poses(gt), cfg)
    return result["summary"]


def _evaluate(est: np.ndarray, gt: np.ndarray, cfg: EvalConfig) -> dict:
    if len(est) < 3:
        raise EvaluationError(f"need at least 3 associated poses, got {len(est)}")
    try:
        a = metrics.ate(est, gt, cfg.align)
    except ValueError as exc:
        raise EvaluationError(f"alignment failed: {exc}") from exc
    r = metrics.rpe(
        a.aligned,
        gt,
        cfg.rpe_delta,
        cfg.rpe_unit,
        cfg.rpe_all_pairs,
        pairs_from_reference=cfg.rpe_pairs_from_reference,
    )
    k = metrics.kitti_errors(a.aligned, gt, cfg.kitti_lengths, cfg.kitti_step)
    summary = dict(
        n_poses=len(est),
        path_length_m=float(metrics.path_distances(gt)[-1]),
        ate=a.summary(),
        rpe=r.summary(),
        kitti=dict(k.summary(), align=cfg.align),
        config={k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(cfg).items()},
    )
    return dict(summary=_json_clean(summary), ate=a, rpe=r, kitti=k, gt=gt)


def _json_clean(x):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate_files(
    est_path: str | Path,
    gt_path: str | Path,
    out_dir: str | Path | None = None,
    cfg: EvalConfig | None = None,
    est_fmt: str = "auto",
    gt_fmt: str = "auto",
    gt_times: str | Path | None = None,
    est_times: str | Path | None = None,
    reference: str | Path | None = None,
) -> dict:
    """Read, match, score; write ``evaluation.json`` and plots into ``out_dir``.

    ``gt_times`` / ``est_times``: times.txt files giving a KITTI file its stamps (seconds;
    ``cfg.gt_start_time`` is added to the ground truth's). ``reference``: see
    `resumed_in_reference`.
    """
    cfg = cfg or EvalConfig()
    est = read_trajectory(est_path, est_fmt)
    gt = read_trajectory(gt_path, gt_fmt)
    if est_times is not None:
        _apply_times(est, est_times)
    if gt_times is not None:
        _apply_times(gt, gt_times, _times_start(cfg, read_times(gt_times), est))
    extra: dict = {}
    if reference is not None:
        est, extra = resumed_in_reference(est, read_trajectory(reference), gt, cfg)
        cfg = replace(cfg, align="none")  # the reference's alignment, applied to est
    e, g, _stamps, how = match(est, gt, cfg)
    if gt.times_file and est.stamps is not None:
        how += f"; ground-truth stamps: {gt.times_file} + {gt.times_start:.1f} s"
    res = _evaluate(e, g, cfg)
    summary = dict(
        estimate=str(est_path),
        ground_truth=str(gt_path),
        matched_by=how,
        formats=[est.fmt, gt.fmt],
        **extra,
        **res["summary"],
    )
    if out_dir is not None:
        write_outputs(res, summary, Path(out_dir), cfg)
    return summary


def resumed_in_reference(
    est: TrajectoryFile, ref: TrajectoryFile, gt: TrajectoryFile, cfg: EvalConfig
) -> tuple[TrajectoryFile, dict]:
    """A run resumed in a saved map (the node's ``map_file`` / ``~/load_map``), scored in
    that map's frame: the alignment (``cfg.align``) is fitted on the saved run's own
    trajectory ``ref`` against the ground truth, then applied unchanged to the estimate,
    whose frames that are also in ``ref`` (the loaded ones, same stamps) are left out. So
    the score says how well the new frames sit in the saved map frame, not how well they
    fit on their own. Returns the estimate moved into the ground truth's frame (score it
    with ``align`` none) and a summary of the reference."""
    if est.stamps is None or ref.stamps is None or gt.stamps is None:
        raise EvaluationError(
            "--reference needs stamps on the estimate, reference and ground truth"
        )
    r, g, _, how = match(ref, gt, cfg)
    try:
        S = metrics.fit_alignment(r, g, cfg.align)
    except ValueError as exc:
        raise EvaluationError(f"aligning the reference failed: {exc}") from exc
    own = metrics.ate(r, g, cfg.align)
    ie, _ = associate_stamps(est.stamps, ref.stamps, cfg.max_diff, cfg.time_offset)
    new = np.ones(len(est.poses), bool)
    new[ie] = False
    if new.sum() < 3:
        raise EvaluationError(
            f"{est.path or 'the estimate'} has only {int(new.sum())} poses that are not in "
            f"the reference {ref.path}: nothing resumed to score"
        )
    moved = TrajectoryFile(
        metrics.apply_alignment(S, est.poses[new]), est.stamps[new], est.fmt, est.path
    )
    info = dict(
        reference=dict(
            path=ref.path,
            matched_by=how,
            own_ate_m=_json_clean(own.rmse),
            poses_left_out=int((~new).sum()),
            alignment=cfg.align,
        )
    )
    return moved, info


def write_outputs(res: dict, summary: dict, out: Path, cfg: EvalConfig) -> dict:
    """evaluation.json (+ trajectory.png, errors.png); returns {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "evaluation.json"}
    if cfg.plots:
        files.update(plot(res, out, cfg.label))
    summary["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(summary, indent=2) + "\n")
    return files


# ---------------------------------------------------------------- plots
def _top_view_axes(p: np.ndarray) -> tuple[int, int]:
    """The two axes with the largest extent (z-up worlds: x-y; KITTI cameras: x-z)."""
    ext = np.ptp(p, axis=0)
    a, b = sorted(np.argsort(ext)[-2:])
    return int(a), int(b)


def plot(res: dict, out: Path, label: str = "estimate") -> dict[str, Path]:
    """trajectory.png (top view after alignment) and errors.png (errors over distance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt, a, k = res["gt"], res["ate"], res["kitti"]
    pg, pe = gt[:, :3, 3], a.aligned[:, :3, 3]
    i, j = _top_view_axes(pg)
    names = "xyz"
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot(pg[:, i], pg[:, j], "k-", lw=2, label="ground truth")
    ax.plot(pe[:, i], pe[:, j], "r--", lw=1.5, label=f"{label} ({a.mode}-aligned)")
    ax.plot(pg[0, i], pg[0, j], "go", label="start")
    ax.set_xlabel(f"{names[i]} [m]")
    ax.set_ylabel(f"{names[j]} [m]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"ATE RMSE {a.rmse:.3f} m over {len(pg)} poses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = {"trajectory_png": out / "trajectory.png"}
    fig.savefig(paths["trajectory_png"], dpi=120)
    plt.close(fig)

    dist = metrics.path_distances(gt)
    fig, axes = plt.subplots(2, 1, figsize=(8, 7))
    axes[0].plot(dist, a.errors, "b-")
    axes[0].set_xlabel("distance travelled [m]")
    axes[0].set_ylabel("ATE [m]")
    axes[0].set_title("absolute position error after alignment")
    axes[0].grid(alpha=0.3)
    per = k.per_length()
    lens = [L for L, (t, _r, n) in per.items() if n > 0]
    if lens:
        axes[1].plot(lens, [per[L][0] for L in lens], "bo-", label="translation [%]")
        ax2 = axes[1].twinx()
        ax2.plot(lens, [per[L][1] for L in lens], "rs--", label="rotation [deg/100 m]")
        ax2.set_ylabel("rotation error [deg/100 m]", color="r")
        axes[1].set_title(
            f"KITTI segment errors: {k.t_err_pct:.2f} %, {k.r_err_deg_per_100m:.3f} deg/100 m"
        )
    else:
        axes[1].text(
            0.5,
            0.5,
            k.note or "no KITTI segment",
            ha="center",
            va="center",
            transform=axes[1].transAxes,
            wrap=True,
        )
    axes[1].set_xlabel("segment length [m]")
    axes[1].set_ylabel("translation error [%]", color="b")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    paths["errors_png"] = out / "errors.png"
    fig.savefig(paths["errors_png"], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------- console
def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(s: dict) -> str:
    """A short human-readable table of a summary."""
    a, r, k = s["ate"], s["rpe"], s["kitti"]
    unit = "frames" if r["unit"] == "frames" else f"m on the {r['pairs_from']}'s path"
    scale = a["sim3"]["scale"]
    lines = [
        f"poses {s['n_poses']}, path {_fmt(s['path_length_m'], '.1f')} m, "
        f"alignment {a['align']} (scale {scale:.4g})",
        f"  ATE  RMSE {_fmt(a['translation_m']['rmse'])} m   mean "
        f"{_fmt(a['translation_m']['mean'])} m   max {_fmt(a['translation_m']['max'])} m   "
        f"rot RMSE {_fmt(a['rotation_deg']['rmse'], '.3f')} deg",
        f"  RPE  ({r['delta']:g} {unit}, {r['n_pairs']} pairs) trans RMSE "
        f"{_fmt(r['translation_m']['rmse'])} m   rot RMSE "
        f"{_fmt(r['rotation_deg']['rmse'], '.3f')} deg",
        f"  KITTI ({'/'.join(f'{x:g}' for x in k['lengths_m'])} m, {k['n_segments']} segments) "
        f"t_err {_fmt(k['t_err_pct'], '.3f')} %   r_err "
        f"{_fmt(k['r_err_deg_per_100m'], '.4f')} deg/100 m",
    ]
    if k.get("note"):
        lines.append(f"  note: {k['note']}")
    return "\n".join(lines)


def _lengths(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad lengths {text!r}: {exc}") from exc
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError("lengths must be positive numbers, e.g. 100,200")
    return vals


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with the offline tool."""
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--align",
        choices=metrics.ALIGN_MODES,
        default="sim3",
        help="alignment of the estimate before scoring (default sim3: monocular "
        "scale is arbitrary; none = as the KITTI devkit)",
    )
    g.add_argument(
        "--max-diff",
        type=float,
        default=0.01,
        help="max stamp difference (s) when associating by time",
    )
    g.add_argument(
        "--time-offset", type=float, default=0.0, help="seconds added to the estimate's stamps"
    )
    g.add_argument(
        "--rpe-delta",
        type=float,
        default=1.0,
        help="RPE pair spacing, in --rpe-unit; RPE is computed after --align "
        "(default sim3 = evo_rpe -as; se3 or none = plain evo_rpe)",
    )
    g.add_argument("--rpe-unit", choices=("frames", "m"), default="frames")
    g.add_argument(
        "--rpe-all-pairs",
        action="store_true",
        help="every pose starts a pair (default: consecutive pairs from the "
        "first pose, as evo_rpe)",
    )
    g.add_argument(
        "--rpe-pairs-from-reference",
        "--pairs-from-reference",
        dest="rpe_pairs_from_reference",
        action="store_true",
        help="measure --rpe-unit m on the ground truth's path (evo_rpe "
        "--pairs_from_reference); default: on the aligned estimate's path, "
        "consecutive from the first pose, as evo_rpe",
    )
    g.add_argument(
        "--kitti-lengths",
        type=_lengths,
        default=metrics.KITTI_LENGTHS,
        help="segment lengths in m (default 100,...,800 as the devkit)",
    )
    g.add_argument("--kitti-step", type=int, default=10, help="first-frame step (frames)")
    g.add_argument("--no-plots", action="store_true")


def eval_config(args: argparse.Namespace, label: str = "estimate") -> EvalConfig:
    return EvalConfig(
        align=args.align,
        max_diff=args.max_diff,
        time_offset=args.time_offset,
        rpe_delta=args.rpe_delta,
        rpe_unit=args.rpe_unit,
        rpe_all_pairs=args.rpe_all_pairs,
        rpe_pairs_from_reference=args.rpe_pairs_from_reference,
        gt_start_time=getattr(args, "gt_start_time", None),
        kitti_lengths=tuple(args.kitti_lengths),
        kitti_step=args.kitti_step,
        plots=not args.no_plots,
        label=label,
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help; the epilog's layout kept."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scal3r_evaluate",
        description=__doc__.splitlines()[0],
        epilog=NODE_FILES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("estimate", help="estimated trajectory (TUM or KITTI format)")
    parser.add_argument("ground_truth", help="ground-truth trajectory (TUM or KITTI format)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for evaluation.json and plots (default: beside the estimate, <name>_eval/)",
    )
    parser.add_argument("--est-format", choices=("auto", "tum", "kitti"), default="auto")
    parser.add_argument("--gt-format", choices=("auto", "tum", "kitti"), default="auto")
    parser.add_argument(
        "--gt-times", default=None, help="KITTI times.txt giving the ground truth stamps"
    )
    parser.add_argument(
        "--gt-start-time",
        type=float,
        default=None,
        help="stamp (s) of --gt-times' zero (scal3r_kitti_to_bag's "
        "--start-time); default: 0, or that tool's default "
        f"{KITTI_DAY:.0f} when the estimate has epoch stamps",
    )
    parser.add_argument(
        "--est-times", default=None, help="times.txt giving a KITTI-format estimate its stamps"
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="for a run resumed in a saved map (map_file, ~/load_map): the saved run's "
        "trajectory (same kind of file); --align is fitted on it against the ground truth "
        "and applied unchanged to the estimate, whose loaded frames are left out: the "
        "new frames scored in the saved map's frame",
    )
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    out = (
        Path(args.out)
        if args.out
        else Path(args.estimate).with_name(Path(args.estimate).stem + "_eval")
    )
    try:
        summary = evaluate_files(
            args.estimate,
            args.ground_truth,
            out,
            eval_config(args),
            args.est_format,
            args.gt_format,
            args.gt_times,
            args.est_times,
            args.reference,
        )
    except (EvaluationError, ValueError) as exc:
        print(f"scal3r_evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(f"matched by {summary['matched_by']}")
    print(format_table(summary))
    print(f"wrote {', '.join(summary['files'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
