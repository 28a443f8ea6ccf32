"""What a car's other sensors would measure on a ``SyntheticDrive`` (no ROS).

Why one module: the mapping tests, the sensors bench and ``scal3r_synthetic_camera``
must feed the same odometry, GNSS and IMU for the same drive, so that a figure measured
in-process is the one the node sees over ROS.

Frames. The drive's world ``W`` is z-up (ground at z = 0); its camera poses ``c2w`` are
OpenCV optical poses. ``base_link`` is the camera's body frame through the mount
``T_base_cam`` (``scal3r_ros.ros.frames.camera_mount``, the node's convention): the base
pose is ``c2w @ inv(T_base_cam)``. ``SensorWorld`` says where the drive lies in the real
world: ENU = ``R_enu_world @ p_W`` with the drive's ground tilted by ``tilt_deg`` (a
slope, so ``base_link`` is not level at the first frame: gravity levelling has work to
do) and turned by ``heading_deg``; the tilt lives only here, in the sensors' notion of
"up", so the images (and an oracle backend's ground truth) are those of the untilted
drive, and the node's map, anchored at the first base_link, sees the same geometry.

- odometry: the base pose in an ``odom`` frame = the first base pose (odometry only gives
  motions), optionally with a random-walk error (``odometry_poses``);
- GNSS: the base origin (antenna) in ENU, to WGS84 with pymap3d, Gaussian noise and
  optional jumps of tens of metres (multipath);
- IMU: the specific force in base axes (gravity's reaction, +g along up, plus the
  drive's acceleration from its positions), and the base orientation in ENU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping.sensors.gnss import GnssFix
from scal3r_ros.mapping.sensors.gravity import STANDARD_GRAVITY
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive

DEFAULT_ANCHOR = (48.137, 11.575, 520.0)  # lat [deg], lon [deg], alt [m] of the drive's origin
# the horizontal axis (drive world) the ground is tilted about: at the start (heading +x)
# the tilt is half pitch, half roll, so both are levelled
TILT_AXIS = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
NAVSAT_COVARIANCE_DIAGONAL_KNOWN = 2  # sensor_msgs/NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
NAVSAT_STATUS_FIX = 0


@dataclass(frozen=True)
class SensorWorld:
    """The drive's place in the real world: its ground tilted by ``tilt_deg`` (about
    ``TILT_AXIS``), its x axis ``heading_deg`` counter-clockwise from east, its origin at
    ``anchor`` (WGS84)."""

    tilt_deg: float = 0.0
    heading_deg: float = 0.0
    anchor: tuple[float, float, float] = DEFAULT_ANCHOR

    def R_enu_world(self) -> np.ndarray:
        """Drive-world axes -> ENU axes (3x3)."""
        tilt = Rotation.from_rotvec(np.radians(self.tilt_deg) * TILT_AXIS)
        heading = Rotation.from_euler("z", self.heading_deg, degrees=True)
        return (heading * tilt).as_matrix()

    def up_world(self) -> np.ndarray:
        """True up (unit) in the drive world's axes."""
        return self.R_enu_world()[2].copy()


def base_poses(c2w: np.ndarray, T_base_cam: np.ndarray) -> np.ndarray:
    """Base poses in the drive world from optical camera poses ((..., 4, 4))."""
    return np.asarray(c2w) @ np.linalg.inv(np.asarray(T_base_cam, dtype=np.float64))


def odometry_pose(drive: SyntheticDrive, i: int, T_base_cam: np.ndarray) -> np.ndarray:
    """Exact odometry: frame ``i``'s base pose in the ``odom`` frame (the first base pose)."""
    B0 = base_poses(drive.gt_pose(0), T_base_cam)
    return np.linalg.inv(B0) @ base_poses(drive.gt_pose(i), T_base_cam)


