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

from scal3r_ros.mapping.config import SensorSection
from scal3r_ros.mapping.events import SensorFusionUpdate
from scal3r_ros.mapping.sensors.gnss import GnssConfig, GnssFix, GnssInput
from scal3r_ros.mapping.sensors.stamped_poses import StampedPoses, StampedPosesConfig
from scal3r_ros.mapping.sim3 import Sim3, umeyama

ENU = "enu"
# a prior whose whitened residual after its window's optimisation exceeds this is counted as
# an outlier: chi-square, 3 degrees of freedom, p < 0.001 for a fix as good as its covariance
GNSS_OUTLIER_SIGMAS = 4.03


@dataclass
class SensorFusionConfig:
    odometry: bool = False
    odom_sigma_rot: float = 0.005  # rad per motion factor
    odom_sigma_trans: float = 0.02  # m per motion factor (+ odom_sigma_per_m x length)
    odom_sigma_per_m: float = 0.01
    odom_robust_k: float = 3.0
    odom_use_covariance: bool = False  # sigmas from the messages' covariance growth
    odometry_stream: StampedPosesConfig = field(default_factory=StampedPosesConfig)
    gnss: bool = False
    gnss_max_dt_s: float = 0.1  # a fix counts for a frame this close in time
    gnss_init_spread_m: float = 10.0  # fixes must spread this far before ``enu`` is fitted
    gnss_stride: int = 1  # frames whose index is a multiple of this get a prior (if a fix)
    gnss_input: GnssConfig = field(default_factory=GnssConfig)
    T_base_cam: np.ndarray = field(default_factory=lambda: np.eye(4))  # optical in base

    @staticmethod
    def from_section(section: SensorSection) -> SensorFusionConfig:
        """The fusion the node's parameters ask for (a source is on when its topic is set)."""

        def kernel(k: float) -> float | None:
            return k if k > 0 else None

        return SensorFusionConfig(
            odometry=bool(section.odometry_topic),
            odom_sigma_rot=section.odometry_sigma_rot,
            odom_sigma_trans=section.odometry_sigma_trans,
            odom_sigma_per_m=section.odometry_sigma_per_m,
            odom_robust_k=kernel(section.odometry_robust_k),  # type: ignore[arg-type]
            odom_use_covariance=section.odometry_use_covariance,
            gnss=bool(section.gnss_topic),
            gnss_max_dt_s=section.gnss_max_dt_s,
            gnss_init_spread_m=section.gnss_init_spread_m,
            gnss_input=GnssConfig(
                default_sigma_m=section.gnss_default_sigma_m,
                max_sigma_m=section.gnss_max_sigma_m,
                robust_k=kernel(section.gnss_robust_k),  # type: ignore[arg-type]
            ),
        )


