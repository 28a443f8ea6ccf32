"""Metric scale from the travelled-distance ratio against a reference odometry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scal3r_ros.mapping.planning.scale import (
    ChunkObservation,
    ScaleEstimate,
    ScaleSourceBase,
    SmoothingConfig,
)


@dataclass
class OdometryScaleConfig:
    window_s: float = 10.0  # sliding window over map stamps
    min_distance_m: float = 2.0  # reference travel in the window needed for a measurement
    step_s: float = 0.5  # distances between samples >= this apart (suppresses jitter)
    max_gap_s: float = 0.5  # never interpolate reference odometry across larger gaps
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)


class OdometryScale(ScaleSourceBase):
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