def odometry_poses(
    drive: SyntheticDrive, T_base_cam: np.ndarray, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """(N, 4, 4) odometry of every frame. ``noise`` > 0 makes it a random walk like wheel
    odometry: each frame-to-frame motion of length d gets ``noise * d`` m (per axis) of
    translation error and ``0.1 * noise * d`` rad (per axis) of rotation error, so the
    error grows with the distance driven (1 % of it at ``noise = 0.01``)."""
    B = base_poses(drive.gt_poses(), T_base_cam)
    out = np.empty_like(B)
    out[0] = np.eye(4)
    rng = np.random.default_rng(seed)
    for k in range(1, len(B)):
        M = np.linalg.inv(B[k - 1]) @ B[k]
        if noise > 0:
            d = float(np.linalg.norm(M[:3, 3]))
            E = np.eye(4)
            E[:3, :3] = Rotation.from_rotvec(rng.normal(0.0, 0.1 * noise * d, 3)).as_matrix()
            E[:3, 3] = rng.normal(0.0, noise * d, 3)
            M = M @ E
        out[k] = out[k - 1] @ M
    return out


def antenna_enu(
    drive: SyntheticDrive, i: int, world: SensorWorld, T_base_cam: np.ndarray
) -> np.ndarray:
    """True ENU position (m) of the base origin (where the antenna is assumed) at frame i."""
    return world.R_enu_world() @ base_poses(drive.gt_pose(i), T_base_cam)[:3, 3]


def gnss_fix(
    drive: SyntheticDrive,
    i: int,
    world: SensorWorld,
    T_base_cam: np.ndarray,
    sigma_m: float = 0.0,
    rng: np.random.Generator | None = None,
    jump_fraction: float = 0.0,
    jump_m: tuple[float, float] = (20.0, 40.0),
) -> GnssFix:
    """The fix at frame ``i``: the antenna's ENU position plus N(0, sigma_m) per axis; with
    probability ``jump_fraction`` shifted horizontally by ``jump_m`` metres (a multipath
    jump the covariance does not admit). The covariance is the diagonal ``sigma_m^2``
    (``COVARIANCE_TYPE_DIAGONAL_KNOWN``; a sigma of 0 is sent as 1 cm)."""
    import pymap3d  # only where GNSS is simulated: mapping/ imports with numpy + torch alone

    rng = rng if rng is not None else np.random.default_rng(0)
    enu = antenna_enu(drive, i, world, T_base_cam) + rng.normal(0.0, sigma_m, 3)
    # drawn whether or not jumps are asked for: the same seed gives the same noise with and
    # without jumps, so the two differ only by the jumps
    u, angle, size = rng.uniform(), rng.uniform(0.0, 2 * np.pi), rng.uniform(*jump_m)
    if u < jump_fraction:
        enu[:2] += size * np.array([np.cos(angle), np.sin(angle)])
    lat, lon, alt = pymap3d.enu2geodetic(*enu, *world.anchor)
    var = max(sigma_m, 0.01) ** 2
    return GnssFix(
        drive.stamp_ns(i),
        float(lat),
        float(lon),
        float(alt),
        NAVSAT_STATUS_FIX,
        (var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, var),
        NAVSAT_COVARIANCE_DIAGONAL_KNOWN,
    )


def reanchor_enu(
    enu: np.ndarray, anchor: tuple[float, float, float], new_anchor: tuple[float, float, float]
) -> np.ndarray:
    """ENU positions (N, 3) about ``anchor`` -> about ``new_anchor`` (both lat, lon, alt):
    a GNSS input anchors its ENU at its first accepted fix, not at the drive's origin."""
    import pymap3d

    e, n, u = np.asarray(enu, dtype=np.float64).reshape(-1, 3).T
    lat, lon, alt = pymap3d.enu2geodetic(e, n, u, *anchor)
    return np.stack(pymap3d.geodetic2enu(lat, lon, alt, *new_anchor), axis=-1)


def base_orientation_enu(
    drive: SyntheticDrive, i: int, world: SensorWorld, T_base_cam: np.ndarray
) -> np.ndarray:
    """R_enu_base (3x3) at frame ``i``: what an IMU's orientation estimate reports."""
    return world.R_enu_world() @ base_poses(drive.gt_pose(i), T_base_cam)[:3, :3]


def imu_accel(
    drive: SyntheticDrive,
    i: int,
    world: SensorWorld,
    T_base_cam: np.ndarray,
    still: bool = False,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Specific force (m/s^2) in base axes at frame ``i``: gravity's reaction (+g along
    up) plus, unless ``still``, the drive's acceleration (second difference of its
    positions at the frame rate; none at the two ends). ``noise``: per-axis sigma."""
    W = drive.gt_poses()
    a_world = np.zeros(3)
    if not still and 0 < i < len(W) - 1:
        p = W[i - 1 : i + 2, :3, 3]
        a_world = (p[2] - 2 * p[1] + p[0]) * drive.config.fps**2
    f_enu = world.R_enu_world() @ a_world + np.array([0.0, 0.0, STANDARD_GRAVITY])
    f_base = base_orientation_enu(drive, i, world, T_base_cam).T @ f_enu
    if noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        f_base = f_base + rng.normal(0.0, noise, 3)
    return f_base


def still_stamps_ns(drive: SyntheticDrive, still_s: float, rate_hz: float) -> np.ndarray:
    """Stamps of IMU samples at ``rate_hz`` over the ``still_s`` seconds before the first
    image (the car waiting at the start), ending one period before it."""
    n = int(round(still_s * rate_hz))
    period_ns = 1e9 / rate_hz
    t0 = drive.stamp_ns(0)
    return np.array([t0 - round((n - k) * period_ns) for k in range(n)], dtype=np.int64)


def tilt_deg(R_up_frame: np.ndarray) -> float:
    """Angle (degrees) between a frame's z axis and up, given the frame's rotation in any
    z-up frame (e.g. R_enu_map): 0 for a levelled map."""
    z = np.asarray(R_up_frame, dtype=np.float64)[:, 2]
    return float(np.degrees(np.arccos(np.clip(z[2] / np.linalg.norm(z), -1.0, 1.0))))
