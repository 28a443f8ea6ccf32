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
- SVDs in float32 (here: every sum in float64 over all N points, and the 3x3 SVD in
  float64 -- the last bits of s, R, t differ from the official float32, see
  ``test/mapping/test_geometry_torch.py``).

Everything per point runs in torch on the device of the points given (the network's
GPU in production; CPU for numpy input); only 3x3 moments cross to the host per fit.

On top of that we detect degenerate overlaps (too few confident points, no spread,
collinear points, implausible scale, few inliers) and report them in the result
instead of raising, so the engine can refuse to let a bad fit corrupt the map.
Loop-closure verification uses the same entry point. When the points cannot be trusted,
``pose_fallback`` places a chunk from the shared frames' predicted camera poses instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scal3r_ros.mapping.sim3 import Sim3, as_rotation
from scal3r_ros.mapping.tensors import as_tensor, device_of, full_precision, median

ArrayLike = np.ndarray | torch.Tensor


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


def _moments(X: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    """Weighted moments of the (N, 7) = [src | dst | 1] points in float64, one pass and one
    device-to-host copy: [sum w, mean (6), E[x x^T] (6x6)] (43,)."""
    G = (X * w[:, None]).T @ X  # (7, 7): sums of w x x^T, w x and w
    wsum = G[6, 6]
    return torch.cat([wsum[None], G[:6, 6] / wsum, (G[:6, :6] / wsum).reshape(-1)]).cpu().numpy()


def _fit_from_moments(
    m: np.ndarray, origin: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One weighted Sim(3) fit, official arithmetic (spread-ratio scale, SVD of the
    cross-covariance), from ``_moments`` of points shifted by ``origin`` (6,).

    Returns (s, R, t, singular values of the cross-covariance) in float64."""
    if not m[0] >= 1e-6:
        raise ValueError("total weight too small")
    mu = m[1:7]
    G = m[7:].reshape(6, 6) - np.outer(mu, mu)  # centred: sum wn (x - mu)(x - mu)^T
    spread_s = float(np.sqrt(max(np.trace(G[:3, :3]), 0.0)))
    spread_d = float(np.sqrt(max(np.trace(G[3:, 3:]), 0.0)))
    if not spread_s > 0:
        raise ValueError("source has no spread")
    s = spread_d / spread_s
    H = s * G[:3, 3:]
    if not np.isfinite(H).all():
        raise ValueError("non-finite cross-covariance")
    U, sv, Vt = np.linalg.svd(H)
    R = Vt.T @ U.T
    if np.linalg.det(R) < 0:
        Vt = Vt.copy()
        Vt[2, :] *= -1
        R = Vt.T @ U.T
    mu_s, mu_d = origin[:3] + mu[:3], origin[3:] + mu[3:]
    t = mu_d - s * (R @ mu_s)
    return s, R, t, sv


def _residuals(X: torch.Tensor, origin: np.ndarray, s: float, R: np.ndarray, t: np.ndarray):
    """|dst - (s R src + t)| per point (float64) for the origin-shifted ``X`` = [src|dst|1]."""
    A = torch.from_numpy(s * R).to(X)
    c = torch.from_numpy(origin[3:] - s * (R @ origin[:3]) - t).to(X)
    return torch.linalg.vector_norm(torch.addmm(X[:, 3:6] + c, X[:, :3], A.T, alpha=-1), dim=1)


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
    src: ArrayLike,
    dst: ArrayLike,
    conf_src: ArrayLike | None = None,
    conf_dst: ArrayLike | None = None,
    config: AlignmentConfig | None = None,
) -> AlignmentResult:
    """Robust Sim(3) with dst ~ s R src + t from corresponding points (N, 3).

    Inputs are tensors (the fit runs on their device) or numpy arrays (CPU). Non-finite
    points/confidences are dropped first (the official code drops non-finite or
    non-positive depth before calling the aligner). Confidences default to ones. Every
    sum runs in float64 over all N points; the 3x3 SVD runs on the host in float64.
    """
    cfg = config or AlignmentConfig()
    dev = device_of(src, dst, conf_src, conf_dst)
    src = as_tensor(src, dev, torch.float32).reshape(-1, 3)
    dst = as_tensor(dst, dev, torch.float32).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"align_points: shape mismatch {tuple(src.shape)} vs {tuple(dst.shape)}")
    n_in = len(src)
    ones = torch.ones(n_in, dtype=torch.float32, device=dev)
    cs = ones if conf_src is None else as_tensor(conf_src, dev, torch.float32).reshape(-1)
    cd = ones if conf_dst is None else as_tensor(conf_dst, dev, torch.float32).reshape(-1)
    finite = (
        torch.isfinite(src).all(1)
        & torch.isfinite(dst).all(1)
        & torch.isfinite(cs)
        & torch.isfinite(cd)
    )
    src, dst, cs, cd = src[finite], dst[finite], cs[finite], cd[finite]
    if len(src) < max(cfg.min_points, 3):
        return _fail(len(src), "too_few_points", n_input=n_in)

    # Confidence mask and initial weights (official compute_weight), float32 as official.
    thr = torch.tensor(
        min(median(cd), median(cs)) * cfg.conf_threshold, dtype=torch.float32, device=dev
    )
    m = (cd > thr) & (cs > thr)
    w0 = torch.sqrt(cd[m] * cs[m]).double()
    n = len(w0)
    if n < max(cfg.min_points, 3) or not float(w0.sum()) >= 1e-6:
        return _fail(n, "too_few_points", n_input=n_in)
    # [src | dst | 1] in float64, points shifted by their w0-weighted mean: a fit's moments
    # are then one product (no centring pass) that loses no precision to large coordinates.
    X = torch.cat([src[m], dst[m], torch.ones_like(cs[m])[:, None]], 1).double()
    del src, dst, cs, cd, m, finite
    origin = ((w0 / w0.sum()) @ X[:, :6]).cpu().numpy()
    X[:, :6] -= torch.from_numpy(origin).to(X)

    m_init = _moments(X, w0)
    try:
        s, R, t, sv = _fit_from_moments(m_init, origin)
    except ValueError:
        return _fail(n, "no_spread", n_input=n_in)

    prev_err = float("inf")
    n_iters = 0
    delta = cfg.huber_delta
    for _ in range(cfg.max_iters):
        n_iters += 1
        res = _residuals(X, origin, s, R, t)
        w = w0 * torch.where(res > delta, delta / res.clamp_min(1e-30), 1.0)
        w = w / (w.sum() + 1e-12)
        huber = torch.where(res <= delta, 0.5 * res * res, delta * (res - 0.5 * delta))
        err = float((huber * w0).sum())
        try:
            s2, R2, t2, sv2 = _fit_from_moments(_moments(X, w), origin)
        except ValueError:
            break
        t_change = abs(s2 - s) + float(np.linalg.norm(t2 - t))
        cos = (float(np.trace(R2 @ R.T)) - 1.0) / 2.0
        r_change = float(np.arccos(min(1.0, max(-1.0, cos))))
        if (t_change < cfg.exit_thres and r_change < np.radians(0.1)) or (
            abs(prev_err - err) < cfg.exit_thres * prev_err
        ):
            break  # [quirk] keep the previous fit, drop (s2, R2, t2)
        prev_err = err
        s, R, t, sv = s2, R2, t2, sv2

    if not (np.isfinite(s) and np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return _fail(n, "non_finite", n_input=n_in)

    # Quality / degeneracy measures on the final fit (w0-weighted, as the first fit).
    G0 = m_init[7:].reshape(6, 6) - np.outer(m_init[1:7], m_init[1:7])
    spread_s = float(np.sqrt(max(np.trace(G0[:3, :3]), 0.0)))
    spread_d = float(np.sqrt(max(np.trace(G0[3:, 3:]), 0.0)))
    mu_s, mu_d = origin[:3] + m_init[1:4], origin[3:] + m_init[4:7]
    res = _residuals(X, origin, s, R, t)
    inl_thr = cfg.inlier_abs if cfg.inlier_abs is not None else cfg.inlier_rel * spread_d
    wn = w0 / w0.sum()
    q = torch.stack([wn @ (res < inl_thr).double(), wn @ (res * res)]).cpu().numpy()
    inlier_ratio = float(q[0])
    rmse = float(np.sqrt(q[1]))
    sv_ratio = float(sv[1] / sv[0]) if sv[0] > 0 else 0.0
    extras = {
        "n_input": float(n_in),
        "spread_src": spread_s,
        "spread_dst": spread_d,
        "singular_ratio": sv_ratio,
        "inlier_threshold": float(inl_thr),
        "median_residual": median(res),
    }
    try:
        sim3 = Sim3(float(s), R, t)
    except ValueError:
        return _fail(n, "implausible_scale", **extras)

    reason = ""
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
    pts_a: ArrayLike,
    pts_b: ArrayLike,
    conf_a: ArrayLike,
    conf_b: ArrayLike,
    valid_a: ArrayLike | None = None,
    valid_b: ArrayLike | None = None,
    max_points_per_frame: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same-pixel correspondences of shared frames (official ``Submap.find_overlap``).

    pts_*: (F, H, W, 3) points of the same F frames predicted by two chunks;
    conf_*: (F, H, W); valid_*: (F, H, W) bool (default: finite points). When
    ``max_points_per_frame`` is set, a frame keeps the points with the largest
    min(conf_a, conf_b) (in pixel order). Returns flat (N,3), (N,3), (N,), (N,) tensors on
    the device of the first tensor given (CPU for numpy), frame by frame in pixel order.
    """
    dev = device_of(pts_b, pts_a, conf_b, conf_a)
    pa, pb = as_tensor(pts_a, dev), as_tensor(pts_b, dev)
    ca, cb = as_tensor(conf_a, dev), as_tensor(conf_b, dev)
    va = torch.isfinite(pa).all(-1) if valid_a is None else as_tensor(valid_a, dev, torch.bool)
    vb = torch.isfinite(pb).all(-1) if valid_b is None else as_tensor(valid_b, dev, torch.bool)
    m = va & vb
    if max_points_per_frame is None:
        return pa[m], pb[m], ca[m], cb[m]
    k = max_points_per_frame
    flat = m.reshape(len(m), -1)
    idx = []
    for f in range(len(m)):
        (pix,) = torch.nonzero(flat[f], as_tuple=True)
        if len(pix) > k:
            key = torch.minimum(ca[f].reshape(-1)[pix], cb[f].reshape(-1)[pix])
            pix = torch.sort(pix[torch.topk(key, k).indices]).values
        idx.append(pix + f * flat.shape[1])
    sel = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64, device=dev)
    return pa.reshape(-1, 3)[sel], pb.reshape(-1, 3)[sel], ca.reshape(-1)[sel], cb.reshape(-1)[sel]


def unproject_depth(depth: ArrayLike, K: ArrayLike, c2w: ArrayLike) -> torch.Tensor:
    """World points from z-depth with pixel centres at +0.5 (official get_rays).

    depth: (F, H, W); K: (F, 3, 3); c2w: (F, 4, 4) -> (F, H, W, 3) float32 tensor on the
    depth's device. Camera coordinates in float64 (as numpy promoted them with float64
    intrinsics), rounded to float32, then the float32 rigid transform.
    """
    d = as_tensor(depth, dtype=torch.float32)
    dev = d.device
    K = as_tensor(K, dev, torch.float64)
    c2w = as_tensor(c2w, dev, torch.float64)
    _, H, W = d.shape
    u = (torch.arange(W, dtype=torch.float32, device=dev) + 0.5).double()
    v = (torch.arange(H, dtype=torch.float32, device=dev) + 0.5).double()
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    cam = torch.empty((*d.shape, 3), dtype=torch.float32, device=dev)
    # products in float64, stored rounded to float32 (no full-size float64 temporary)
    torch.mul((u[None, None, :] - cx) / fx, d, out=cam[..., 0])
    torch.mul((v[None, :, None] - cy) / fy, d, out=cam[..., 1])
    cam[..., 2] = d
    R = c2w[:, :3, :3].float()
    t = c2w[:, :3, 3].float()
    with full_precision(dev):
        out = torch.baddbmm(t[:, None, :], cam.reshape(len(d), -1, 3), R.transpose(1, 2))
    return out.reshape(cam.shape)


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
