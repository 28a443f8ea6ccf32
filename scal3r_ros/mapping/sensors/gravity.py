"""Level the map from an accelerometer: roll and pitch of the base frame against gravity.

Why: ``map`` is the first frame's base_link (REP-105); on a slope or with a tilted mount
its z axis is not up, and REP-103 asks for z up. While the robot stands still an IMU's
specific force is gravity's reaction (+9.81 m/s^2 along up); its direction in base_link
gives the rotation that makes ``map`` level. Yaw is not observable from gravity and
stays that of the first frame. Samples taken while moving are recognised (the norm or
direction varies) and not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STANDARD_GRAVITY = 9.80665


@dataclass
class GravityConfig:
    samples: int = 50  # consecutive still samples averaged
    max_norm_error: float = 0.5  # |norm - g| per sample [m/s^2]
    max_spread: float = 0.1  # std of the samples per axis [m/s^2]


class GravityLevel:
    """``add(accel_base)`` until ``level`` (3x3: base axes -> levelled axes) is known."""

    def __init__(self, config: GravityConfig | None = None) -> None:
        self.config = config or GravityConfig()
        self.reset()

    def reset(self) -> None:
        self._window: list[np.ndarray] = []
        self._stamps: list[int] = []
        self.level: np.ndarray | None = None
        self.up: np.ndarray | None = None  # unit up vector in base axes, once known
        self.stamp_ns = 0  # when the base had that attitude (middle of the still samples)
        self.rejected = 0

    def add(self, accel_base: np.ndarray, stamp_ns: int = 0) -> bool:
        """One accelerometer sample in base-frame axes (m/s^2); True once levelled."""
        if self.level is not None:
            return True
        a = np.asarray(accel_base, dtype=np.float64).reshape(3)
        if not np.isfinite(a).all() or abs(np.linalg.norm(a) - STANDARD_GRAVITY) > (
            self.config.max_norm_error
        ):
            self.rejected += 1
            self._window, self._stamps = [], []  # moving (or bad): start the still window again
            return False
        self._window.append(a)
        self._stamps.append(int(stamp_ns))
        n = self.config.samples
        if len(self._window) < n:
            return False
        w = np.array(self._window[-n:])
        if (w.std(axis=0) > self.config.max_spread).any():
            self._window, self._stamps = self._window[-n // 2 :], self._stamps[-n // 2 :]
            return False
        stamps = self._stamps[-n:]
        self.set_up(w.mean(axis=0), stamps[len(stamps) // 2])
        return True

    def set_up(self, up_base: np.ndarray, stamp_ns: int = 0) -> bool:
        """The up direction in base axes measured directly (an IMU's orientation); False
        (counted) when it is not a finite, non-zero vector. The first measurement is kept,
        as a still window is: up in base axes changes as the robot turns on a slope, so a
        later one paired with another frame's pose (the mount takes the nearest pose, within
        ``mount.LEVEL_MAX_DT_S``) would tilt the map by up to twice the slope."""
        if self.up is not None:
            return True
        u = np.asarray(up_base, dtype=np.float64).reshape(3)
        n = float(np.linalg.norm(u))
        if not np.isfinite(u).all() or n < 1e-9:
            self.rejected += 1
            return False
        self.up, self.stamp_ns = u / n, int(stamp_ns)
        self.level = level_from_up(self.up)
        return True

    def tilt_deg(self) -> float | None:
        """Angle between the base frame's z and up, once known."""
        if self.level is None:
            return None
        return float(np.degrees(np.arccos(np.clip(self.level[2, 2], -1.0, 1.0))))


def level_from_up(up_base: np.ndarray) -> np.ndarray:
    """The roll/pitch rotation R (yaw-free: the base's x keeps its heading) with
    ``R @ up_base`` along +z."""
    u = np.asarray(up_base, dtype=np.float64)
    u = u / np.linalg.norm(u)
    # R = Ry(pitch) Rx(roll): the base frame seen from a frame with the same heading, z up
    roll = np.arctan2(u[1], u[2])
    pitch = -np.arctan2(u[0], np.hypot(u[1], u[2]))
    cr, sr, cp, sp = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    return Ry @ Rx
