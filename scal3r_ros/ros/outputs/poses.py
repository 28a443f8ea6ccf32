"""Robot poses out: /tf (odom -> base_link per new frame, map -> odom), ~/odometry, ~/path.

REP-105: a frame's odometry pose is its first estimate and never changes (odom is
continuous); later corrections (overlap hand-over, loop closure, rescale) go into
map -> odom, computed from the newest frame.

Why a class of its own: the node and `scal3r_bench` (which times what the node
publishes) must publish the same way, and the state must stay bounded over hour-long
drives. Kept per frame: its engine pose, map pose and stamp, in numpy arrays (265 bytes
a frame, no message object per frame; the engine pose re-expresses the map pose when
the scale changes). ~/path is built from those arrays when it is due,
at most every ``path_period`` seconds, with at most ``path_max_poses`` poses (evenly
thinned, the first and newest always kept): its cost per publication is bounded while
the drive grows. Saved trajectories are complete (they come from the engine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from scipy.spatial.transform import Rotation
from tf2_msgs.msg import TFMessage

from scal3r_ros.mapping.events import MapUpdate, PosesUpdate
from scal3r_ros.ros.conversions import ns_to_stamp
from scal3r_ros.ros.frames import FrameConverter, quaternion_from_matrix, rigid_inverse
from scal3r_ros.ros.outputs import ScaleUpdate, Track


def transform_msg(T: np.ndarray, parent: str, child: str, stamp) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t = msg.transform.translation
    t.x, t.y, t.z = (float(v) for v in T[:3, 3])
    q = msg.transform.rotation
    q.x, q.y, q.z, q.w = (float(v) for v in quaternion_from_matrix(T[:3, :3]))
    return msg


def set_pose(pose, T: np.ndarray) -> None:
    """Fill a geometry_msgs/Pose from a rigid 4x4."""
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    q = quaternion_from_matrix(T[:3, :3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = map(float, q)


def thin_indices(n: int, max_count: int) -> np.ndarray:
    """Indices of at most ``max_count`` of ``n`` items, evenly spread, first and last kept
    (``max_count`` <= 0: all)."""
    if max_count <= 0 or n <= max_count:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(max_count, 2)).round().astype(np.int64))


@dataclass
class PoseFrames:
    map: str = "map"
    odom: str = "odom"
    base: str = "base_link"


class PoseOutputs:
    """/tf, ~/odometry and ~/path (an `Output`; see the module docstring). ``on_events``
    runs on the worker thread; ``publish_path`` may also run on a timer (a lock guards the
    pose arrays)."""

    def __init__(
        self,
        converter: FrameConverter,
        frames: PoseFrames,
        publish_tf: Callable[[TFMessage], None],
        publish_odometry: Callable[[Odometry], None],
        publish_path: Callable[[PathMsg], None],
        path_period: float = 1.0,
        path_max_poses: int = 5000,
    ) -> None:
        self.converter, self.frames = converter, frames
        self._pub_tf, self._pub_odom, self._pub_path = publish_tf, publish_odometry, publish_path
        self.path_period, self.path_max_poses = path_period, path_max_poses
        self._lock = threading.Lock()  # pose arrays
        self._path_lock = threading.Lock()  # one ~/path publication at a time, in order
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._track = Track()  # frame id -> engine pose, stamp
            self._T = np.zeros((0, 4, 4))  # frame id -> corrected T_map_base
            self._odom_last: tuple[int, np.ndarray, int] | None = None  # (id, T_odom_base, ns)
            self._odom_only = np.zeros(0, bool)  # frames published in odom before a fix
            self.T_map_odom = np.eye(4)
            self.newest = -1  # newest frame id placed
            self._newest_stamp = 0  # its stamp; read by other threads (one attribute)
            self._path_dirty = False
            self._last_path_pub = -np.inf

    @property
    def newest_stamp_ns(self) -> int:
        return self._newest_stamp

    def __len__(self) -> int:
        return len(self._track)

    # ------------------------------------------------------------ updates
    def on_events(self, events: list[MapUpdate]) -> None:
        """Poses of the batch (/tf, odometry), a rescale, then ~/path when it is due."""
        for ev in events:
            if isinstance(ev, PosesUpdate):
                self.on_poses(ev)
            elif isinstance(ev, ScaleUpdate) and ev.rescaled:
                self._rescale()
        self.publish_path(time.monotonic())

    def on_poses(self, ev: PosesUpdate) -> None:
        """Record the event's poses; /tf and odometry for frames seen for the first time."""
        f = self.frames
        ids = np.asarray(ev.frame_ids, np.int64)
        T_map_base = self.converter.base_poses(ev.c2w)
        with self._lock:
            new = self._track.add(ev)
            pre = ids < len(self._odom_only)
            new[pre] &= ~self._odom_only[ids[pre]]  # already in odom (before a fix)
            if len(self._T) < len(self._track.have):
                grown = np.tile(np.eye(4), (len(self._track.have), 1, 1))
                grown[: len(self._T)] = self._T
                self._T = grown
            self._T[ids] = T_map_base
            self._path_dirty = True
        transforms = []
        for k in np.flatnonzero(new):
            fid, ns, T = int(ids[k]), int(ev.stamps_ns[k]), T_map_base[k]
            # first estimate: the odometry keeps it for good
            T_odom = rigid_inverse(self.T_map_odom) @ T
            self._publish_odometry(fid, T_odom, ns)
            transforms.append(transform_msg(T_odom, f.odom, f.base, ns_to_stamp(ns)))
            self._odom_last = (fid, T_odom, ns)
            if fid > self.newest:
                self.newest, self._newest_stamp = fid, ns
        if self.newest < 0 or self._odom_last is None:
            return
        # map -> odom absorbs the difference between corrected and published poses
        fid, T_odom_newest, ns = self._odom_last
        if not (fid < len(self._track.have) and self._track.have[fid]):
            if transforms:  # its pose in map is not known yet (relocalising)
                self._pub_tf(TFMessage(transforms=transforms))
            return
        self.T_map_odom = self._T[fid] @ rigid_inverse(T_odom_newest)
        transforms.append(transform_msg(self.T_map_odom, f.map, f.odom, ns_to_stamp(ns)))
        self._pub_tf(TFMessage(transforms=transforms))

    def on_odometry_only(self, ev: PosesUpdate, T_odom_base: np.ndarray) -> None:
        """Frames not placed in ``map`` yet (relocalising in a loaded map): odom ->
        base_link and ~/odometry (``T_odom_base`` (N, 4, 4), their poses in odom), no
        map -> odom, nothing in ~/path. When their poses in ``map`` come (`on_poses`,
        corrected), they are not published in odom again; map -> odom then places the
        odometry in the map."""
        f = self.frames
        ids = np.asarray(ev.frame_ids, np.int64)
        with self._lock:
            if len(ids) and ids.max() >= len(self._odom_only):
                grown = np.zeros(max(int(ids.max()) + 1, 2 * len(self._odom_only)), bool)
                grown[: len(self._odom_only)] = self._odom_only
                self._odom_only = grown
            seen = self._odom_only[ids].copy()
            self._odom_only[ids] = True
        transforms = []
        for k in np.flatnonzero(~seen):
            fid, ns, T = int(ids[k]), int(ev.stamps_ns[k]), np.asarray(T_odom_base[k])
            self._publish_odometry(fid, T, ns)
            transforms.append(transform_msg(T, f.odom, f.base, ns_to_stamp(ns)))
            self._odom_last = (fid, T, ns)
            if fid > self.newest:
                self.newest, self._newest_stamp = fid, ns
        if transforms:
            self._pub_tf(TFMessage(transforms=transforms))

    def last_odometry(self) -> np.ndarray:
        """The newest pose published in odom (identity before any)."""
        return np.eye(4) if self._odom_last is None else self._odom_last[1].copy()

    def _rescale(self) -> None:
        """Re-express every pose in the converter's new scale; published with the next
        path, at once."""
        with self._lock:
            ids, _, c2w = self._track.poses()
            if len(ids):
                self._T[ids] = self.converter.base_poses(c2w)
            self._path_dirty = True
            self._last_path_pub = -np.inf

    def _publish_odometry(self, fid: int, T: np.ndarray, stamp_ns: int) -> None:
        msg = Odometry()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.header.frame_id = self.frames.odom
        msg.child_frame_id = self.frames.base
        set_pose(msg.pose.pose, T)
        prev = self._odom_last
        if prev is not None and prev[0] == fid - 1 and stamp_ns > prev[2]:
            # twist in the child frame, by finite difference
            dt = (stamp_ns - prev[2]) / 1e9
            delta = rigid_inverse(prev[1]) @ T
            v = delta[:3, 3] / dt
            msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = v
            w = Rotation.from_matrix(delta[:3, :3]).as_rotvec() / dt
            msg.twist.twist.angular.x, msg.twist.twist.angular.y, msg.twist.twist.angular.z = w
        self._pub_odom(msg)

    # ------------------------------------------------------------ path
    def publish_path(self, now: float, force: bool = False) -> bool:
        """Publish ~/path if poses changed and ``path_period`` has passed (or ``force``).
        Worker and timer may both call it; the message is built outside the pose lock."""
        with self._path_lock:
            with self._lock:
                due = force or now - self._last_path_pub >= self.path_period
                if not self._path_dirty or not due:
                    return False
                ids = np.flatnonzero(self._track.have)
                ids = ids[thin_indices(len(ids), self.path_max_poses)]
                T, stamps = self._T[ids], self._track.stamps[ids]
                self._path_dirty = False
                self._last_path_pub = now
            self._pub_path(self.path_message(T, stamps))
        return True

    def path_message(self, T: np.ndarray, stamps_ns: np.ndarray) -> PathMsg:
        path = PathMsg()
        path.header.frame_id = self.frames.map
        path.header.stamp = ns_to_stamp(int(stamps_ns[-1]) if len(stamps_ns) else 0)
        if not len(T):
            return path
        q = Rotation.from_matrix(T[:, :3, :3]).as_quat()  # x, y, z, w
        poses = []
        for (x, y, z), (qx, qy, qz, qw), ns in zip(
            T[:, :3, 3].tolist(), q.tolist(), stamps_ns.tolist(), strict=True
        ):
            ps = PoseStamped()
            ps.header.frame_id = self.frames.map
            ps.header.stamp = ns_to_stamp(ns)
            p, o = ps.pose.position, ps.pose.orientation
            p.x, p.y, p.z = x, y, z
            o.x, o.y, o.z, o.w = qx, qy, qz, qw
            poses.append(ps)
        path.poses = poses
        return path
