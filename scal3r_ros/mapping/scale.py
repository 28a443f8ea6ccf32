"""Metric scale sources: metres per map unit for a map of arbitrary (per-run) scale.

Why: Scal3R's geometry has an arbitrary scale, so a planner cannot use it as is. Each
source turns one kind of outside knowledge into an estimate of the map's scale:

- ``CameraHeightScale``: known camera height above a locally flat ground (RANSAC +
  least-squares plane fit on each chunk's points below the cameras);
- ``OdometryScale``: travelled-distance ratio against a reference odometry (wheel
  odometry) over a sliding time window, synchronised by stamps;
- ``StereoBaselineScale``: known stereo baseline / predicted distance between the
  paired cameras' centres (pairs by stamp);
- ``NoScale``: 1.0, "arbitrary scale".

All share ``update(obs: ChunkObservation) -> ScaleEstimate`` (call once per chunk) and
a log-domain smoother (``SmoothingConfig``): the first ``warmup`` measurements set
the estimate (running median), later ones are gated (outliers rejected), blended
exponentially and rate-limited, so the published scale never jumps. A bad input
(no ground visible, standing still, no stereo pairs, ...) keeps the last good
estimate and says why in ``ScaleEstimate.status``.

Inputs are in the engine's ``map`` frame (OpenCV axes of the first chunk's reference
camera, arbitrary units); nothing here imports ROS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.frame import MapUpdate, PointsUpdate, PosesUpdate

SCALE_SOURCES = ("none", "camera_height", "odometry", "stereo")


# ====================================================================== common types
@dataclass(frozen=True)
class GroundPlane:
    """Plane ``normal . x + offset = 0``; ``normal`` is unit and points from the ground
    towards the cameras, so ``height(x)`` is the signed height above the ground."""

    normal: np.ndarray
    offset: float

    def height(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64).reshape(-1, 3) @ self.normal + self.offset

    def transformed(self, points_fn: Callable[[np.ndarray], np.ndarray]) -> GroundPlane:
        """The same plane after a similarity given as a point map (e.g. the node's
        ``FrameConverter.points``: engine map -> ROS ``map``, scaled to metres)."""
        n = np.asarray(self.normal, dtype=np.float64)
        p0 = -self.offset * n
        a = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(n, a)
        q = np.asarray(points_fn(np.stack([p0, p0 + a, p0 + b, p0 + n])), dtype=np.float64)
        n2 = np.cross(q[1] - q[0], q[2] - q[0])
        n2 /= np.linalg.norm(n2)
        if n2 @ (q[3] - q[0]) < 0:  # keep "up" pointing to the side the normal pointed
            n2 = -n2
        return GroundPlane(n2, float(-n2 @ q[0]))


@dataclass
class ScaleEstimate:
    """What the node reports and applies. ``scale`` is metres per map unit.

    ``ok`` is True when this update accepted a fresh measurement; False means the
    estimate is the last good one (or the initial 1.0) and ``status`` says why.
    ``measured`` is this update's raw measurement (NaN when there was none).
    """

    scale: float
    confidence: float
    source: str
    status: str
    ok: bool
    measured: float = float("nan")
    n_accepted: int = 0
    plane: GroundPlane | None = None  # camera_height only: the last accepted ground plane

    @property
    def metric(self) -> bool:
        """True once the scale rests on at least one accepted measurement."""
        return self.n_accepted > 0


@dataclass
class ChunkObservation:
    """What one chunk told the scale sources (all in engine map units / frame).

    ``stamps_ns``, ``camera_ids``, ``c2w``: frames whose poses were new or corrected;
    ``points``, ``confidence``: the chunk's new map points; ``chunk_c2w``: the poses of
    the chunk's own new frames (the cameras that saw ``points``).
    """

    stamps_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    camera_ids: tuple[str, ...] = ()
    c2w: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    chunk_c2w: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))

    @staticmethod
    def from_events(
        events: Iterable[MapUpdate], camera_of: Callable[[int], str] | None = None
    ) -> ChunkObservation:
        """Collect one ``MappingEngine.push``/``flush`` result. ``camera_of`` maps an
        engine frame id to its camera id (needed for stereo; default "cam0")."""
        stamps, cams, poses, pts, conf, own = [], [], [], [], [], []
        for ev in events:
            if isinstance(ev, PosesUpdate) and len(ev.frame_ids):
                stamps.append(np.asarray(ev.stamps_ns, np.int64))
                poses.append(np.asarray(ev.c2w, np.float64))
                cams += [camera_of(int(f)) if camera_of else "cam0" for f in ev.frame_ids]
                if ev.chunk_id >= 0:  # frames placed by this chunk (not a graph correction)
                    own.append(np.asarray(ev.c2w, np.float64))
            elif isinstance(ev, PointsUpdate) and len(ev.xyz):
                pts.append(ev.xyz)
                conf.append(ev.confidence)
        obs = ChunkObservation(camera_ids=tuple(cams))
        if stamps:
            obs.stamps_ns, obs.c2w = np.concatenate(stamps), np.concatenate(poses)
        if own:
            obs.chunk_c2w = np.concatenate(own)
        if pts:
            obs.points, obs.confidence = np.concatenate(pts), np.concatenate(conf)
        return obs


@dataclass
class SmoothingConfig:
    """Log-scale smoothing shared by all sources (see module doc)."""

    warmup: int = 3  # first n accepted measurements: running median, no gate
    alpha: float = 0.3  # EMA weight of a new measurement (log domain)
    gate: float = 0.2  # reject |log(m / estimate)| above this after warm-up (~22 %)
    max_step: float = 0.05  # largest |log| change per update (~5 %)
    readmit_after: int = 4  # consecutive gated measurements that agree -> move there, rate-limited
    history: int = 10  # accepted measurements kept for the confidence
    fail_decay: float = 0.8  # confidence x this per update without a measurement


class _LogSmoother:
    """Gated, rate-limited EMA of log(scale) with a confidence."""

    def __init__(self, cfg: SmoothingConfig) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.log: float | None = None
        self.accepted: list[float] = []
        self.n_accepted = 0
        self.gated: list[float] = []
        self.target: float | None = None  # re-admitted level the estimate is moving to
        self.fails = 0

    @property
    def scale(self) -> float:
        return 1.0 if self.log is None else float(np.exp(self.log))

    def confidence(self, quality: float = 1.0) -> float:
        if not self.n_accepted:
            return 0.0
        c = self.cfg
        ramp = min(1.0, self.n_accepted / max(c.warmup, 1))
        spread = float(np.std(self.accepted[-c.history :])) if len(self.accepted) > 1 else 0.0
        consistency = float(np.exp(-spread / 0.05))
        return float(np.clip(ramp * consistency * quality * c.fail_decay**self.fails, 0.0, 1.0))

    def fail(self) -> None:
        self.fails += 1

    def offer(self, m: float) -> tuple[bool, str]:
        """Offer a measurement; returns (accepted, reason when not)."""
        c = self.cfg
        if not (np.isfinite(m) and m > 0):
            self.fails += 1
            return False, "non-finite measurement"
        lm = float(np.log(m))
        if self.n_accepted < c.warmup:
            self.accepted.append(lm)
            self.log = float(np.median(self.accepted))
        else:
            assert self.log is not None
            if self.target is not None and abs(self.log - self.target) < c.gate:
                self.target = None  # arrived
            near_target = self.target is not None and abs(lm - self.target) <= c.gate
            if abs(lm - self.log) > c.gate and not near_target:
                self.gated.append(lm)
                agree = len(self.gated) >= c.readmit_after and (
                    np.ptp(self.gated[-c.readmit_after :]) < c.gate
                )
                if not agree:
                    self.fails += 1
                    return False, (
                        f"outlier {m:.4g} vs estimate {self.scale:.4g} rejected "
                        f"({len(self.gated)} in a row)"
                    )
                lm = self.target = float(np.median(self.gated[-c.readmit_after :]))
            self.gated = []
            self.accepted.append(lm)
            step = float(np.clip(c.alpha * (lm - self.log), -c.max_step, c.max_step))
            self.log += step
        self.accepted = self.accepted[-c.history :]
        self.n_accepted += 1
        self.fails = 0
        return True, ""


class _SourceBase:
    """Shared bookkeeping: smoother, last estimate, fallback text."""

    name = "none"

    def __init__(self, smoothing: SmoothingConfig | None) -> None:
        self._smoother = _LogSmoother(smoothing or SmoothingConfig())
        self._quality = 1.0
        self.estimate = ScaleEstimate(1.0, 0.0, self.name, "no measurement yet", False)

    def reset(self) -> None:
        self._smoother.reset()
        self._quality = 1.0
        self.estimate = ScaleEstimate(1.0, 0.0, self.name, "no measurement yet", False)

    def _finish(self, m: float | None, why: str, **extra) -> ScaleEstimate:
        """Offer measurement ``m`` (None: bad input, ``why`` says what) and publish."""
        sm = self._smoother
        if m is None:
            sm.fail()
            ok, reason = False, why
        else:
            ok, reason = sm.offer(m)
        if ok:
            status = f"{self.name}: scale {sm.scale:.4g} m/unit (measured {m:.4g})"
        else:
            keep = f"keeping {sm.scale:.4g}" if sm.n_accepted else "no estimate yet, using 1.0"
            status = f"{self.name}: {reason}; {keep}"
        plane = extra.pop("plane", None) if ok else self.estimate.plane
        self.estimate = ScaleEstimate(
            scale=sm.scale,
            confidence=sm.confidence(self._quality),
            source=self.name,
            status=status,
            ok=ok,
            measured=float(m) if m is not None else float("nan"),
            n_accepted=sm.n_accepted,
            plane=plane,
        )
        return self.estimate


# ====================================================================== sources
class NoScale(_SourceBase):
    """The default: the map keeps the network's arbitrary scale."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(None)
        self.reset()

    def reset(self) -> None:
        self.estimate = ScaleEstimate(1.0, 0.0, self.name, "arbitrary scale", True)

    def update(self, obs: ChunkObservation | None = None) -> ScaleEstimate:
        return self.estimate


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


