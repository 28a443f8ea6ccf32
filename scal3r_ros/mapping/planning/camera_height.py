"""Metric scale from a known camera height above locally flat ground (plane fit per window)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.planning.scale import (
    ChunkObservation,
    GroundPlane,
    ScaleEstimate,
    ScaleSourceBase,
    SmoothingConfig,
)


@dataclass
class CameraHeightConfig:
    """Ground-plane fit knobs (thresholds are relative: the map has no units)."""

    height_m: float = 1.65  # KITTI's left colour camera above the road
    max_tilt_deg: float = 20.0  # plane normal vs the cameras' mean "up" (-y) axis
    inlier_rel: float = 0.03  # inlier if |distance| < this x the hypothesised camera height
    near_rel: float = 12.0  # use points within this x (rough height) of a chunk camera
    ransac_iters: int = 200
    max_points: int = 20_000  # candidates subsampled to this for RANSAC
    min_inliers: int = 100
    min_inlier_ratio: float = 0.15  # of the candidate points
    max_height_spread: float = 0.15  # MAD / median of the chunk cameras' heights
    conf_quantile: float = 0.0  # drop candidates below this confidence quantile
    seed: int = 0
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)


@dataclass
class PlaneFit:
    """One chunk's ground fit (engine map units)."""

    plane: GroundPlane | None
    camera_height: float  # median height of the chunk cameras above the plane
    n_candidates: int
    n_inliers: int
    reason: str = ""  # why the fit is unusable ("" when usable)


