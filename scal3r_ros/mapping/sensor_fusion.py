"""Wheel odometry and GNSS in the chunk pose graph (the engine's second graph hook).

Why in the graph: a scale from odometry computed beside the map (``planning/odometry``)
fixes one number; factors in the graph also bend the chain back where it drifted between
loop closures, and GNSS bounds the drift absolutely. Both share one external frame,
``enu`` (map -> ENU, a Sim(3) whose scale is the map's metric scale: metres per map unit),
so there is one scale, in the graph.

After each window is placed, ``on_chunk`` adds for the frames the window owns:

- odometry: the metric motion between the middle frames of the previous window and this
  one (nearest their reference frames, where a window's shape is the most faithful;
  interpolated at the image stamps, base motion moved to the camera by the mount
  ``T_base_cam``);
- GNSS: a position prior on the camera centre of each frame with a fix within
  ``gnss_max_dt_s`` of its stamp (the antenna lever arm is ignored: metres at most).

The ``enu`` frame is created once there is something to tie it to: with GNSS, at the
Umeyama fit of the placed camera centres to the first fixes once they spread over
``gnss_init_spread_m`` (before that, fixes wait); with odometry only, at the first motion,
with its rotation and translation held (only the scale is observable) and the scale from
that motion's length. Nothing here imports ROS; inputs come in through ``add_odometry``
and ``add_gnss`` from any thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from scal3r_ros.mapping.sensors.gnss import GnssConfig, GnssFix, GnssInput
from scal3r_ros.mapping.sensors.stamped_poses import StampedPoses, StampedPosesConfig
from scal3r_ros.mapping.sim3 import Sim3, umeyama

ENU = "enu"


@dataclass
class SensorFusionConfig:
    odometry: bool = False
    odom_sigma_rot: float = 0.005  # rad per motion factor
    odom_sigma_trans: float = 0.02  # m per motion factor (+ odom_sigma_per_m x length)
    odom_sigma_per_m: float = 0.01
    odom_robust_k: float = 3.0
    odometry_stream: StampedPosesConfig = field(default_factory=StampedPosesConfig)
    gnss: bool = False
    gnss_max_dt_s: float = 0.1  # a fix counts for a frame this close in time
    gnss_init_spread_m: float = 10.0  # fixes must spread this far before ``enu`` is fitted
    gnss_stride: int = 1  # frames whose index is a multiple of this get a prior (if a fix)
    gnss_input: GnssConfig = field(default_factory=GnssConfig)
    T_base_cam: np.ndarray = field(default_factory=lambda: np.eye(4))  # optical in base


class GraphHost(Protocol):
    """What the fusion needs from the engine (public methods only)."""

    def owned_frames(self, chunk_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame ids, stamps, c2w in chunk coordinates) of the frames the chunk owns."""
        ...

    def chunk_pose(self, chunk_id: int) -> Sim3: ...

    def has_external_frame(self, name: str) -> bool: ...

    def add_external_frame(self, name: str, initial: Sim3, prior_sigmas) -> None: ...

    def add_position_prior(self, chunk_id, point_chunk, position, sigmas, frame, robust_k): ...

    def add_relative_motion(self, a, c2w_a, b, c2w_b, motion, sigmas, frame, robust_k): ...


@dataclass
class FusionStats:
    odometry_used: int = 0
    odometry_missing: int = 0  # frames whose stamps the odometry did not cover
    gnss_used: int = 0
    gnss_waiting: int = 0  # matched fixes waiting for the enu frame


