"""Robust Sim(3) between two chunks' same-pixel points, as the official release does it.

The official pipeline (``scal3r/utils/pgo/aligner.py``, ``robust_weighted_align_sim3``)
ties consecutive chunks together with a confidence-weighted, Huber-reweighted Sim(3)
fit on the points of their shared (overlap) frames. We reproduce its arithmetic:

- keep points whose confidence exceeds ``conf_threshold`` x the smaller of the two
  median confidences, in both clouds;
- initial weights ``sqrt(c_src * c_dst)``;
- scale = ratio of the weighted RMS spreads (not Umeyama's trace formula);
- up to ``max_iters`` IRLS steps with Huber weights (delta 0.1, absolute units of dst);
- the stop test compares the *new* fit with the previous one but, when it fires, the
  previous fit is returned (the new one is discarded) -- **[quirk]** kept for parity;
- SVDs in float32.

On top of that we detect degenerate overlaps (too few confident points, no spread,
collinear points, implausible scale, few inliers) and report them in the result
instead of raising, so the engine can refuse to let a bad fit corrupt the map.
Loop-closure verification uses the same entry point. When the points cannot be trusted,
``pose_fallback`` places a chunk from the shared frames' predicted camera poses instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.sim3 import Sim3, as_rotation


@dataclass
class AlignmentConfig:
    """Knobs of the robust fit (official defaults) and of the degeneracy checks (ours)."""

    conf_threshold: float = 0.1  # x min(median conf) -- official
    huber_delta: float = 0.1  # absolute, in dst units -- official
    max_iters: int = 5  # official
    exit_thres: float = 1e-9  # official
    max_points_per_frame: int | None = None  # official option; None = all
    # --- degeneracy detection (not in the official code) ---
    min_points: int = 50  # confident correspondences needed at all
    min_singular_ratio: float = 1e-4  # sv[1]/sv[0] of the cross-covariance: collinear below
    min_spread_rel: float = 1e-5  # RMS spread / max(|centroid|, 1) must exceed this
    scale_range: tuple[float, float] = (1e-3, 1e3)  # plausible |log s|
    inlier_rel: float = 0.05  # inlier if residual < inlier_rel * RMS spread of dst ...
    inlier_abs: float | None = None  # ... or this absolute threshold when set
    min_inlier_ratio: float = 0.3  # weighted fraction of inliers required


@dataclass
class AlignmentResult:
    """Outcome of one fit: ``sim3`` maps src coordinates into dst coordinates.

    ``ok`` is False when the fit must not be trusted; ``reason`` then says why
    ("too_few_points", "no_spread", "collinear", "implausible_scale",
    "low_inlier_ratio", "non_finite"). ``sim3`` is still the best estimate (identity
    when none could be computed).
    """

    sim3: Sim3
    n_points: int
    inlier_ratio: float
    rmse: float
    ok: bool
    reason: str = ""
    n_iters: int = 0
    extras: dict[str, float] = field(default_factory=dict)


def _weighted_fit(
    src: np.ndarray, dst: np.ndarray, w: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One weighted Sim(3) fit, official arithmetic (float32, spread-ratio scale).

    Returns (s, R, t, singular values of the cross-covariance).
    """
    wsum = float(np.sum(w))
    if not wsum >= 1e-6:
        raise ValueError("total weight too small")
    wn = (w / wsum).astype(np.float32)
    mu_s = (wn[:, None] * src).sum(0)
    mu_d = (wn[:, None] * dst).sum(0)
    xs = src - mu_s
    xd = dst - mu_d
    spread_s = float(np.sqrt(np.sum(wn * np.sum(xs * xs, axis=1))))
    spread_d = float(np.sqrt(np.sum(wn * np.sum(xd * xd, axis=1))))
    if not spread_s > 0:
        raise ValueError("source has no spread")
    s = spread_d / spread_s
    sw = np.sqrt(wn)[:, None]
    H = ((s * xs) * sw).T @ (xd * sw)
    U, sv, Vt = np.linalg.svd(H.astype(np.float32))
    R = Vt.T @ U.T
    if np.linalg.det(R) < 0:
        Vt = Vt.copy()
        Vt[2, :] *= -1
        R = Vt.T @ U.T
    t = mu_d - s * (R @ mu_s)
    return s, R.astype(np.float32), t.astype(np.float32), sv


def _huber_weight(res: np.ndarray, delta: float) -> np.ndarray:
    return np.where(res > delta, np.float32(delta) / np.maximum(res, 1e-30), np.float32(1.0))


