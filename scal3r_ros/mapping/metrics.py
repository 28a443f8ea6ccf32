"""Trajectory metrics: ATE, RPE and the KITTI odometry devkit's segment errors.

Why here (numpy only, no ROS): the offline tool, the demo, the benchmark and the tests
all score trajectories the same way. Definitions follow the usual tools so numbers can
be compared with published ones:

- ATE: RMSE of camera-centre distances after aligning the estimate to the ground truth
  with Umeyama (Sim(3) by default, SE(3) or none on request), as ``evo_ape -as``.
- RPE: error of the relative motion between pose pairs ``(i, j)``,
  ``E = (Q_i^-1 Q_j)^-1 (P_i^-1 P_j)``; pairs every ``delta`` frames or every ``delta``
  metres of travelled path (consecutive, non-overlapping pairs from the first pose unless
  ``all_pairs``), as ``evo_rpe``: metres are measured on the estimate's path by default
  (evo's default), on the ground truth's with ``pairs_from_reference``. Computed on the
  aligned estimate so its scale matches (as ``evo_rpe -as`` for the default Sim(3)).
- KITTI: for every 10th first frame and each segment length L (100..800 m of ground
  truth path), the relative-pose error over the segment divided by L, averaged over all
  segments (``evaluate_odometry.cpp``); translation in %, rotation in deg/100 m.

All poses are camera-to-world 4x4 matrices; ground truth and estimate must already be
associated (same length, row i = same instant).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.sim3 import Sim3, umeyama

ALIGN_MODES = ("sim3", "se3", "scale", "none")
KITTI_LENGTHS = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)


def as_poses(x: np.ndarray) -> np.ndarray:
    """(N, 4, 4) float64 from (N, 4, 4), (N, 3, 4) or (N, 12) (KITTI rows)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 12:
        a = a.reshape(-1, 3, 4)
    if a.ndim != 3 or a.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"poses must be (N, 4, 4), (N, 3, 4) or (N, 12), got {a.shape}")
    out = np.tile(np.eye(4), (len(a), 1, 1))
    out[:, :3, :] = a[:, :3, :]
    return out


def stats(errors: np.ndarray) -> dict[str, float]:
    """rmse/mean/median/std/min/max/n of an error vector (NaN when empty)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0:
        nan = float("nan")
        return dict(rmse=nan, mean=nan, median=nan, std=nan, min=nan, max=nan, n=0)
    return dict(
        rmse=float(np.sqrt(np.mean(e**2))),
        mean=float(e.mean()),
        median=float(np.median(e)),
        std=float(e.std()),
        min=float(e.min()),
        max=float(e.max()),
        n=int(e.size),
    )


def path_distances(poses: np.ndarray) -> np.ndarray:
    """Accumulated travelled distance at each pose (first = 0)."""
    p = as_poses(poses)[:, :3, 3]
    if len(p) == 0:
        return np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Geodesic angle (rad) of rotation matrices (..., 3, 3), robust near 0 and pi."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R, axis1=-2, axis2=-1)
    # sin from the skew part, cos from the trace: atan2 keeps precision at small angles
    w = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
        axis=-1,
    )
    return np.arctan2(0.5 * np.linalg.norm(w, axis=-1), np.clip(0.5 * (tr - 1.0), -1.0, 1.0))


def _relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^-1 b for stacks of rigid 4x4 (closed-form inverse)."""
    Rt = np.swapaxes(a[:, :3, :3], 1, 2)
    out = np.tile(np.eye(4), (len(a), 1, 1))
    out[:, :3, :3] = Rt @ b[:, :3, :3]
    out[:, :3, 3] = np.einsum("nij,nj->ni", Rt, b[:, :3, 3] - a[:, :3, 3])
    return out


