"""Sensor inputs for the pose graph: odometry interpolation, GNSS to ENU, gravity levelling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping.sensors.gnss import GnssConfig, GnssFix, GnssInput
from scal3r_ros.mapping.sensors.gravity import STANDARD_GRAVITY, GravityLevel
from scal3r_ros.mapping.sensors.stamped_poses import StampedPoses, StampedPosesConfig

S = 1_000_000_000


def pose(yaw_deg: float, xyz) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = xyz
    return T


# ------------------------------------------------------------------ odometry stream
def test_poses_are_interpolated_between_samples_and_never_extrapolated():
    odom = StampedPoses(StampedPosesConfig(max_gap_s=1.5))
    assert odom.add(2 * S, pose(90, [2, 0, 0]))
    assert odom.add(1 * S, pose(0, [0, 0, 0]))  # out of order: sorted in
    mid = odom.at(int(1.5 * S))
    np.testing.assert_allclose(mid[:3, 3], [1, 0, 0])
    assert Rotation.from_matrix(mid[:3, :3]).as_euler("zyx", degrees=True)[0] == pytest.approx(45)
    assert odom.at(int(0.5 * S)) is None and odom.at(3 * S) is None
    np.testing.assert_allclose(odom.at(2 * S), pose(90, [2, 0, 0]))
    motion = odom.motion(1 * S, 2 * S)  # in the first pose's axes
    np.testing.assert_allclose(motion, pose(90, [2, 0, 0]), atol=1e-12)


def test_no_interpolation_across_a_gap_and_bad_samples_are_counted():
    odom = StampedPoses(StampedPosesConfig(max_gap_s=0.5))
    odom.add(0, pose(0, [0, 0, 0]))
    odom.add(2 * S, pose(0, [1, 0, 0]))
    assert odom.at(1 * S) is None  # a 2 s gap: the motion in it is unknown
    bad = pose(0, [0, 0, 0])
    bad[:3, :3] *= 2.0
    assert not odom.add(3 * S, bad) and not odom.add(4 * S, np.full((4, 4), np.nan))
    assert odom.rejected == 2 and len(odom) == 2


def test_old_samples_are_pruned():
    odom = StampedPoses(StampedPosesConfig(max_gap_s=1.5, keep_s=10.0))
    for k in range(100):
        odom.add(k * S, pose(0, [k, 0, 0]))
    assert len(odom) <= 12
    np.testing.assert_allclose(odom.at(int(95.5 * S))[:3, 3], [95.5, 0, 0])


# ---------------------------------------------------------------------------- GNSS
def test_fixes_become_enu_metres_from_the_first_fix():
    gnss = GnssInput()
    first = gnss.add(GnssFix(0, 0.0, 10.0, 50.0))
    np.testing.assert_allclose(first.enu, 0.0, atol=1e-9)
    # 0.001 deg of latitude at the equator is 110.574 m of meridian arc (WGS84)
    north = gnss.add(GnssFix(S, 0.001, 10.0, 50.0))
    assert north.enu[1] == pytest.approx(110.574, abs=0.01) and abs(north.enu[0]) < 1e-6
    up = gnss.add(GnssFix(2 * S, 0.0, 10.0, 60.0))
    assert up.enu[2] == pytest.approx(10.0, abs=1e-3)
    assert gnss.anchor == (0.0, 10.0, 50.0)
    assert gnss.nearest(int(1.04 * S), max_dt_s=0.05) is north
    assert gnss.nearest(int(1.5 * S), max_dt_s=0.05) is None


def test_no_fix_invalid_and_implausible_covariances_are_dropped_and_counted():
    gnss = GnssInput(GnssConfig(default_sigma_m=3.0, max_sigma_m=20.0, min_sigma_m=0.1))
    assert gnss.add(GnssFix(0, 48.0, 11.0, 500.0, status=-1)) is None
    assert gnss.add(GnssFix(0, float("nan"), 11.0, 500.0)) is None
    assert gnss.add(GnssFix(0, 91.0, 11.0, 500.0)) is None
    huge = (900.0, 0, 0, 0, 900.0, 0, 0, 0, 900.0)  # 30 m sigma
    assert gnss.add(GnssFix(0, 48.0, 11.0, 500.0, covariance=huge, covariance_type=2)) is None
    assert dict(gnss.rejected) == {"no_fix": 1, "invalid": 2, "covariance": 1}
    assert gnss.anchor is None  # nothing accepted yet
    rtk = (1e-6, 0, 0, 0, 4.0, 0, 0, 0, 9.0)
    p = gnss.add(GnssFix(0, 48.0, 11.0, 500.0, covariance=rtk, covariance_type=2))
    np.testing.assert_allclose(p.sigmas, [0.1, 2.0, 3.0])  # floor on an optimistic sigma
    q = gnss.add(GnssFix(S, 48.0, 11.0, 500.0))
    np.testing.assert_allclose(q.sigmas, 3.0)  # no covariance: the default


# -------------------------------------------------------------------------- gravity
def still_samples(R_tilt: np.ndarray, n: int, seed: int, noise: float = 0.02) -> np.ndarray:
    """Accelerometer samples of a still base tilted by ``R_tilt`` (base -> level)."""
    rng = np.random.default_rng(seed)
    up_base = R_tilt.T @ np.r_[0.0, 0.0, STANDARD_GRAVITY]
    return up_base + rng.normal(0, noise, (n, 3))


def test_a_tilted_still_base_is_levelled_within_a_fraction_of_a_degree():
    R_tilt = Rotation.from_euler("xy", [8, -5], degrees=True).as_matrix()
    grav = GravityLevel()
    done = [grav.add(a) for a in still_samples(R_tilt, 60, seed=1)]
    assert done[-1] and not done[0]
    err = Rotation.from_matrix(grav.level @ R_tilt.T).magnitude()
    assert np.degrees(err) < 0.2
    assert grav.tilt_deg() == pytest.approx(np.degrees(np.arccos(R_tilt[2, 2])), abs=0.2)
    heading = grav.level @ np.r_[1.0, 0, 0]
    assert abs(heading[1]) < 1e-9  # yaw-free: the base's x keeps its heading


def test_motion_is_not_taken_for_gravity():
    grav = GravityLevel()
    rng = np.random.default_rng(0)
    for _ in range(200):  # driving: 2 m/s^2 of acceleration on top of gravity, changing
        assert not grav.add(np.r_[0, 0, STANDARD_GRAVITY] + rng.normal(0, 2.0, 3))
    assert grav.level is None and grav.rejected > 100


def test_an_imu_orientation_levels_once_from_its_first_measurement():
    """An IMU with orientation gives up at every message; the first is kept with its stamp
    (a later one, paired by the mount with another frame's pose, tilted the map on a slope:
    8.3 deg on a 6 deg slope in the cross-process test)."""
    grav = GravityLevel()
    first = Rotation.from_euler("xy", [4, -2], degrees=True).inv().apply([0, 0, 1])
    assert grav.set_up(first * 3.0, stamp_ns=7) and grav.stamp_ns == 7
    later = Rotation.from_euler("xy", [-3, 5], degrees=True).inv().apply([0, 0, 1])
    assert grav.set_up(later, stamp_ns=9)
    assert np.allclose(grav.up, first) and grav.stamp_ns == 7
    assert not GravityLevel().set_up(np.zeros(3))  # no direction: counted, not used
