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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.events import MapUpdate, PointsUpdate, PosesUpdate

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


class LogSmoother:
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


class ScaleSourceBase:
    """Shared bookkeeping: smoother, last estimate, fallback text."""

    name = "none"

    def __init__(self, smoothing: SmoothingConfig | None) -> None:
        self._smoother = LogSmoother(smoothing or SmoothingConfig())
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
class NoScale(ScaleSourceBase):
    """The default: the map keeps the network's arbitrary scale."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(None)
        self.reset()

    def reset(self) -> None:
        self.estimate = ScaleEstimate(1.0, 0.0, self.name, "arbitrary scale", True)

    def update(self, obs: ChunkObservation | None = None) -> ScaleEstimate:
        return self.estimate
