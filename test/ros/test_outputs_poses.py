"""PoseOutputs: REP-105 odometry/TF from pose events, and a bounded, throttled ~/path."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive

from scal3r_ros.mapping.events import PosesUpdate
from scal3r_ros.ros.frames import FrameConverter, camera_mount, matrix_from_quaternion
from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs, thin_indices

pytestmark = pytest.mark.ros


def _T(pose) -> np.ndarray:
    q, p = pose.orientation, pose.position
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([q.x, q.y, q.z, q.w])
    T[:3, 3] = p.x, p.y, p.z
    return T


class Sink:
    def __init__(self, max_poses: int = 0, period: float = 1.0) -> None:
        self.tf, self.odom, self.path = [], [], []
        conv = FrameConverter(camera_mount())
        self.out = PoseOutputs(
            conv,
            PoseFrames(),
            self.tf.append,
            self.odom.append,
            self.path.append,
            path_period=period,
            path_max_poses=max_poses,
        )
        self.drive = make_drive(n_frames=400)
        conv.set_anchor(self.drive.gt_pose(0))

    def event(self, ids, corrected=False, shift=0.0) -> PosesUpdate:
        ids = np.asarray(ids)
        c2w = np.stack([self.drive.gt_pose(int(i)) for i in ids])
        c2w[:, 0, 3] += shift
        stamps = np.array([self.drive.stamp_ns(int(i)) for i in ids])
        ev = PosesUpdate(0, ids, stamps, c2w, corrected, "test")
        self.out.on_poses(ev)
        return ev


def test_odometry_keeps_first_estimates_and_map_odom_absorbs_corrections():
    s = Sink()
    s.event(range(0, 16))
    assert len(s.odom) == 16 and len(s.tf) == 1
    odom_before = [_T(m.pose.pose) for m in s.odom]
    # every frame corrected by +1 m in engine x (a loop closure): no new odometry,
    # map -> odom takes the whole correction
    s.event(range(0, 16), corrected=True, shift=1.0)
    assert len(s.odom) == 16
    tf = s.tf[-1].transforms
    assert [t.child_frame_id for t in tf] == ["odom"]
    T_map_odom = s.out.T_map_odom
    newest_map = T_map_odom @ odom_before[-1]
    np.testing.assert_allclose(newest_map, s.out._T[15], atol=1e-9)
    assert np.linalg.norm(T_map_odom[:3, 3]) == pytest.approx(1.0, abs=1e-6)
    # new frames: odometry continues from the published (uncorrected) chain
    s.event(range(16, 24), shift=1.0)
    assert len(s.odom) == 24
    np.testing.assert_allclose(
        _T(s.odom[16].pose.pose)[:3, 3],
        odom_before[-1][:3, 3] + (s.out._T[16] - s.out._T[15])[:3, 3],
        atol=1e-6,
    )
    # twist from consecutive frames: the synthetic car drives forward
    assert s.odom[20].twist.twist.linear.x > 0.5


def test_path_is_throttled_thinned_and_ends_with_the_newest_pose():
    s = Sink(max_poses=50, period=1.0)
    for start in range(0, 392, 8):
        s.event(range(start, start + 8))
    assert s.out.publish_path(now=100.0)
    assert not s.out.publish_path(now=100.5)  # within the period, nothing new
    s.event(range(392, 400))
    assert not s.out.publish_path(now=100.5)  # new poses, but within the period
    assert s.out.publish_path(now=101.1)
    path = s.path[-1]
    assert len(path.poses) == 50
    stamps = [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in path.poses]
    assert stamps[0] == s.drive.stamp_ns(0) and stamps[-1] == s.drive.stamp_ns(399)
    assert stamps == sorted(stamps)
    np.testing.assert_allclose(_T(path.poses[-1].pose), s.out._T[399], atol=1e-6)
    assert s.out.publish_path(now=101.2, force=False) is False
    # reset forgets everything
    s.out.reset()
    assert len(s.out) == 0 and s.out.newest_stamp_ns == 0


def test_thin_indices():
    assert thin_indices(10, 0).tolist() == list(range(10))
    assert thin_indices(10, 20).tolist() == list(range(10))
    idx = thin_indices(10_000, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 9999
    assert np.all(np.diff(idx) > 0)