class CameraHeightScale(_SourceBase):
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


@dataclass
class OdometryScaleConfig:
    window_s: float = 10.0  # sliding window over map stamps
    min_distance_m: float = 2.0  # reference travel in the window needed for a measurement
    step_s: float = 0.5  # distances between samples >= this apart (suppresses jitter)
    max_gap_s: float = 0.5  # never interpolate reference odometry across larger gaps
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)


class OdometryScale(_SourceBase):
    """scale = reference (metres) / map travelled distance over the last ``window_s``.

    Feed reference positions (``add_reference``, e.g. each nav_msgs/Odometry) and the
    map poses from every ``ChunkObservation`` (new and corrected frames replace older
    values by stamp). Distances are rotation-invariant, so the two frames need no
    alignment; the camera/base_link lever arm is ignored (small on straight drives).
    """

    name = "odometry"

    def __init__(self, window_s: float = 10.0, config: OdometryScaleConfig | None = None) -> None:
        self.config = config or OdometryScaleConfig(window_s=window_s)
        super().__init__(self.config.smoothing)
        self._ref_t: list[int] = []
        self._ref_p: list[np.ndarray] = []
        self._map: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        super().reset()
        self._ref_t, self._ref_p, self._map = [], [], {}

    def add_reference(self, stamp_ns: int, position: Sequence[float]) -> None:
        """One reference odometry sample (metres); out-of-order samples are sorted in."""
        t = int(stamp_ns)
        p = np.asarray(position, dtype=np.float64).reshape(3)
        if self._ref_t and t <= self._ref_t[-1]:
            if t == self._ref_t[-1]:
                self._ref_p[-1] = p
                return
            k = int(np.searchsorted(self._ref_t, t))
            self._ref_t.insert(k, t)
            self._ref_p.insert(k, p)
        else:
            self._ref_t.append(t)
            self._ref_p.append(p)

    def set_map_poses(self, stamps_ns: np.ndarray, positions: np.ndarray) -> None:
        for t, p in zip(np.asarray(stamps_ns), np.asarray(positions).reshape(-1, 3), strict=True):
            self._map[int(t)] = np.asarray(p, dtype=np.float64)

    def _prune(self, t_end: int) -> None:
        keep = t_end - int(2 * self.config.window_s * 1e9)
        if self._ref_t and self._ref_t[0] < keep:
            k = int(np.searchsorted(self._ref_t, keep))
            self._ref_t, self._ref_p = self._ref_t[k:], self._ref_p[k:]
        for t in [t for t in self._map if t < keep]:
            del self._map[t]

    def update(self, obs: ChunkObservation | None = None) -> ScaleEstimate:
        cfg = self.config
        if obs is not None and len(obs.stamps_ns):
            self.set_map_poses(obs.stamps_ns, obs.c2w[:, :3, 3])
        if len(self._ref_t) < 2:
            return self._finish(None, "no reference odometry received")
        if len(self._map) < 2:
            return self._finish(None, "too few map poses")
        rt = np.asarray(self._ref_t, dtype=np.int64)
        rp = np.stack(self._ref_p)
        mt = np.array(sorted(self._map), dtype=np.int64)
        # map stamps bracketed by reference samples no more than max_gap apart
        k = np.searchsorted(rt, mt)
        inside = (k > 0) & (k < len(rt)) | np.isin(mt, rt)
        kk = np.clip(k, 1, len(rt) - 1)
        gap_ok = (rt[kk] - rt[kk - 1]) <= cfg.max_gap_s * 1e9
        sync = mt[inside & (gap_ok | np.isin(mt, rt))]
        if len(sync) < 2:
            return self._finish(None, "reference odometry and map stamps do not overlap")
        t_end = int(sync[-1])
        self._prune(t_end)
        sync = sync[sync >= t_end - int(cfg.window_s * 1e9)]
        picked = [int(sync[0])]  # samples at least step_s apart
        for t in sync[1:]:
            if t - picked[-1] >= cfg.step_s * 1e9:
                picked.append(int(t))
        if picked[-1] != t_end and len(picked) > 1:
            picked[-1] = t_end
        ts = np.asarray(picked, dtype=np.int64)
        x = (ts - rt[0]).astype(np.float64)
        xr = (rt - rt[0]).astype(np.float64)
        ref = np.stack([np.interp(x, xr, rp[:, a]) for a in range(3)], 1)
        mp = np.stack([self._map[int(t)] for t in ts])
        d_ref = float(np.linalg.norm(np.diff(ref, axis=0), axis=1).sum())
        d_map = float(np.linalg.norm(np.diff(mp, axis=0), axis=1).sum())
        if d_ref < cfg.min_distance_m:
            return self._finish(
                None, f"standing still ({d_ref:.2f} m < {cfg.min_distance_m} m in the window)"
            )
        if d_map <= 1e-9:
            return self._finish(None, "map trajectory not moving while the reference moves")
        self._quality = min(1.0, d_ref / (4 * cfg.min_distance_m))
        return self._finish(d_ref / d_map, "")


