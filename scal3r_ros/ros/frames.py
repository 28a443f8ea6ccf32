"""Engine geometry -> ROS frames (REP-103 axes, REP-105 map -> odom -> base_link).

The engine works in OpenCV camera axes (x right, y down, z forward) in a gauge of the
network's choosing. ROS wants ``map`` with z up and x forward. With ``T_base_cam`` the
pose of the camera's optical frame in ``base_link`` and ``c2w_0`` the engine pose of the
first frame, the node places ``map`` at the first frame's ``base_link``:

    T_map_engine = T_base_cam @ inv(c2w_0)
    T_map_base   = T_map_engine @ c2w_engine @ inv(T_base_cam)

``odom -> base_link`` carries each pose as first published (continuous, drifting);
``map -> odom`` absorbs every later correction (overlap hand-over, loop closure), as
REP-105 asks, so the odometry never jumps.
"""

from __future__ import annotations

import numpy as np

# Optical frame axes expressed in the camera body frame (x forward, y left, z up):
# optical z (forward) = body x, optical x (right) = -body y, optical y (down) = -body z.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Fixed-axis roll-pitch-yaw (ROS convention: R = Rz(yaw) Ry(pitch) Rx(roll))."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def camera_mount(xyz=(0.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.0)) -> np.ndarray:
    """T_base_cam (optical frame in base_link) from the camera *body* pose in base_link."""
    T = np.eye(4)
    T[:3, :3] = rpy_to_matrix(*rpy) @ R_BODY_OPTICAL
    T[:3, 3] = xyz
    return T


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix (Shepperd's method, w >= 0)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


class FrameConverter:
    """Turns engine poses/points into ``map``-frame quantities for one camera mount.

    The engine's own frame is a network gauge (the first chunk's reference camera, as
    predicted); the node anchors ``map`` at the first frame's ``base_link`` instead
    (`set_anchor` with that frame's engine pose), so the map is level when the camera
    starts level, whatever the gauge. ``scale`` (metres per engine unit) multiplies
    every translation and point, so a scale source can make /tf metric. ``level`` (a
    roll/pitch rotation from gravity, `set_level`) turns ``map`` about its origin so that
    its z is up (REP-103) when the first base_link was not level.
    """

    def __init__(self, T_base_cam: np.ndarray, scale: float = 1.0) -> None:
        self.set_mount(T_base_cam)
        self.scale = float(scale)
        self.anchor: np.ndarray | None = None  # inverse of the first frame's engine pose
        self.level = np.eye(3)  # the first base_link's axes -> map axes

    def set_mount(self, T_base_cam: np.ndarray) -> None:
        self.T_base_cam = np.asarray(T_base_cam, dtype=np.float64)
        self.T_cam_base = rigid_inverse(self.T_base_cam)

    def set_anchor(self, c2w_first: np.ndarray) -> None:
        self.anchor = rigid_inverse(np.asarray(c2w_first, dtype=np.float64))

    def set_level(self, R_level: np.ndarray) -> None:
        self.level = np.asarray(R_level, dtype=np.float64).copy()

    def engine_to_map(self) -> np.ndarray:
        """T_map_engine with the scale folded in: x_map = R (s x) + t."""
        A = np.eye(4) if self.anchor is None else self.anchor.copy()
        A[:3, 3] *= self.scale
        L = np.eye(4)
        L[:3, :3] = self.level
        return L @ self.T_base_cam @ A

    def base_poses(self, c2w: np.ndarray) -> np.ndarray:
        """(N, 4, 4) engine camera-to-world -> (N, 4, 4) T_map_base (rigid, scaled)."""
        c2w = np.array(c2w, dtype=np.float64).reshape(-1, 4, 4)
        c2w[:, :3, 3] *= self.scale
        return self.engine_to_map() @ c2w @ self.T_cam_base

    def points(self, xyz: np.ndarray) -> np.ndarray:
        """(M, 3) engine-frame points -> map frame (float32)."""
        T = self.engine_to_map()
        return (np.asarray(xyz, dtype=np.float64) * self.scale @ T[:3, :3].T + T[:3, 3]).astype(
            np.float32
        )
