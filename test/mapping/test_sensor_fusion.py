"""Odometry and GNSS factors in the chunk pose graph, through the engine on a drifting drive.

The oracle bends each window (yaw drift) so the chained trajectory drifts; loop closure is
off, so only the other sensors can pull it back. Ground truth gives the sensors' inputs:
odometry = the base's true poses through the node's default camera mount, GNSS = the
true base positions in WGS84 (from ENU with pymap3d) with noise and jumps -- the same
maths (``mapping.sim.sensors``) as ``scal3r_synthetic_camera``'s sensor topics.
"""

from __future__ import annotations

import numpy as np
import pymap3d
import pytest
from helpers import make_drive

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.events import PosesUpdate
from scal3r_ros.mapping.metrics import ate
from scal3r_ros.mapping.sensor_fusion import ENU, SensorFusion, SensorFusionConfig
from scal3r_ros.mapping.sensors.gnss import GnssFix
from scal3r_ros.mapping.sim.sensors import (
    DEFAULT_ANCHOR,
    SensorWorld,
    antenna_enu,
    gnss_fix,
    odometry_pose,
    reanchor_enu,
)
from scal3r_ros.mapping.windowing import WindowConfig
from scal3r_ros.ros.frames import camera_mount

N = 160
ANCHOR = DEFAULT_ANCHOR  # lat, lon, alt of ENU's origin
MOUNT = camera_mount()  # the node's default T_base_cam
# the drive turned 30 degrees from east: the map -> ENU rotation is not the identity
WORLD = SensorWorld(heading_deg=30.0)


def run(fusion: SensorFusion | None, feed, drift: float = 0.4):
    """The drive through the engine (16/8 windows, no loop closure) with ``feed(i)`` called
    before each frame goes in; returns (estimated c2w, ground-truth c2w, engine)."""
    drive = make_drive(N)
    backend = OracleBackend(drive, OracleConfig(seed=4, drift_yaw_deg_per_frame=drift))
    cfg = EngineConfig(window=WindowConfig(16, 8), loop_closure=False)
    engine = build_engine(cfg, backend)
    engine.sensor_fusion = fusion
    events = []
    for i in range(N):
        feed(drive, i)
        events += engine.push(drive.frame(i))
    events += engine.flush()
    ids, _, c2w = engine.poses()
    return c2w, drive.gt_poses()[ids], engine, events


def path_length(c2w: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1).sum())


def no_feed(drive, i):
    pass


def odometry_feed(fusion: SensorFusion):
    def feed(drive, i):
        fusion.add_odometry(drive.stamp_ns(i), odometry_pose(drive, i, MOUNT))

    return feed


