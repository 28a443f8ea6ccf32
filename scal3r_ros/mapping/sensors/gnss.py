"""GNSS fixes as positions in a local ENU frame with sigmas, for the pose graph.

Why a local ENU frame: the pose graph needs metres in a Cartesian frame; ENU anchored at
the first accepted fix is the convention of robot_localization's navsat_transform and
keeps coordinates small. The conversion is pymap3d's (WGS84), not hand-written.
Fixes without a fix (status < 0), with non-finite values or an implausible covariance are
counted and dropped; a fix without covariance gets ``default_sigma_m``.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

import numpy as np

NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX
COVARIANCE_TYPE_UNKNOWN = 0


@dataclass
class GnssFix:
    """The fields of a sensor_msgs/NavSatFix the mapping needs."""

    stamp_ns: int
    latitude: float  # degrees
    longitude: float  # degrees
    altitude: float  # metres (WGS84 ellipsoid)
    status: int = 0  # NavSatStatus.status: -1 no fix, 0 fix, 1 SBAS, 2 GBAS
    covariance: tuple[float, ...] = ()  # 9 values, ENU, m^2 (row-major)
    covariance_type: int = COVARIANCE_TYPE_UNKNOWN


@dataclass
class GnssConfig:
    default_sigma_m: float = 3.0  # per axis, when the message gives no covariance
    min_sigma_m: float = 0.05  # a claimed sigma below this is raised to it (RTK optimism)
    max_sigma_m: float = 50.0  # fixes worse than this are not used
    robust_k: float = 2.0  # Huber width in sigmas (jumps, multipath)
    keep_s: float = 600.0  # fixes older than this behind the newest are dropped (frames
    # get their priors when their window is placed, seconds after the fix at most)


@dataclass
class EnuPosition:
    stamp_ns: int
    enu: np.ndarray  # (3,) metres east, north, up of the anchor
    sigmas: np.ndarray  # (3,) metres


@dataclass
class GnssInput:
    """Accepted fixes in ENU, in stamp order; the anchor (lat, lon, alt) of the first."""

    config: GnssConfig = field(default_factory=GnssConfig)
    anchor: tuple[float, float, float] | None = None
    positions: list[EnuPosition] = field(default_factory=list)
    rejected: collections.Counter = field(default_factory=collections.Counter)
    # the positions' stamps, same order: per-frame lookups bisect instead of rescanning
    _stamps: list[int] = field(default_factory=list, repr=False)

    def reset(self, keep_anchor: bool = True) -> None:
        """Forget the fixes; the ENU anchor stays unless asked (the map's ENU relation)."""
        self.positions, self._stamps = [], []
        if not keep_anchor:
            self.anchor = None

    def add(self, fix: GnssFix) -> EnuPosition | None:
        """Convert and keep one fix; None (and a counted reason) when it is not used."""
        import pymap3d  # only where GNSS is used: mapping/ imports with numpy + torch alone

        values = (fix.latitude, fix.longitude, fix.altitude)
        if fix.status <= NO_FIX:
            self.rejected["no_fix"] += 1
            return None
        if not np.isfinite(values).all() or abs(fix.latitude) > 90 or abs(fix.longitude) > 180:
            self.rejected["invalid"] += 1
            return None
        sigmas = self._sigmas(fix)
        if sigmas is None:
            self.rejected["covariance"] += 1
            return None
        if self.anchor is None:
            self.anchor = values
        e, n, u = pymap3d.geodetic2enu(*values, *self.anchor)
        pos = EnuPosition(int(fix.stamp_ns), np.array([e, n, u], dtype=np.float64), sigmas)
        k = bisect.bisect_left(self._stamps, pos.stamp_ns)
        self._stamps.insert(k, pos.stamp_ns)
        self.positions.insert(k, pos)
        old = bisect.bisect_left(self._stamps, self._stamps[-1] - int(self.config.keep_s * 1e9))
        if old:
            del self._stamps[:old], self.positions[:old]
        return pos

    def nearest(self, stamp_ns: int, max_dt_s: float) -> EnuPosition | None:
        """The accepted fix closest in time to ``stamp_ns`` within ``max_dt_s``."""
        t = int(stamp_ns)
        k = bisect.bisect_left(self._stamps, t)
        near = [j for j in (k - 1, k) if 0 <= j < len(self._stamps)]
        if not near:
            return None
        j = min(near, key=lambda i: abs(self._stamps[i] - t))  # the earlier one on a tie
        return self.positions[j] if abs(self._stamps[j] - t) * 1e-9 <= max_dt_s else None

    def _sigmas(self, fix: GnssFix) -> np.ndarray | None:
        c = self.config
        cov = np.asarray(fix.covariance, dtype=np.float64)
        if fix.covariance_type == COVARIANCE_TYPE_UNKNOWN or cov.size != 9:
            return np.full(3, c.default_sigma_m)
        var = np.diag(cov.reshape(3, 3))
        if not (np.isfinite(var).all() and (var >= 0).all()):
            return None
        sig = np.maximum(np.sqrt(var), c.min_sigma_m)
        return None if (sig > c.max_sigma_m).any() else sig