class SensorFusion:
    """``add_odometry``/``add_gnss`` (any thread), ``on_chunk`` (worker), ``reset``."""

    def __init__(self, config: SensorFusionConfig | None = None) -> None:
        self.config = config or SensorFusionConfig()
        self._lock = threading.Lock()
        self.odometry = StampedPoses(self.config.odometry_stream)
        self.gnss = GnssInput(self.config.gnss_input)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.odometry.reset()
            self.gnss.reset(keep_anchor=True)
        self.stats = FusionStats()
        self._last: tuple[int, int, np.ndarray] | None = None  # (chunk, stamp, c2w_local)
        self._last_fixed = -1  # newest frame given a GNSS prior
        # factors waiting for the enu frame: fixes (chunk, point, enu, sigmas) and motions
        self._fixes: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._motions: list[tuple] = []

    # ------------------------------------------------------------------ inputs
    def add_odometry(self, stamp_ns: int, T_odom_base: np.ndarray) -> bool:
        with self._lock:
            return self.odometry.add(stamp_ns, T_odom_base)

    def add_gnss(self, fix: GnssFix) -> bool:
        with self._lock:
            return self.gnss.add(fix) is not None

    # ------------------------------------------------------------------ per window
    def on_chunk(self, host: GraphHost, chunk_id: int) -> bool:
        """Factors for the frames ``chunk_id`` owns; True when any was added (the engine
        then re-optimises)."""
        ids, stamps, c2w = host.owned_frames(chunk_id)
        if not len(ids):
            return False
        added = False
        if self.config.gnss:  # first: it creates the enu frame the motions then use
            added |= self._gnss_factors(host, chunk_id, ids, stamps, c2w)
        if self.config.odometry:
            added |= self._odometry_factors(host, chunk_id, stamps, c2w)
        return added

    def _camera_motion(self, stamp_a: int, stamp_b: int) -> np.ndarray | None:
        with self._lock:
            M = self.odometry.motion(stamp_a, stamp_b)
        if M is None:
            return None
        Tbc = self.config.T_base_cam
        return np.linalg.inv(Tbc) @ M @ Tbc

    def _odometry_factors(
        self, host: GraphHost, cid: int, stamps: np.ndarray, c2w: np.ndarray
    ) -> bool:
        c = self.config
        mid = len(stamps) // 2  # the window's middle: nearest its reference, least bent
        here = (cid, int(stamps[mid]), c2w[mid])
        pairs = [] if self._last is None or self._last[0] == cid else [(self._last, here)]
        self._last = here
        for (ca, ta, Pa), (cb, tb, Pb) in pairs:
            if ta == tb:
                continue
            M = self._camera_motion(ta, tb)
            if M is None:
                self.stats.odometry_missing += 1
                continue
            length = float(np.linalg.norm(M[:3, 3]))
            sig_t = c.odom_sigma_trans + c.odom_sigma_per_m * length
            sigmas = np.r_[[c.odom_sigma_rot] * 3, [sig_t] * 3]
            self._motions.append((ca, Pa, cb, Pb, M, sigmas))
        if not host.has_external_frame(ENU) and not c.gnss:  # GNSS, when on, makes the frame
            self._init_scale_frame(host)
        if not host.has_external_frame(ENU) or not self._motions:
            return False
        for ca, Pa, cb, Pb, M, sigmas in self._motions:
            host.add_relative_motion(ca, Pa, cb, Pb, M, sigmas, ENU, c.odom_robust_k)
            self.stats.odometry_used += 1
        self._motions = []
        return True

    def _init_scale_frame(self, host: GraphHost) -> None:
        """Odometry alone: the frame's scale from the first motion that moved; its rotation
        and translation held (odometry observes only the scale)."""
        for ca, Pa, cb, Pb, M, _ in self._motions:
            length = float(np.linalg.norm(M[:3, 3]))
            a = host.chunk_pose(ca).apply(Pa[None, :3, 3])[0]
            b = host.chunk_pose(cb).apply(Pb[None, :3, 3])[0]
            map_len = float(np.linalg.norm(b - a))
            if length > 1e-3 and map_len > 1e-9:
                held = np.r_[[1e-6] * 6, 10.0]
                host.add_external_frame(ENU, Sim3(length / map_len, np.eye(3), np.zeros(3)), held)
                return

    def _gnss_factors(
        self, host: GraphHost, cid: int, ids: np.ndarray, stamps: np.ndarray, c2w: np.ndarray
    ) -> bool:
        c = self.config
        for k in range(len(ids)):
            f = int(ids[k])
            if f <= self._last_fixed or f % max(1, c.gnss_stride):
                continue  # frames up to the newest one given a prior are done
            with self._lock:
                fix = self.gnss.nearest(int(stamps[k]), c.gnss_max_dt_s)
            if fix is not None:
                self._fixes.append((cid, c2w[k][:3, 3].copy(), fix.enu, fix.sigmas))
                self._last_fixed = f
        if not host.has_external_frame(ENU):
            self._init_enu(host)
        if not host.has_external_frame(ENU) or not self._fixes:
            self.stats.gnss_waiting = len(self._fixes)
            return False
        for chunk, p, z, sig in self._fixes:
            host.add_position_prior(chunk, p, z, sig, ENU, c.gnss_input.robust_k)
            self.stats.gnss_used += 1
        self._fixes, self.stats.gnss_waiting = [], 0
        return True

    def _init_enu(self, host: GraphHost) -> None:
        """Fit map -> ENU to the waiting fixes once they spread enough (not collinear)."""
        z = np.array([w[2] for w in self._fixes]).reshape(-1, 3)
        if len(z) < 3:
            return
        if np.linalg.svd(z - z.mean(0), compute_uv=False)[0] / np.sqrt(len(z)) < (
            self.config.gnss_init_spread_m
        ):
            return
        src = np.array([host.chunk_pose(cid).apply(p[None])[0] for cid, p, _, _ in self._fixes])
        try:
            F = umeyama(src, z)
        except ValueError:
            return
        # a straight drive leaves the roll about its line open: a weak prior keeps it solvable
        host.add_external_frame(ENU, F, np.r_[[1.0] * 3, [1e3] * 3, 10.0])
