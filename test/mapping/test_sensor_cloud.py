"""Sensor-frame clouds: per-frame points in the optical frame, checked against the scene."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import FrameCloudsUpdate
from scal3r_ros.mapping.planning.sensor_cloud import (
    SensorCloudBuilder,
    SensorCloudConfig,
    frame_cloud,
)
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.sim3 import umeyama

N_FRAMES = 40


DRIVE = dict(n_frames=N_FRAMES, seed=0)  # the conftest's ``drive`` fixture


def run(drive: SyntheticDrive, frame_clouds: bool):
    cfg = EngineConfig.low_latency(frame_clouds=frame_clouds)
    eng = MappingEngine(cfg, OracleBackend(drive, OracleConfig(seed=3)))
    events = push_and_collect(eng, drive)
    ids, _, c2w = eng.poses()
    scale = umeyama(c2w[:, :3, 3], drive.gt_poses()[ids][:, :3, 3]).s  # metres per map unit
    return events, scale


@pytest.fixture(scope="module")
def with_clouds(drive):
    return run(drive, True)


def test_off_by_default(drive):
    events, _ = run(drive, False)
    assert not any(isinstance(e, FrameCloudsUpdate) for e in events)


def test_every_frame_once_and_points_on_the_true_surface(drive, with_clouds):
    events, scale = with_clouds
    ups = [e for e in events if isinstance(e, FrameCloudsUpdate)]
    fids = np.concatenate([u.frame_ids for u in ups])
    assert sorted(fids.tolist()) == list(range(N_FRAMES))  # each frame exactly once
    cfg = SensorCloudConfig(voxel_size=0.2, max_depth=30.0, max_points=3000)
    builder = SensorCloudBuilder(cfg)
    n_total = 0
    for u in ups:
        for c in builder.build(u, scale):
            assert c.stamp_ns == drive.stamp_ns(c.frame_id) and c.camera_id == "cam0"
            assert 0 < len(c.xyz) <= cfg.max_points
            assert (c.xyz[:, 2] > 0).all() and (c.xyz[:, 2] <= cfg.max_depth + 1e-4).all()
            # optical frame of that image: the ground-truth pose puts it on the scene
            T = drive.gt_pose(c.frame_id)
            world = c.xyz.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
            err = drive.surface_distance(world)
            assert np.percentile(err, 99) < 0.02, np.percentile(err, 99)  # metres
            keys = np.floor(c.xyz / cfg.voxel_size).astype(np.int64)
            assert len(np.unique(keys, axis=0)) == len(keys)  # one point per voxel
            n_total += len(c.xyz)
    assert n_total > 1000


def test_frame_selection(with_clouds):
    events, _ = with_clouds
    ups = [e for e in events if isinstance(e, FrameCloudsUpdate)]
    every = SensorCloudBuilder(SensorCloudConfig(frames="every_n", every_n=4))
    got = [c.frame_id for u in ups for c in every.build(u)]
    assert got == list(range(0, N_FRAMES, 4))
    newest = SensorCloudBuilder(SensorCloudConfig(frames="newest"))
    got = [c.frame_id for u in ups for c in newest.build(u)]
    assert got == [int(u.frame_ids.max()) for u in ups]
    with pytest.raises(ValueError):
        SensorCloudConfig(frames="keyframes")


def test_confidence_filter_cap_and_invalid_depth():
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    depth = np.full((48, 64), 5.0, np.float32)
    depth[:, :8] = np.nan  # invalid
    conf = np.ones((48, 64), np.float32)
    conf[24:] = 10.0  # bottom half confident
    dense = SensorCloudConfig(pixel_stride=1, voxel_size=0, max_points=0)
    xyz, c = frame_cloud(depth, conf, K, scale=2.0, config=dense)
    assert np.isfinite(xyz).all() and (c == 10.0).all()
    assert (xyz[:, 1] > 0).all()  # only the lower image half (y down)
    np.testing.assert_allclose(xyz[:, 2], 10.0)  # depth x scale
    assert len(xyz) == 24 * 56
    capped = SensorCloudConfig(pixel_stride=1, voxel_size=0, max_points=50)
    xyz, c = frame_cloud(depth, conf, K, config=capped)
    assert len(xyz) == 50
    xyz, _ = frame_cloud(np.full((4, 4), np.nan, np.float32), np.ones((4, 4), np.float32), K)
    assert xyz.shape == (0, 3)
