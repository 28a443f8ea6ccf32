"""A stream of stamped rigid poses (odometry), read at other stamps (images).

Why: odometry arrives at its own rate and clock; a factor between two camera frames needs
the motion between exactly their stamps. Poses are interpolated (translation linearly,
rotation by slerp) between the two nearest samples, never across a gap longer than
``max_gap_s`` and never extrapolated: a stamp outside the covered time gets None.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


@dataclass
class StampedPosesConfig:
    max_gap_s: float = 0.5  # never interpolate across a larger gap between samples
    keep_s: float = 120.0  # samples older than this behind the newest are pruned


class StampedPoses:
    """``add(stamp_ns, T)`` in any order (a repeated stamp replaces), ``at(stamp_ns)``."""

    def __init__(self, config: StampedPosesConfig | None = None) -> None:
        self.config = config or StampedPosesConfig()
        self.reset()

    def reset(self) -> None:
        self._t: list[int] = []
        self._T: list[np.ndarray] = []
        self._var: list[np.ndarray | None] = []  # pose covariance diagonal per sample
        self.rejected = 0  # non-finite or non-rigid samples

    def __len__(self) -> int:
        return len(self._t)

    def add(self, stamp_ns: int, T: np.ndarray, variances: np.ndarray | None = None) -> bool:
        """One 4x4 pose (with its covariance diagonal: x y z roll pitch yaw, when known);
        False (counted) when it is not finite or not a rotation."""
        T = np.asarray(T, dtype=np.float64)
        R = T[:3, :3]
        if not (np.isfinite(T).all() and np.allclose(R @ R.T, np.eye(3), atol=1e-3)):
            self.rejected += 1
            return False
        t = int(stamp_ns)
        k = bisect.bisect_left(self._t, t)
        var = None
        if variances is not None:
            v = np.asarray(variances, dtype=np.float64).reshape(-1)
            var = v if v.size == 6 and np.isfinite(v).all() and (v >= 0).all() else None
        if k < len(self._t) and self._t[k] == t:
            self._T[k], self._var[k] = T, var
        else:
            self._t.insert(k, t)
            self._T.insert(k, T)
            self._var.insert(k, var)
        self._prune()
        return True

    def at(self, stamp_ns: int) -> np.ndarray | None:
        """The pose at ``stamp_ns`` (4x4), or None outside the samples or across a gap."""
        t = int(stamp_ns)
        k = bisect.bisect_left(self._t, t)
        if k < len(self._t) and self._t[k] == t:
            return self._T[k].copy()
        if k == 0 or k == len(self._t):
            return None
        t0, t1 = self._t[k - 1], self._t[k]
        if (t1 - t0) * 1e-9 > self.config.max_gap_s:
            return None
        a = (t - t0) / (t1 - t0)
        T0, T1 = self._T[k - 1], self._T[k]
        rots = Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]]))
        out = np.eye(4)
        out[:3, :3] = Slerp([0.0, 1.0], rots)(a).as_matrix()
        out[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
        return out

    def motion(self, stamp_a: int, stamp_b: int) -> np.ndarray | None:
        """Rigid motion from the pose at ``stamp_a`` to the one at ``stamp_b``, in a's axes
        (``inv(T_a) @ T_b``); None when either stamp is not covered."""
        Ta, Tb = self.at(stamp_a), self.at(stamp_b)
        if Ta is None or Tb is None:
            return None
        return np.linalg.inv(Ta) @ Tb

    def variance_growth(self, stamp_a: int, stamp_b: int) -> np.ndarray | None:
        """How much the pose covariance diagonal grew from ``stamp_a`` to ``stamp_b`` (the
        variance of the motion between them, for odometry that integrates), from the
        samples nearest each stamp; None when either has no covariance."""
        va, vb = self._nearest_var(stamp_a), self._nearest_var(stamp_b)
        if va is None or vb is None:
            return None
        return np.maximum(vb - va, 0.0)

    def _nearest_var(self, stamp_ns: int) -> np.ndarray | None:
        if not self._t:
            return None
        k = bisect.bisect_left(self._t, int(stamp_ns))
        near = [j for j in (k - 1, k) if 0 <= j < len(self._t)]
        j = min(near, key=lambda i: abs(self._t[i] - int(stamp_ns)))
        return self._var[j]

    def _prune(self) -> None:
        horizon = self._t[-1] - int(self.config.keep_s * 1e9)
        k = bisect.bisect_left(self._t, horizon)
        if k > 1:  # keep one sample before the horizon to interpolate from
            del self._t[: k - 1], self._T[: k - 1], self._var[: k - 1]
