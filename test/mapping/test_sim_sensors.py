"""Simulated odometry, GNSS and IMU of the synthetic drive (``mapping.sim.sensors``).

The tests, the sensors bench and ``scal3r_synthetic_camera`` feed these to the mapping:
each must be what the sensor would really measure, in the conventions the node reads
(odometry = base pose, NavSatFix in WGS84 with an ENU covariance, IMU specific force in
base axes), or every figure built on them is wrong.
"""

from __future__ import annotations

import numpy as np
import pymap3d
import pytest
from helpers import make_drive

from scal3r_ros.mapping.sensors.gnss import GnssInput
from scal3r_ros.mapping.sensors.gravity import STANDARD_GRAVITY, GravityLevel
from scal3r_ros.mapping.sim.sensors import (
    SensorWorld,
    antenna_enu,
    base_orientation_enu,
    base_poses,
    gnss_fix,
    imu_accel,
    odometry_pose,
    odometry_poses,
    reanchor_enu,
    still_stamps_ns,
    tilt_deg,
)
from scal3r_ros.ros.frames import camera_mount

MOUNT = camera_mount()


def test_odometry_is_the_base_pose_from_the_first_one_with_the_node_mount():
    drive = make_drive(40)
    assert np.allclose(odometry_pose(drive, 0, MOUNT), np.eye(4))
    # base_link of the default mount: x forward, z up (the drive's camera looks along x)
    B = base_poses(drive.gt_poses(), MOUNT)
    assert B[0][:3, 0] == pytest.approx([1, 0, 0], abs=0.02)
    assert B[0][:3, 2] == pytest.approx([0, 0, 1], abs=0.02)
    for i in (5, 39):
        T = odometry_pose(drive, i, MOUNT)
        assert np.allclose(T, np.linalg.inv(B[0]) @ B[i])
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
    # the motion the node moves to the camera (inv(Tbc) M Tbc) is the camera's own motion
    M = np.linalg.inv(odometry_pose(drive, 3, MOUNT)) @ odometry_pose(drive, 9, MOUNT)
    cam = np.linalg.inv(drive.gt_pose(3)) @ drive.gt_pose(9)
    assert np.allclose(np.linalg.inv(MOUNT) @ M @ MOUNT, cam)


def test_noisy_odometry_drifts_with_distance_and_exact_without_noise():
    drive = make_drive(120)
    exact = np.stack([odometry_pose(drive, i, MOUNT) for i in range(120)])
    assert np.allclose(odometry_poses(drive, MOUNT), exact)
    noisy = odometry_poses(drive, MOUNT, noise=0.02, seed=3)
    err = np.linalg.norm(noisy[:, :3, 3] - exact[:, :3, 3], axis=1)
    assert err[0] == 0 and 0 < err[10] < err[-1]  # a random walk: grows along the drive
    # frame-to-frame errors near noise * step (per axis)
    step = np.linalg.norm(np.diff(exact[:, :3, 3], axis=0), axis=1).mean()
    steps = [
        np.linalg.inv(noisy[k - 1]) @ noisy[k] - np.linalg.inv(exact[k - 1]) @ exact[k]
        for k in range(1, 120)
    ]
    std = np.std([s[:3, 3] for s in steps])
    assert 0.5 * 0.02 * step < std < 2.0 * 0.02 * step


def test_gnss_fixes_are_the_antenna_in_wgs84_with_their_noise_and_jumps():
    drive = make_drive(200)
    world = SensorWorld(heading_deg=40.0)
    exact = gnss_fix(drive, 17, world, MOUNT)
    e, n, u = pymap3d.geodetic2enu(exact.latitude, exact.longitude, exact.altitude, *world.anchor)
    assert [e, n, u] == pytest.approx(antenna_enu(drive, 17, world, MOUNT), abs=1e-4)
    assert exact.stamp_ns == drive.stamp_ns(17) and exact.status == 0
    # the drive's heading is counter-clockwise from east; its first position is 1.65 m up
    start = antenna_enu(drive, 0, world, MOUNT)
    assert start == pytest.approx([0, 0, drive.config.camera_height_m], abs=1e-9)
    ahead = antenna_enu(drive, 5, world, MOUNT) - start
    assert np.degrees(np.arctan2(ahead[1], ahead[0])) == pytest.approx(40.0, abs=1.0)

    rng = np.random.default_rng(1)
    gi = GnssInput()  # the mapping's own reading of the fixes: sigma from the covariance
    res, jumps = [], 0
    for i in range(200):
        fix = gnss_fix(drive, i, world, MOUNT, 1.5, rng, jump_fraction=0.1)
        pos = gi.add(fix)
        assert pos is not None and pos.sigmas == pytest.approx([1.5] * 3)
        truth = reanchor_enu(antenna_enu(drive, i, world, MOUNT), world.anchor, gi.anchor)[0]
        d = pos.enu - truth
        jumps += np.hypot(d[0], d[1]) > 15.0
        res.append(d)
    assert 10 <= jumps <= 32  # ~10 % of 200, and the rest near sigma
    ok = np.array([d for d in res if np.hypot(d[0], d[1]) < 15.0])
    assert ok[:, 2].std() == pytest.approx(1.5, rel=0.25)


@pytest.mark.parametrize("tilt", [0.0, 6.0])
def test_still_imu_is_gravity_in_base_axes_and_levels_to_the_true_tilt(tilt):
    drive = make_drive(60)
    world = SensorWorld(tilt_deg=tilt, heading_deg=-70.0)
    R0 = base_orientation_enu(drive, 0, world, MOUNT)
    a = imu_accel(drive, 0, world, MOUNT, still=True)
    assert np.linalg.norm(a) == pytest.approx(STANDARD_GRAVITY)
    assert a == pytest.approx(R0.T @ [0, 0, STANDARD_GRAVITY])
    # the base at the start is tilted by the slope (plus the drive's small wobble)
    assert tilt_deg(R0) == pytest.approx(tilt, abs=0.6)
    level = GravityLevel()
    rng = np.random.default_rng(0)
    stamps = still_stamps_ns(drive, 1.0, 100.0)
    assert len(stamps) == 100 and stamps[-1] == drive.stamp_ns(0) - 10_000_000
    for _ in stamps:
        level.add(imu_accel(drive, 0, world, MOUNT, still=True, noise=0.02, rng=rng))
    assert level.level is not None
    assert level.tilt_deg() == pytest.approx(tilt_deg(R0), abs=0.05)
    # the levelled first base_link (the node's map) has z up
    assert tilt_deg(R0 @ level.level.T) < 0.05


def test_imu_while_driving_feels_the_turns_and_is_not_taken_for_still():
    drive = make_drive(300)
    world = SensorWorld()
    norms = [np.linalg.norm(imu_accel(drive, i, world, MOUNT)) for i in range(1, 299)]
    assert min(norms) == pytest.approx(STANDARD_GRAVITY, abs=0.05)  # on the straights
    assert max(norms) > STANDARD_GRAVITY + 1.0  # centripetal in the corners
    level = GravityLevel()
    for i in range(1, 299):
        level.add(imu_accel(drive, i, world, MOUNT))
    assert level.rejected > 0