# ---------------------------------------------------------------- alignment
def fit_alignment(est: np.ndarray, gt: np.ndarray, mode: str = "sim3") -> Sim3:
    """est -> gt transform from camera centres (Umeyama); ``scale`` fits s only."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"alignment must be one of {ALIGN_MODES}, got {mode!r}")
    pe, pg = as_poses(est)[:, :3, 3], as_poses(gt)[:, :3, 3]
    if len(pe) != len(pg):
        raise ValueError(f"est and gt must be associated: {len(pe)} vs {len(pg)} poses")
    if mode == "none":
        return Sim3()
    if mode == "scale":
        S = umeyama(pe, pg, with_scale=True)
        return Sim3(S.s)
    return umeyama(pe, pg, with_scale=(mode == "sim3"))


def apply_alignment(S: Sim3, poses: np.ndarray) -> np.ndarray:
    """Move camera-to-world poses by a similarity (centres scaled, rotations rigid)."""
    P = as_poses(poses)
    out = P.copy()
    out[:, :3, :3] = S.R @ P[:, :3, :3]
    out[:, :3, 3] = S.s * P[:, :3, 3] @ S.R.T + S.t
    return out


# ---------------------------------------------------------------- ATE
@dataclass
class AteResult:
    errors: np.ndarray  # (N,) camera-centre distances after alignment
    alignment: Sim3
    mode: str
    aligned: np.ndarray  # (N, 4, 4) estimate after alignment
    rot_errors_deg: np.ndarray  # (N,) orientation error after alignment

    @property
    def rmse(self) -> float:
        return stats(self.errors)["rmse"]

    def summary(self) -> dict:
        S = self.alignment
        return dict(
            align=self.mode,
            translation_m=stats(self.errors),
            rotation_deg=stats(self.rot_errors_deg),
            sim3=dict(scale=S.s, R=S.R.tolist(), t=S.t.tolist()),
        )


def ate(est: np.ndarray, gt: np.ndarray, align: str = "sim3") -> AteResult:
    """Absolute trajectory error of associated poses after ``align`` (see module doc)."""
    E, G = as_poses(est), as_poses(gt)
    S = fit_alignment(E, G, align)
    A = apply_alignment(S, E)
    err = np.linalg.norm(A[:, :3, 3] - G[:, :3, 3], axis=1)
    rot = np.degrees(rotation_angle(np.swapaxes(G[:, :3, :3], 1, 2) @ A[:, :3, :3]))
    return AteResult(err, S, align, A, rot)


# ---------------------------------------------------------------- RPE
def pairs_by_frames(n: int, delta: int, all_pairs: bool = False) -> np.ndarray:
    """(M, 2) index pairs ``delta`` frames apart (consecutive non-overlapping by default)."""
    if delta < 1:
        raise ValueError(f"delta in frames must be >= 1, got {delta}")
    if all_pairs:
        i = np.arange(max(n - delta, 0))
        return np.stack([i, i + delta], 1)
    ids = np.arange(0, n, delta)
    return np.stack([ids[:-1], ids[1:]], 1) if len(ids) > 1 else np.zeros((0, 2), np.int64)


def pairs_by_distance(
    poses: np.ndarray, delta_m: float, all_pairs: bool = False, tol_m: float | None = None
) -> np.ndarray:
    """(M, 2) index pairs about ``delta_m`` metres of travelled path apart.

    Consecutive: walk the path from the first pose and start a new pair each time at least
    ``delta_m`` was travelled since the last pair start (step lengths summed one by one, as
    evo, so ties break the same way). All pairs: for each i the j > i whose path distance
    is closest to ``delta_m``, kept when within ``tol_m`` (default 10 %).
    """
    if not delta_m > 0:
        raise ValueError(f"delta in metres must be > 0, got {delta_m}")
    tol = 0.1 * delta_m if tol_m is None else tol_m
    P = as_poses(poses)
    if all_pairs:
        d = path_distances(P)
        out = []
        for i in range(len(d) - 1):
            rest = d[i + 1 :] - d[i]
            k = int(np.argmin(np.abs(rest - delta_m)))
            if abs(rest[k] - delta_m) <= tol:
                out.append((i, i + 1 + k))
        return np.array(out, np.int64).reshape(-1, 2)
    ids = [0]
    acc = 0.0
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    for i, s in enumerate(steps.tolist(), start=1):
        acc += s
        if acc >= delta_m:
            ids.append(i)
            acc = 0.0
    ids_a = np.array(ids, np.int64)
    return np.stack([ids_a[:-1], ids_a[1:]], 1)


@dataclass
class RpeResult:
    pairs: np.ndarray  # (M, 2)
    trans_errors: np.ndarray  # (M,) in gt units
    rot_errors_deg: np.ndarray  # (M,)
    delta: float
    unit: str  # "frames" | "m"
    pairs_from: str = "estimate"  # path the pairs were chosen on: "estimate" | "reference"

    def summary(self) -> dict:
        return dict(
            delta=self.delta,
            unit=self.unit,
            pairs_from=self.pairs_from,
            n_pairs=len(self.pairs),
            translation_m=stats(self.trans_errors),
            rotation_deg=stats(self.rot_errors_deg),
        )


def rpe(
    est: np.ndarray,
    gt: np.ndarray,
    delta: float = 1,
    unit: str = "frames",
    all_pairs: bool = False,
    rel_tol: float = 0.1,
    pairs_from_reference: bool = False,
) -> RpeResult:
    """Relative pose error of associated (and already aligned) poses.

    Pairs in metres are taken on the estimate's path, as ``evo_rpe`` does by default, or
    on the ground truth's with ``pairs_from_reference`` (``evo_rpe --pairs_from_reference``);
    frame pairs are the same either way. With ``all_pairs`` a pair's path length must be
    within ``rel_tol * delta`` of delta.
    """
    E, G = as_poses(est), as_poses(gt)
    if len(E) != len(G):
        raise ValueError(f"est and gt must be associated: {len(E)} vs {len(G)} poses")
    if unit == "frames":
        if float(delta) != int(delta):
            raise ValueError(f"delta in frames must be an integer, got {delta}")
        pairs = pairs_by_frames(len(G), int(delta), all_pairs)
    elif unit == "m":
        path = G if pairs_from_reference else E
        pairs = pairs_by_distance(path, float(delta), all_pairs, rel_tol * float(delta))
    else:
        raise ValueError(f"RPE unit must be 'frames' or 'm', got {unit!r}")
    i, j = pairs[:, 0], pairs[:, 1]
    err = _relative(_relative(G[i], G[j]), _relative(E[i], E[j]))
    t = np.linalg.norm(err[:, :3, 3], axis=1)
    r = np.degrees(rotation_angle(err[:, :3, :3]))
    source = "reference" if pairs_from_reference else "estimate"
    return RpeResult(pairs, t, r, float(delta), unit, source)


# ---------------------------------------------------------------- KITTI devkit
@dataclass
class KittiResult:
    """Segment errors as ``evaluate_odometry.cpp``; NaN where no segment fits."""

    t_err_pct: float  # mean over all segments of |t error| / length, in %
    r_err_deg_per_100m: float  # mean over all segments of rotation error / length
    lengths: tuple[float, ...]
    step: int
    # per segment: first frame, length, t_err (fraction), r_err (rad/m)
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    path_length_m: float = 0.0
    note: str = ""

    def per_length(self) -> dict[float, tuple[float, float, int]]:
        """length -> (t_err %, r_err deg/100 m, number of segments)."""
        out = {}
        for L in self.lengths:
            s = self.segments[self.segments[:, 1] == L]
            if len(s):
                out[L] = (
                    float(100 * s[:, 2].mean()),
                    float(np.degrees(s[:, 3].mean()) * 100),
                    len(s),
                )
            else:
                out[L] = (float("nan"), float("nan"), 0)
        return out

    def summary(self) -> dict:
        return dict(
            t_err_pct=self.t_err_pct,
            r_err_deg_per_100m=self.r_err_deg_per_100m,
            n_segments=len(self.segments),
            lengths_m=list(self.lengths),
            step_frames=self.step,
            path_length_m=self.path_length_m,
            per_length={
                f"{L:g}": dict(t_err_pct=t, r_err_deg_per_100m=r, n_segments=n)
                for L, (t, r, n) in self.per_length().items()
            },
            note=self.note,
        )


def kitti_errors(
    est: np.ndarray,
    gt: np.ndarray,
    lengths: tuple[float, ...] | list[float] = KITTI_LENGTHS,
    step: int = 10,
) -> KittiResult:
    """KITTI odometry translation (%) and rotation (deg/100 m) errors.

    For each first frame (every ``step``) and length L, the last frame is the first one
    whose ground-truth path distance exceeds the first's by more than L; the error is
    ``(P_a^-1 P_b)^-1 (Q_a^-1 Q_b)`` divided by L. No alignment here: pass an aligned
    estimate (``ate(...).aligned``) when its scale is arbitrary.
    """
    E, G = as_poses(est), as_poses(gt)
    if len(E) != len(G):
        raise ValueError(f"est and gt must be associated: {len(E)} vs {len(G)} poses")
    lengths = tuple(float(L) for L in lengths)
    dist = path_distances(G)
    total = float(dist[-1]) if len(dist) else 0.0
    firsts, lens, lasts = [], [], []
    for a in range(0, len(G), step):
        for L in lengths:
            b = int(np.searchsorted(dist, dist[a] + L, side="right"))  # first dist > d_a + L
            if b < len(G):
                firsts.append(a)
                lens.append(L)
                lasts.append(b)
    if not firsts:
        nan = float("nan")
        note = (
            f"ground-truth path is {total:.1f} m, shorter than the shortest segment "
            f"({min(lengths):g} m): KITTI segment errors are undefined"
        )
        return KittiResult(nan, nan, lengths, step, np.zeros((0, 4)), total, note)
    a, b, L = np.array(firsts), np.array(lasts), np.array(lens)
    inv = np.linalg.inv  # full inverses as the devkit (KITTI's rotations are not exact)
    err = inv(inv(E[a]) @ E[b]) @ (inv(G[a]) @ G[b])
    t = np.linalg.norm(err[:, :3, 3], axis=1) / L
    # the devkit's rotation error: acos of (trace - 1) / 2, clamped
    r = np.arccos(np.clip(0.5 * (np.trace(err[:, :3, :3], axis1=1, axis2=2) - 1), -1, 1)) / L
    seg = np.stack([a, L, t, r], 1)
    missing = [f"{x:g}" for x in lengths if not np.any(L == x)]
    note = f"no segment of {', '.join(missing)} m (path {total:.1f} m)" if missing else ""
    return KittiResult(
        float(100 * t.mean()), float(np.degrees(r.mean()) * 100), lengths, step, seg, total, note
    )