def _huber_loss(res: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(res)
    return np.where(a <= delta, 0.5 * res * res, delta * (a - 0.5 * delta)).astype(np.float32)


def _fail(n: int, reason: str, sim3: Sim3 | None = None, **extras: float) -> AlignmentResult:
    return AlignmentResult(
        sim3=sim3 or Sim3.identity(),
        n_points=n,
        inlier_ratio=0.0,
        rmse=float("nan"),
        ok=False,
        reason=reason,
        extras=dict(extras),
    )


def align_points(
    src: np.ndarray,
    dst: np.ndarray,
    conf_src: np.ndarray | None = None,
    conf_dst: np.ndarray | None = None,
    config: AlignmentConfig | None = None,
) -> AlignmentResult:
    """Robust Sim(3) with dst ~ s R src + t from corresponding points (N, 3).

    Non-finite points/confidences are dropped first (the official code drops
    non-finite or non-positive depth before calling the aligner). Confidences default
    to ones.
    """
    cfg = config or AlignmentConfig()
    src = np.asarray(src, dtype=np.float32).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float32).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"align_points: shape mismatch {src.shape} vs {dst.shape}")
    n_in = len(src)
    cs = np.ones(n_in, np.float32) if conf_src is None else np.asarray(conf_src, np.float32)
    cd = np.ones(n_in, np.float32) if conf_dst is None else np.asarray(conf_dst, np.float32)
    cs, cd = cs.reshape(-1), cd.reshape(-1)
    finite = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(cs) & np.isfinite(cd)
    src, dst, cs, cd = src[finite], dst[finite], cs[finite], cd[finite]
    if len(src) < max(cfg.min_points, 3):
        return _fail(len(src), "too_few_points", n_input=n_in)

    # Confidence mask and initial weights (official compute_weight).
    thr = min(float(np.median(cd)), float(np.median(cs))) * cfg.conf_threshold
    m = (cd > thr) & (cs > thr)
    src, dst = np.ascontiguousarray(src[m]), np.ascontiguousarray(dst[m])
    w0 = np.sqrt(cd[m] * cs[m]).astype(np.float32)
    n = len(src)
    if n < max(cfg.min_points, 3) or not float(w0.sum()) >= 1e-6:
        return _fail(n, "too_few_points", n_input=n_in)

    try:
        s, R, t, sv = _weighted_fit(src, dst, w0)
    except ValueError:
        return _fail(n, "no_spread", n_input=n_in)

    prev_err = float("inf")
    n_iters = 0
    for _ in range(cfg.max_iters):
        n_iters += 1
        res = np.linalg.norm(dst - (s * (src @ R.T) + t), axis=1).astype(np.float32)
        w = w0 * _huber_weight(res, cfg.huber_delta)
        w = w / (float(np.sum(w)) + 1e-12)
        try:
            s2, R2, t2, sv2 = _weighted_fit(src, dst, w)
        except ValueError:
            break
        t_change = abs(s2 - s) + float(np.linalg.norm(t2 - t))
        cos = (float(np.trace(R2 @ R.T)) - 1.0) / 2.0
        r_change = float(np.arccos(min(1.0, max(-1.0, cos))))
        err = float(np.sum(_huber_loss(res, cfg.huber_delta) * w0))
        if (t_change < cfg.exit_thres and r_change < np.radians(0.1)) or (
            abs(prev_err - err) < cfg.exit_thres * prev_err
        ):
            break  # [quirk] keep the previous fit, drop (s2, R2, t2)
        prev_err = err
        s, R, t, sv = s2, R2, t2, sv2

    if not (np.isfinite(s) and np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return _fail(n, "non_finite", n_input=n_in)

    # Quality / degeneracy measures on the final fit.
    wn = w0 / float(w0.sum())
    mu_d = wn @ dst
    spread_s = float(np.sqrt(wn @ np.sum((src - wn @ src) ** 2, axis=1)))
    spread_d = float(np.sqrt(wn @ np.sum((dst - mu_d) ** 2, axis=1)))
    res = np.linalg.norm(dst - (s * (src @ R.T) + t), axis=1)
    inl_thr = cfg.inlier_abs if cfg.inlier_abs is not None else cfg.inlier_rel * spread_d
    inlier_ratio = float(wn @ (res < inl_thr))
    rmse = float(np.sqrt(wn @ (res * res)))
    sv_ratio = float(sv[1] / sv[0]) if sv[0] > 0 else 0.0
    extras = {
        "n_input": float(n_in),
        "spread_src": spread_s,
        "spread_dst": spread_d,
        "singular_ratio": sv_ratio,
        "inlier_threshold": float(inl_thr),
        "median_residual": float(np.median(res)),
    }
    try:
        sim3 = Sim3(float(s), R.astype(np.float64), t.astype(np.float64))
    except ValueError:
        return _fail(n, "implausible_scale", **extras)

    reason = ""
    mu_s = wn @ src
    if spread_s <= cfg.min_spread_rel * max(float(np.linalg.norm(mu_s)), 1.0) or (
        spread_d <= cfg.min_spread_rel * max(float(np.linalg.norm(mu_d)), 1.0)
    ):
        reason = "no_spread"
    elif sv_ratio < cfg.min_singular_ratio:
        reason = "collinear"
    elif not (cfg.scale_range[0] <= s <= cfg.scale_range[1]):
        reason = "implausible_scale"
    elif inlier_ratio < cfg.min_inlier_ratio:
        reason = "low_inlier_ratio"
    return AlignmentResult(
        sim3=sim3,
        n_points=n,
        inlier_ratio=inlier_ratio,
        rmse=rmse,
        ok=not reason,
        reason=reason,
        n_iters=n_iters,
        extras=extras,
    )


def gather_overlap(
    pts_a: np.ndarray,
    pts_b: np.ndarray,
    conf_a: np.ndarray,
    conf_b: np.ndarray,
    valid_a: np.ndarray | None = None,
    valid_b: np.ndarray | None = None,
    max_points_per_frame: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Same-pixel correspondences of shared frames (official ``Submap.find_overlap``).

    pts_*: (F, H, W, 3) points of the same F frames predicted by two chunks;
    conf_*: (F, H, W); valid_*: (F, H, W) bool (default: finite points). When
    ``max_points_per_frame`` is set, a frame keeps the points with the largest
    min(conf_a, conf_b). Returns flat (N,3), (N,3), (N,), (N,).
    """
    F = pts_a.shape[0]
    va = np.isfinite(pts_a).all(-1) if valid_a is None else valid_a
    vb = np.isfinite(pts_b).all(-1) if valid_b is None else valid_b
    outs: list[tuple[np.ndarray, ...]] = []
    for f in range(F):
        m = va[f] & vb[f]
        if not m.any():
            continue
        a, b, ca, cb = pts_a[f][m], pts_b[f][m], conf_a[f][m], conf_b[f][m]
        if max_points_per_frame is not None and len(a) > max_points_per_frame:
            keep = np.argpartition(np.minimum(ca, cb), -max_points_per_frame)[
                -max_points_per_frame:
            ]
            a, b, ca, cb = a[keep], b[keep], ca[keep], cb[keep]
        outs.append((a, b, ca, cb))
    if not outs:
        z3 = np.zeros((0, 3), np.float32)
        z = np.zeros(0, np.float32)
        return z3, z3.copy(), z, z.copy()
    return tuple(np.concatenate(x, 0) for x in zip(*outs, strict=True))  # type: ignore[return-value]


def unproject_depth(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points from z-depth with pixel centres at +0.5 (official get_rays).

    depth: (F, H, W); K: (F, 3, 3); c2w: (F, 4, 4) -> (F, H, W, 3) float32.
    """
    F, H, W = depth.shape
    u = np.arange(W, dtype=np.float32) + 0.5
    v = np.arange(H, dtype=np.float32) + 0.5
    uu, vv = np.meshgrid(u, v)
    out = np.empty((F, H, W, 3), np.float32)
    for f in range(F):
        Kf = K[f]
        x = (uu - Kf[0, 2]) / Kf[0, 0] * depth[f]
        y = (vv - Kf[1, 2]) / Kf[1, 1] * depth[f]
        cam = np.stack([x, y, depth[f]], -1).astype(np.float32)
        Rf = c2w[f, :3, :3].astype(np.float32)
        out[f] = cam @ Rf.T + c2w[f, :3, 3].astype(np.float32)
    return out


def pose_fallback(c2w_dst: np.ndarray, c2w_src: np.ndarray) -> Sim3 | None:
    """Sim(3) src-chunk -> dst-chunk from the same frames' predicted camera poses.

    Used when the point overlap is degenerate: rotation = chordal mean of
    R_dst R_src^T, scale = ratio of camera-centre spreads, translation from centroids.
    Returns None when the scale cannot be observed (a single frame / no motion).
    """
    R = as_rotation(sum(a[:3, :3] @ b[:3, :3].T for a, b in zip(c2w_dst, c2w_src, strict=True)))
    cd, cs = c2w_dst[:, :3, 3], c2w_src[:, :3, 3]
    sd = np.sqrt(((cd - cd.mean(0)) ** 2).sum(1).mean())
    ss = np.sqrt(((cs - cs.mean(0)) ** 2).sum(1).mean())
    if len(cd) < 2 or ss <= 1e-12 or sd <= 1e-12:
        return None
    s = float(sd / ss)
    return Sim3(s, R, cd.mean(0) - s * (R @ cs.mean(0)))