class GraphHost(Protocol):
    """What the fusion needs from the engine (public methods only)."""

    def owned_frames(self, chunk_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame ids, stamps, c2w in chunk coordinates) of the frames the chunk owns."""
        ...

    def chunk_pose(self, chunk_id: int) -> Sim3: ...

    def has_external_frame(self, name: str) -> bool: ...

    def external_frame(self, name: str) -> Sim3: ...

    def add_external_frame(self, name: str, initial: Sim3, prior_sigmas) -> None: ...

    def add_position_prior(self, chunk_id, point_chunk, position, sigmas, frame, robust_k): ...

    def add_relative_motion(self, a, c2w_a, b, c2w_b, motion, sigmas, frame, robust_k): ...


@dataclass
class FusionStats:
    odometry_used: int = 0
    odometry_missing: int = 0  # frames whose stamps the odometry did not cover
    gnss_used: int = 0
    gnss_waiting: int = 0  # matched fixes waiting for the enu frame
    gnss_outliers: int = 0  # priors beyond the robust kernel after their optimisation


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
        # the factors added for the newest window (their residuals go in the report)
        self._placed_fixes: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._placed_motion: tuple | None = None

    # ------------------------------------------------------------------ inputs
    def add_odometry(
        self, stamp_ns: int, T_odom_base: np.ndarray, variances: np.ndarray | None = None
    ) -> bool:
        """One odometry pose (and its covariance diagonal x y z roll pitch yaw)."""
        with self._lock:
            return self.odometry.add(stamp_ns, T_odom_base, variances)

    def add_gnss(self, fix: GnssFix) -> bool:
        with self._lock:
            return self.gnss.add(fix) is not None

    def set_mount(self, T_base_cam: np.ndarray) -> None:
        """The camera's optical frame in the odometry's base frame (decided by the node once
        /tf_static or the parameters gave it); odometry motions are moved by it."""
        self.config.T_base_cam = np.asarray(T_base_cam, dtype=np.float64).copy()

    def report(self, host: GraphHost, chunk_id: int) -> SensorFusionUpdate:
        """Counts, the ENU relation and the newest factors' residuals after the window's
        optimisation; counts the GNSS priors of the window that ended beyond the kernel."""
        has_frame = host.has_external_frame(ENU)
        F = host.external_frame(ENU) if has_frame else None
        res = {"odometry_m": float("nan"), "gnss_m": float("nan")}
        if F is not None and self._placed_fixes:
            for chunk, p, z, sig in self._placed_fixes:
                r = F.apply(host.chunk_pose(chunk).apply(p[None]))[0] - z
                res["gnss_m"] = float(np.linalg.norm(r))
                if float(np.linalg.norm(r / sig)) > GNSS_OUTLIER_SIGMAS:
                    self.stats.gnss_outliers += 1
        if F is not None and self._placed_motion is not None:
            ca, Pa, cb, Pb, M = self._placed_motion
            A = host.chunk_pose(ca).matrix() @ Pa
            B = host.chunk_pose(cb).matrix() @ Pb
            Ra = A[:3, :3] / np.cbrt(np.linalg.det(A[:3, :3]))
            rel = Ra.T @ (B[:3, 3] - A[:3, 3]) * F.s
            res["odometry_m"] = float(np.linalg.norm(rel - M[:3, 3]))
        self._placed_fixes, self._placed_motion = [], None
        with self._lock:
            counts = {
                "odometry_used": self.stats.odometry_used,
                "odometry_missing": self.stats.odometry_missing,
                "odometry_rejected": self.odometry.rejected,
                "gnss_used": self.stats.gnss_used,
                "gnss_waiting": self.stats.gnss_waiting,
                "gnss_outliers": self.stats.gnss_outliers,
                **{f"gnss_rejected_{k}": v for k, v in self.gnss.rejected.items()},
            }
            anchor = self.gnss.anchor
        georef = F is not None and self.config.gnss
        return SensorFusionUpdate(
            chunk_id,
            scale=None if F is None else float(F.s),
            enu=F.matrix() if georef else None,
            enu_anchor=tuple(anchor) if georef and anchor is not None else None,
            counts=counts,
            residuals=res,
        )

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

    def _camera_motion(
        self, stamp_a: int, stamp_b: int
    ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The camera's motion between the stamps and, when the messages carry it, the
        growth of the odometry's variances over it."""
        with self._lock:
            M = self.odometry.motion(stamp_a, stamp_b)
            var = self.odometry.variance_growth(stamp_a, stamp_b)
        if M is None:
            return None
        Tbc = self.config.T_base_cam
        return np.linalg.inv(Tbc) @ M @ Tbc, var

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
            motion = self._camera_motion(ta, tb)
            if motion is None:
                self.stats.odometry_missing += 1
                continue
            M, var = motion
            length = float(np.linalg.norm(M[:3, 3]))
            sig_t = c.odom_sigma_trans + c.odom_sigma_per_m * length
            sigmas = np.r_[[c.odom_sigma_rot] * 3, [sig_t] * 3]
            if c.odom_use_covariance and var is not None:
                # the message's (base) variances: rotation then translation, as the factor
                from_msg = np.sqrt(np.r_[[var[3:].max()] * 3, [var[:3].max()] * 3])
                sigmas = np.maximum(sigmas, from_msg)
            self._motions.append((ca, Pa, cb, Pb, M, sigmas))
        if not host.has_external_frame(ENU) and not c.gnss:  # GNSS, when on, makes the frame
            self._init_scale_frame(host)
        if not host.has_external_frame(ENU) or not self._motions:
            return False
        for ca, Pa, cb, Pb, M, sigmas in self._motions:
            host.add_relative_motion(ca, Pa, cb, Pb, M, sigmas, ENU, c.odom_robust_k)
            self.stats.odometry_used += 1
            self._placed_motion = (ca, Pa, cb, Pb, M)
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
        self._placed_fixes += self._fixes
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