def gnss_feed(fusion: SensorFusion, sigma: float, jumps: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    jumped: list[int] = []  # frames whose fix jumped (multipath: 20-40 m off)
    fixes: list[GnssFix] = []

    def feed(drive, i):
        fix = gnss_fix(drive, i, WORLD, MOUNT, sigma, rng, jump_fraction=jumps)
        enu = pymap3d.geodetic2enu(fix.latitude, fix.longitude, fix.altitude, *ANCHOR)
        if np.hypot(*(np.asarray(enu) - antenna_enu(drive, i, WORLD, MOUNT))[:2]) > 15.0:
            jumped.append(i)
        fixes.append(fix)
        fusion.add_gnss(fix)

    feed.jumped, feed.fixes = jumped, fixes  # type: ignore[attr-defined]
    return feed


def test_odometry_factors_cut_the_drift_and_give_the_metric_scale():
    est0, gt, _, _ = run(None, no_feed)
    fusion = SensorFusion(SensorFusionConfig(odometry=True, T_base_cam=MOUNT))
    est1, gt1, engine, events = run(fusion, odometry_feed(fusion))
    without, with_odom = ate(est0, gt).rmse, ate(est1, gt1).rmse
    assert with_odom < 0.5 * without, (without, with_odom)
    assert fusion.stats.odometry_used == engine.n_chunks - 1  # one per consecutive pair
    # one metric scale, in the graph: the path in map units times it = the path in metres
    metres = engine.external_frame(ENU).s * path_length(est1)
    assert metres == pytest.approx(path_length(gt1), rel=0.05)
    assert any(isinstance(e, PosesUpdate) and e.reason == "sensor_fusion" for e in events)


def test_gnss_bounds_the_drift_near_the_fix_noise_and_jumps_do_not_pull():
    est0, gt, _, _ = run(None, no_feed)
    fusion = SensorFusion(SensorFusionConfig(gnss=True))
    est1, gt1, engine, _ = run(fusion, gnss_feed(fusion, sigma=2.0))
    jumpy = SensorFusion(SensorFusionConfig(gnss=True))
    est2, gt2, _, _ = run(jumpy, gnss_feed(jumpy, sigma=2.0, jumps=0.1, seed=1))
    without, clean, with_jumps = ate(est0, gt).rmse, ate(est1, gt1).rmse, ate(est2, gt2).rmse
    # measured: 6.6 m without, 1.8 m with 2 m fixes, 1.9 m with 10 % of them 20-40 m off
    assert clean < 0.5 * without and clean < 2.5, (without, clean)
    assert with_jumps < 2.5, with_jumps
    assert fusion.stats.gnss_used == N and engine.has_external_frame(ENU)  # one per frame
    # the map -> ENU frame: metric (the drive is metric) and the ENU axes; the input's ENU
    # is anchored at its first (noisy) fix, the drive's at the world origin
    F = engine.external_frame(ENU)
    est_enu = F.apply(est1[:, :3, 3])
    true_enu = reanchor_enu(gt1[:, :3, 3] @ WORLD.R_enu_world().T, ANCHOR, fusion.gnss.anchor)
    assert np.sqrt(((est_enu - true_enu) ** 2).sum(1).mean()) < 2.5  # measured 1.8 m


def test_no_fix_and_stale_sensors_add_nothing():
    fusion = SensorFusion(SensorFusionConfig(odometry=True, gnss=True))
    for k in range(5):
        fusion.add_gnss(GnssFix(k, *ANCHOR, status=-1))
    est, gt, engine, _ = run(fusion, no_feed, drift=0.0)
    assert fusion.stats.odometry_used == 0 and fusion.stats.gnss_used == 0
    assert fusion.stats.odometry_missing > 0 and not engine.has_external_frame(ENU)
    assert fusion.gnss.rejected["no_fix"] == 5
    assert ate(est, gt).rmse < 0.05  # mapping itself unaffected


def fused_run(jumps: float):
    from scal3r_ros.mapping.events import SensorFusionUpdate

    fusion = SensorFusion(SensorFusionConfig(odometry=True, gnss=True, T_base_cam=MOUNT))
    gnss = gnss_feed(fusion, sigma=1.0, jumps=jumps, seed=3)
    odom = odometry_feed(fusion)

    def both(drive, i):
        gnss(drive, i)
        odom(drive, i)

    _, _, engine, events = run(fusion, both)
    reports = [e for e in events if isinstance(e, SensorFusionUpdate)]
    return engine, reports, len(gnss.jumped), gnss.fixes[0]


def test_each_window_reports_counts_residuals_the_enu_relation_and_outliers():
    _, clean, _, _ = fused_run(0.0)
    engine, reports, n_jumps, first = fused_run(0.1)
    assert len(reports) == engine.n_chunks  # one per placed window
    last = reports[-1]
    assert last.counts["gnss_used"] == N and last.counts["odometry_used"] == engine.n_chunks - 1
    # the jumps (20-40 m off) end as outliers (> 4 sigma after the optimisation); the clean
    # fixes (1 m) almost never
    assert clean[-1].counts["gnss_outliers"] <= 0.03 * N, clean[-1].counts
    extra = last.counts["gnss_outliers"] - clean[-1].counts["gnss_outliers"]
    assert n_jumps >= 8 and 0.8 * n_jumps <= extra <= 1.2 * n_jumps, (n_jumps, extra)
    assert np.isfinite(last.residuals["gnss_m"]) and last.residuals["odometry_m"] < 1.0
    F = engine.external_frame(ENU)
    assert np.allclose(last.enu, F.matrix()) and last.scale == pytest.approx(F.s)
    # the ENU origin: the first fix (the antenna 1.65 m above the drive's origin, 1 m noise)
    assert last.enu_anchor == pytest.approx((first.latitude, first.longitude, first.altitude))
    assert last.enu_anchor[:2] == pytest.approx(ANCHOR[:2], abs=1e-4)  # ~10 m
    assert last.enu_anchor[2] == pytest.approx(ANCHOR[2] + 1.65, abs=5.0)
    assert reports[0].enu is None  # the first window: fixes have not spread yet


def test_odometry_covariance_growth_widens_the_motion_sigmas():
    from scal3r_ros.mapping.sensors.stamped_poses import StampedPoses

    poses = StampedPoses()
    for k in range(5):
        T = np.eye(4)
        T[0, 3] = k
        poses.add(k * 10**8, T, np.r_[[0.01 * k] * 3, [0.001 * k] * 3])
    assert np.allclose(poses.variance_growth(10**8, 4 * 10**8), np.r_[[0.03] * 3, [0.003] * 3])
    poses.add(5 * 10**8, np.eye(4))  # no covariance in this message
    assert poses.variance_growth(10**8, 5 * 10**8) is None
