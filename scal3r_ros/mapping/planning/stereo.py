"""Metric scale from a known stereo baseline over the predicted distance between paired cameras."""

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


class StereoBaselineScale(ScaleSourceBase):
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
        for t, cam, c in zip(
            stamps_ns, camera_ids, np.asarray(centres).reshape(-1, 3), strict=True
        ):
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
