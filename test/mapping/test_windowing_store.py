"""Chunk scheduling vs the official chunk list; map store, frame store and exports."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive

from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
from scal3r_ros.mapping.map_store import MapConfig, MapStore
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.trajectory import Trajectory
from scal3r_ros.mapping.windowing import (
    ChunkScheduler,
    WindowConfig,
    official_chunks,
    reference_order,
)


@pytest.mark.parametrize(("size", "overlap"), [(60, 30), (16, 8), (10, 3), (5, 0)])
def test_streamed_chunks_equal_the_official_list(size, overlap):
    for n in range(0, 150):
        sched = ChunkScheduler(WindowConfig(size, overlap))
        got = []
        for _ in range(n):
            spec = sched.push()
            if spec is not None:
                assert spec.frame_ids[-1] == sched.n_frames - 1  # ready on its last frame
                got.append((spec.frame_ids[0], spec.frame_ids[-1] + 1))
        spec = sched.flush()
        if spec is not None:
            got.append((spec.frame_ids[0], spec.frame_ids[-1] + 1))
        assert got == official_chunks(n, size, overlap), n


def test_official_chunk_formula_and_reference_order():
    # n = ceil((N - overlap) / step); single chunk when N <= size (the official release's
    # chunking, https://github.com/zju3dv/Scal3R)
    assert official_chunks(100, 60, 30) == [(0, 60), (30, 90), (60, 100)]
    assert official_chunks(60, 60, 30) == [(0, 60)]
    assert reference_order(60)[0] == 29  # middle frame first
    assert reference_order(5) == (2, 0, 1, 3, 4)
    assert sorted(reference_order(17)) == list(range(17))
    with pytest.raises(ValueError):
        WindowConfig(8, 8)


def _read_ply(path):
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode()
    n = int(header.split("element vertex ")[1].split()[0])
    dt = np.dtype(
        [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("r", "u1"),
            ("g", "u1"),
            ("b", "u1"),
            ("c", "<f4"),
        ]
    )
    return header, np.frombuffer(raw[end:], dtype=dt, count=n)


def _read_pcd(path):
    raw = path.read_bytes()
    end = raw.index(b"DATA binary\n") + len(b"DATA binary\n")
    header = raw[:end].decode()
    n = int(header.split("POINTS ")[1].split()[0])
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("c", "<f4")])
    assert len(raw) - end == n * dt.itemsize
    return header, np.frombuffer(raw[end:], dtype=dt, count=n)


def _toy_store(voxel=0.5):
    store = MapStore(MapConfig(voxel_size=voxel))
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 4, size=(2, 10, 10, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, size=(2, 10, 10, 3), dtype=np.uint8)
    conf = np.full((2, 10, 10), 5.0, np.float32)
    conf[:, :2] = 1.0  # below 0.75 x mean -> filtered
    return store, pts, rgb, conf


def test_map_store_moves_points_with_the_chunk_and_exports(tmp_path):
    store, pts, rgb, conf = _toy_store()
    g = Sim3(2.0, np.eye(3), np.array([1.0, 0, 0]))
    xyz, col, cf = store.insert(0, g, pts, rgb, conf, np.array([10, 11]))
    assert len(xyz) == len(store) > 0 and np.all(cf == 5.0)
    # voxel grid in map units: at most one point per 0.5 m voxel
    keys = np.floor(xyz / 0.5).astype(int)
    assert len(np.unique(keys, axis=0)) == len(keys)
    g2 = Sim3(1.0, np.eye(3), np.array([0, 0, 10.0])) @ g
    store.set_chunk_pose(0, g2)
    moved, _, _ = store.points()
    np.testing.assert_allclose(np.sort(moved[:, 2]), np.sort(xyz[:, 2] + 10), atol=1e-5)
    assert store.drop_frames(0, np.array([11])) > 0
    store.save(tmp_path / "m.ply", voxelize=False)
    store.save(tmp_path / "m.pcd", voxelize=False)
    h, ply = _read_ply(tmp_path / "m.ply")
    assert "binary_little_endian" in h and len(ply) == len(store)
    h, pcd = _read_pcd(tmp_path / "m.pcd")
    assert "FIELDS x y z rgb confidence" in h and len(pcd) == len(store)
    np.testing.assert_allclose(np.sort(ply["z"]), np.sort(pcd["z"]))
    r = (pcd["rgb"] >> 16) & 255
    assert sorted(r.tolist()) == sorted(ply["r"].tolist())


def _random_sim3(rng) -> Sim3:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Sim3(float(rng.uniform(0.5, 2)), q * np.sign(np.linalg.det(q)), rng.normal(size=3))


def test_trajectory_poses_follow_their_chunks():
    """Vectorised poses equal Sim3.apply_pose per frame; re-owned frames move with their
    new chunk; moving chunks moves exactly their frames."""
    rng = np.random.default_rng(3)
    traj = Trajectory()
    chunks = {c: _random_sim3(rng) for c in range(40)}
    for c, g in chunks.items():
        traj.set_chunk_pose(c, g)
    local = {}
    for f in range(700):  # grows past the initial capacity several times
        local[f] = _random_sim3(rng).matrix()
        local[f][:3, :3] /= np.cbrt(np.linalg.det(local[f][:3, :3]))  # rigid
        traj.set_frame(f, 1000 + f, f // 20, local[f])
    for f in range(15, 25):  # overlap handed over to the next chunk
        traj.set_frame(f, 1000 + f, 1, local[f])
    assert len(traj) == 700
    owner = {f: (1 if 15 <= f < 25 else f // 20) for f in range(700)}
    chunks[1] = chunks[5] = _random_sim3(rng)  # a correction moves two chunks
    traj.set_chunk_pose(1, chunks[1])
    traj.set_chunk_pose(5, chunks[5])
    moved = traj.frames_of_chunks([1, 5])
    np.testing.assert_array_equal(moved, [f for f in range(700) if owner[f] in (1, 5)])
    ids = np.array([699, 3, 17, 100, 250])
    stamps, c2w = traj.poses(ids)
    np.testing.assert_array_equal(stamps, 1000 + ids)
    for f, T in zip(ids, c2w, strict=True):
        np.testing.assert_allclose(T, chunks[owner[f]].apply_pose(local[f]), atol=1e-12)
        assert traj.owner(int(f)) == owner[f]
    np.testing.assert_array_equal(traj.frame_ids(), np.arange(700))
    with pytest.raises(KeyError):
        traj.poses(np.array([700]))


def test_trajectory_exports_are_read_by_evo(tmp_path):
    from evo.core import metrics, sync
    from evo.tools import file_interface

    drive = make_drive(n_frames=30)
    traj = Trajectory()
    traj.set_chunk_pose(0, Sim3(0.5, np.eye(3), np.zeros(3)))  # arbitrary map scale
    for i in range(30):
        local = drive.gt_pose(i).copy()
        local[:3, 3] *= 2.0
        traj.set_frame(i, drive.stamp_ns(i), 0, local)
    traj.save(tmp_path / "est.tum", "tum")
    traj.save(tmp_path / "est.kitti", "kitti")
    drive.save_gt(tmp_path / "gt.tum", "tum")
    est = file_interface.read_tum_trajectory_file(str(tmp_path / "est.tum"))
    ref = file_interface.read_tum_trajectory_file(str(tmp_path / "gt.tum"))
    kit = file_interface.read_kitti_poses_file(str(tmp_path / "est.kitti"))
    assert est.num_poses == ref.num_poses == kit.num_poses == 30
    np.testing.assert_allclose(est.timestamps[1] - est.timestamps[0], 0.1, atol=1e-9)
    ref, est = sync.associate_trajectories(ref, est)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    assert ape.get_statistic(metrics.StatisticsType.rmse) < 1e-6
    np.testing.assert_allclose(kit.positions_xyz, est.positions_xyz, atol=1e-6)


def test_frame_store_spills_and_caps(tmp_path):
    fs = FrameStore(FrameStoreConfig(ram_frames=3, max_frames=6, spill_dir=str(tmp_path)))
    for i in range(10):
        fs.put(i, StoredFrame(np.full((4, 5, 3), i, np.uint8), 100 + i, "c", None))
    assert len(fs) == 6 and fs.disk_frames() == 3
    assert fs.get(5).image[0, 0, 0] == 5 and fs.get(5).stamp_ns == 105  # from disk
    assert fs.get(9).image[0, 0, 0] == 9
    with pytest.raises(KeyError):
        fs.get(2)
    fs.reset()  # the spilled files go; the process's spill folder stays until exit
    assert not [p for p in tmp_path.rglob("*") if not p.is_dir()]


def test_synthetic_drive_is_deterministic_and_loops():
    a = make_drive(n_frames=50, seed=3)
    b = make_drive(n_frames=50, seed=3)
    rgb_a, d_a = a.render(7)
    rgb_b, d_b = b.render(7)
    assert np.array_equal(rgb_a, rgb_b) and np.array_equal(d_a, d_b)
    P = a.gt_poses()
    # it revisits its start: some late frame is within 5 m of frame 0
    gaps = np.linalg.norm(P[30:, :3, 3] - P[0, :3, 3], axis=1)
    assert gaps.min() < 5.0
    # depth is exact: unprojected ground pixels lie on z = 0
    K, c2w = a.K, P[7]
    v, u = 40, 80
    ray = np.linalg.inv(K) @ np.array([u + 0.5, v + 0.5, 1.0])
    p = c2w[:3, :3] @ (ray * d_a[v, u]) + c2w[:3, 3]
    assert a.surface_distance(p[None])[0] < 1e-4