def fit_ground_plane(
    points: np.ndarray,
    c2w: np.ndarray,
    confidence: np.ndarray | None = None,
    config: CameraHeightConfig | None = None,
    rng: np.random.Generator | None = None,
) -> PlaneFit:
    """Robust ground plane under the cameras ``c2w`` (F, 4, 4; OpenCV axes, y down).

    Candidates: points below the reference (middle) camera and within ``near_rel`` x a
    rough height of some camera. RANSAC keeps planes whose normal is within
    ``max_tilt_deg`` of the cameras' up axis, scores the confidence of points within
    ``inlier_rel`` x the hypothesised camera height, then refines by least squares.
    """
    cfg = config or CameraHeightConfig()
    rng = rng or np.random.default_rng(cfg.seed)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    w = np.ones(len(pts)) if confidence is None else np.asarray(confidence, np.float64).ravel()
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    good = np.isfinite(pts).all(1) & np.isfinite(w)
    pts, w = pts[good], w[good]
    if len(c2w) == 0:
        return PlaneFit(None, float("nan"), 0, 0, "no camera poses")
    centres = c2w[:, :3, 3]
    up = -c2w[:, :3, 1].mean(0)
    up /= np.linalg.norm(up)
    ref = centres[len(centres) // 2]
    below = (ref - pts) @ up  # > 0 below the reference camera
    cand = below > 0
    if cand.sum() < cfg.min_inliers:
        return PlaneFit(None, float("nan"), int(cand.sum()), 0, "no points below the camera")
    rough = float(np.median(below[cand]))
    dmin = np.full(len(pts), np.inf)
    for c in centres:  # horizontal distance to the nearest chunk camera
        d = pts - c
        d -= np.outer(d @ up, up)
        dmin = np.minimum(dmin, np.einsum("ij,ij->i", d, d))
    cand &= np.sqrt(dmin) < cfg.near_rel * rough
    if cfg.conf_quantile > 0 and cand.any():
        cand &= w >= np.quantile(w[cand], cfg.conf_quantile)
    P, W = pts[cand], w[cand]
    n_cand = len(P)
    if n_cand < cfg.min_inliers:
        return PlaneFit(None, float("nan"), n_cand, 0, f"only {n_cand} ground candidates")
    if n_cand > cfg.max_points:
        sel = rng.choice(n_cand, cfg.max_points, replace=False)
        P, W = P[sel], W[sel]

    # ---- RANSAC, all hypotheses at once
    tri = P[rng.integers(0, len(P), size=(cfg.ransac_iters, 3))]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    okn = norm > 1e-12
    n[okn] /= norm[okn, None]
    n *= np.where(n @ up < 0, -1.0, 1.0)[:, None]
    d = -np.einsum("ij,ij->i", n, tri[:, 0])
    h0 = n @ ref + d  # hypothesised reference camera height
    cos_tilt = np.cos(np.radians(cfg.max_tilt_deg))
    okh = okn & (n @ up > cos_tilt) & (h0 > 0)
    if not okh.any():
        return PlaneFit(None, float("nan"), n_cand, 0, "no level plane below the camera")
    n, d, h0 = n[okh], d[okh], h0[okh]
    res = np.abs(P @ n.T + d)  # (M, I)
    inl = res < cfg.inlier_rel * h0
    best = int(np.argmax(W @ inl))
    mask = inl[:, best]

    # ---- least-squares refinement on the inliers (weighted), twice
    nb, db = n[best], d[best]
    for _ in range(3):
        if mask.sum() < 3:
            break
        ww = W[mask] / W[mask].sum()
        mu = ww @ P[mask]
        X = (P[mask] - mu) * np.sqrt(ww)[:, None]
        nb = np.linalg.svd(X, full_matrices=False)[2][-1]
        nb = nb if nb @ up > 0 else -nb
        db = -float(nb @ mu)
        hb = float(nb @ ref + db)
        if hb <= 0:
            break
        mask = np.abs(P @ nb + db) < cfg.inlier_rel * hb
    plane = GroundPlane(nb, db)
    heights = plane.height(centres)
    h = float(np.median(heights))
    n_in = int(mask.sum())
    reason = ""
    if n_in < cfg.min_inliers:
        reason = f"only {n_in} ground inliers"
    elif n_in < cfg.min_inlier_ratio * len(P):
        reason = f"ground inliers {n_in}/{len(P)} below {cfg.min_inlier_ratio:.0%}"
    elif np.degrees(np.arccos(np.clip(nb @ up, -1, 1))) > cfg.max_tilt_deg:
        reason = "ground plane tilted away from the camera's down axis"
    elif not (h > 0 and (heights > 0).all()):
        reason = "cameras not above the fitted plane"
    else:
        spread = float(np.median(np.abs(heights - h)) / h)
        if spread > cfg.max_height_spread:
            reason = f"camera heights above the plane disagree ({spread:.0%})"
    return PlaneFit(plane, h, n_cand, n_in, reason)


class CameraHeightScale(ScaleSourceBase):
    """scale = known camera height / fitted camera height above the ground plane."""

    name = "camera_height"

    def __init__(
        self, height_m: float | None = None, config: CameraHeightConfig | None = None
    ) -> None:
        self.config = config or CameraHeightConfig()
        if height_m is not None:
            self.config.height_m = height_m
        if not self.config.height_m > 0:
            raise ValueError(f"camera height must be > 0 m, got {self.config.height_m}")
        self._rng = np.random.default_rng(self.config.seed)
        super().__init__(self.config.smoothing)
        self.last_fit: PlaneFit | None = None

    def update(self, obs: ChunkObservation) -> ScaleEstimate:
        cams = obs.chunk_c2w if len(obs.chunk_c2w) else obs.c2w
        if len(obs.points) == 0 or len(cams) == 0:
            self.last_fit = None
            return self._finish(None, "no ground visible (no points in this chunk)")
        fit = fit_ground_plane(obs.points, cams, obs.confidence, self.config, self._rng)
        self.last_fit = fit
        if fit.reason:
            return self._finish(None, f"no ground visible ({fit.reason})")
        self._quality = min(1.0, fit.n_inliers / max(4 * self.config.min_inliers, 1))
        return self._finish(self.config.height_m / fit.camera_height, "", plane=fit.plane)
