"""The numpy geometry the package used before issue 14, kept verbatim as the test reference.

The package now runs this geometry in torch on the network's device (one implementation
for CPU and GPU); ``test_geometry_torch.py`` checks the torch path against these
functions. Nothing in ``scal3r_ros`` imports this file.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scal3r_ros.mapping.alignment import AlignmentConfig, AlignmentResult
from scal3r_ros.mapping.map_store import MapStore, _ChunkCloud, _subset
from scal3r_ros.mapping.sim3 import Sim3


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


def voxel_downsample(xyz: np.ndarray, conf: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of one point per occupied voxel (the most confident one)."""
    if len(xyz) == 0 or voxel <= 0:
        return np.arange(len(xyz))
    order = np.argsort(-conf, kind="stable")
    keys = np.floor(xyz[order] / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, first = np.unique(flat, return_index=True)
    return np.sort(order[first])


def thumbnail_descriptor(rgb: np.ndarray, size: int = 64) -> np.ndarray:
    """Official fallback: grey ``size`` x ``size`` thumbnail, zero-mean, unit-norm.

    rgb: (H, W, 3) uint8 (or (H, W) grey). Area resampling as cv2.INTER_AREA (exact for
    integer factors). Returns (size*size,) float32.
    """
    img = np.asarray(rgb)
    if img.ndim == 3:
        grey = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        grey = img.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    small = F.adaptive_avg_pool2d(t, (size, size))[0, 0].numpy().reshape(-1) / 255.0
    small = small - small.mean()
    return (small / (np.linalg.norm(small) + 1e-8)).astype(np.float32)


def thumbnail_descriptors(images: np.ndarray, size: int = 64) -> np.ndarray:
    """`thumbnail_descriptor` of each image of an (S, H, W, 3) batch -> (S, size*size)."""
    return np.stack([thumbnail_descriptor(img, size) for img in images])


class ReferenceMapStore(MapStore):
    """``MapStore`` with the numpy ``insert`` of before issue 14 (verbatim)."""

    def insert(
        self,
        chunk_id: int,
        g: Sim3,
        points: np.ndarray,
        rgb: np.ndarray,
        conf: np.ndarray,
        frame_ids: np.ndarray,
        depth: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add frames of one chunk. points: (F, H, W, 3) chunk-local; rgb (F, H, W, 3)
        uint8; conf (F, H, W); frame_ids (F,); depth (F, H, W) for validity/auto voxel.

        Returns the inserted points in the map frame (xyz, rgb, conf) for publishing.
        """
        cfg = self.config
        st = max(1, cfg.pixel_stride)
        points = points[:, ::st, ::st]
        rgb = rgb[:, ::st, ::st]
        conf = conf[:, ::st, ::st]
        valid = np.isfinite(points).all(-1) & np.isfinite(conf)
        if depth is not None:
            d = depth[:, ::st, ::st]
            valid &= np.isfinite(d) & (d > 0)
        mean = np.array(
            [c[v].mean() if v.any() else np.inf for c, v in zip(conf, valid, strict=True)]
        )
        keep = valid & (conf > cfg.conf_ratio * mean[:, None, None])
        if self.voxel_size <= 0:
            if depth is not None and keep.any():
                med = float(np.median(depth[:, ::st, ::st][keep])) * g.s
            else:
                pts_w = g.apply(points[keep].reshape(-1, 3).astype(np.float64))
                med = (
                    float(np.median(np.linalg.norm(pts_w - pts_w.mean(0), axis=1)))
                    if len(pts_w)
                    else 0.0
                )
            self.voxel_size = max(med * cfg.auto_voxel_rel, 1e-9)
        fid = np.broadcast_to(np.asarray(frame_ids, np.int64)[:, None, None], keep.shape)
        cloud = _ChunkCloud(
            xyz=points[keep].astype(np.float32),
            rgb=rgb[keep].astype(np.uint8),
            conf=conf[keep].astype(np.float32),
            frame=fid[keep].copy(),
        )
        old = self._clouds.get(chunk_id)
        if old is not None:
            cloud = _ChunkCloud(
                np.concatenate([old.xyz, cloud.xyz]),
                np.concatenate([old.rgb, cloud.rgb]),
                np.concatenate([old.conf, cloud.conf]),
                np.concatenate([old.frame, cloud.frame]),
                old.level,
            )
        self._poses[chunk_id] = g
        sel = voxel_downsample(cloud.xyz, cloud.conf, self._local_voxel(chunk_id, cloud.level))
        self._clouds[chunk_id] = _subset(cloud, sel)
        self._enforce_cap()
        c = self._clouds.get(chunk_id)
        if c is None:
            z = np.zeros((0, 3), np.float32)
            return z, z.astype(np.uint8), np.zeros(0, np.float32)
        is_new = np.isin(c.frame, np.asarray(frame_ids, np.int64))
        return g.apply(c.xyz[is_new]).astype(np.float32), c.rgb[is_new], c.conf[is_new]