@dataclass
class StereoScaleConfig:
    baseline_m: float | None = None  # None / <= 0: missing (set later from CameraInfo)
    pair_tolerance_ns: int = 1_000_000  # stamps of a pair may differ by this much
    window_pairs: int = 50  # newest pairs used
    min_pairs: int = 3
    max_rel_spread: float = 0.25  # MAD / median of the pair distances
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)


def baseline_from_projection(P: Sequence[float]) -> float | None:
    """Stereo baseline (m) from a right camera's CameraInfo ``p`` (12 floats, 3x4
    row-major): ``P[0,3] = -fx * baseline``. None when it carries no baseline."""
    p = np.asarray(P, dtype=np.float64).ravel()
    if p.size != 12 or not np.isfinite(p).all() or p[0] == 0:
        return None
    b = -p[3] / p[0]
    return float(abs(b)) if b != 0 else None


class StereoBaselineScale(_SourceBase):
    """scale = known baseline / median predicted distance between paired camera centres.

    Frames of two different cameras whose stamps agree within ``pair_tolerance_ns``
    form a pair; poses are kept by (camera, stamp) and replaced when corrected.
    """

    name = "stereo"

    def __init__(
        self, baseline_m: float | None = None, config: StereoScaleConfig | None = None
    ) -> None:
        self.config = config or StereoScaleConfig(baseline_m=baseline_m)
        if baseline_m is not None:
            self.config.baseline_m = baseline_m
        super().__init__(self.config.smoothing)
        self._poses: dict[str, dict[int, np.ndarray]] = {}

    def reset(self) -> None:
        super().reset()
        self._poses = {}

    def set_baseline(self, baseline_m: float | None) -> None:
        self.config.baseline_m = baseline_m

    def add_poses(self, stamps_ns: np.ndarray, camera_ids: Sequence[str], centres: np.ndarray):
        for t, cam, c in zip(stamps_ns, camera_ids, np.asarray(centres).reshape(-1, 3),
                             strict=True):  # fmt: skip
            self._poses.setdefault(str(cam), {})[int(t)] = np.asarray(c, dtype=np.float64)

    def pair_distances(self) -> np.ndarray:
        """Predicted baselines (map units) of the newest ``window_pairs`` pairs."""
        cams = sorted(self._poses)
        if len(cams) < 2:
            return np.zeros(0)
        a, b = self._poses[cams[0]], self._poses[cams[1]]
        tb = np.array(sorted(b), dtype=np.int64)
        out: list[tuple[int, float]] = []
        for t in sorted(a):
            k = int(np.searchsorted(tb, t))
            near = [j for j in (k - 1, k) if 0 <= j < len(tb)]
            if not near:
                continue
            j = min(near, key=lambda j: abs(int(tb[j]) - t))
            if abs(int(tb[j]) - t) <= self.config.pair_tolerance_ns:
                out.append((t, float(np.linalg.norm(a[t] - b[int(tb[j])]))))
        return np.array([d for _, d in out[-self.config.window_pairs :]])

    def update(self, obs: ChunkObservation | None = None) -> ScaleEstimate:
        cfg = self.config
        if obs is not None and len(obs.stamps_ns):
            self.add_poses(obs.stamps_ns, obs.camera_ids, obs.c2w[:, :3, 3])
        if not (cfg.baseline_m is not None and cfg.baseline_m > 0):
            return self._finish(None, "missing stereo baseline (parameter or CameraInfo P)")
        d = self.pair_distances()
        if len(d) < cfg.min_pairs:
            return self._finish(None, f"only {len(d)} stereo pairs (need {cfg.min_pairs})")
        med = float(np.median(d))
        mad = float(np.median(np.abs(d - med)))
        keep = np.abs(d - med) <= 3 * 1.4826 * mad + 1e-12 * med
        if med <= 0 or mad / med > cfg.max_rel_spread:
            rel = mad / max(med, 1e-12)
            return self._finish(None, f"predicted baselines disagree (MAD {rel:.0%})")
        self._quality = min(1.0, keep.sum() / (3 * cfg.min_pairs))
        return self._finish(cfg.baseline_m / float(np.mean(d[keep])), "")


def make_scale_source(
    name: str,
    camera_height_m: float = 1.65,
    odometry_window_s: float = 10.0,
    stereo_baseline_m: float | None = None,
) -> NoScale | CameraHeightScale | OdometryScale | StereoBaselineScale:
    """The source for a ``scale_source`` parameter value (see ``SCALE_SOURCES``)."""
    if name == "none":
        return NoScale()
    if name == "camera_height":
        return CameraHeightScale(camera_height_m)
    if name == "odometry":
        return OdometryScale(odometry_window_s)
    if name == "stereo":
        return StereoBaselineScale(stereo_baseline_m)
    raise ValueError(f"scale_source must be one of {SCALE_SOURCES}, got {name!r}")
