"""Sessions (issue 17): a mapped drive exported, written, read back and loaded into a fresh
engine gives the same map and trajectory bit for bit and the same graph, and the loaded
engine keeps mapping with ids after the loaded ones."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import PosesUpdate
from scal3r_ros.mapping.loop_closure import LoopClosure, LoopClosureConfig, LoopDetectorConfig
from scal3r_ros.mapping.map_store import MapSnapshot
from scal3r_ros.mapping.session import (
    Keyframes,
    SessionError,
    decode_thumbnail,
    encode_thumbnail,
    read_session,
    write_session,
)
from scal3r_ros.mapping.sim3 import Sim3

N_FIRST = 110  # frames of the first run; the drive (140) revisits its start from ~100 on


@pytest.fixture(scope="module")
def drive():
    return make_drive(n_frames=140, seed=0)


def make_engine(drive, loops: bool = True) -> MappingEngine:
    lc = None
    if loops:
        lc = LoopClosure(LoopClosureConfig(detector=LoopDetectorConfig(use_nms=False)))
    oracle = OracleConfig(drift_yaw_deg_per_frame=0.15, seed=3)
    return MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, oracle), lc)


@pytest.fixture(scope="module")
def mapped(drive, tmp_path_factory):
    """The first run (loops closed), its export, and the session folder written from it."""
    eng = make_engine(drive)
    push_and_collect(eng, (drive.frame(i) for i in range(N_FIRST)))
    data = eng.export_session()
    path = write_session(data, tmp_path_factory.mktemp("sessions") / "lap1")
    return eng, data, path


def test_round_trip_gives_the_same_map_trajectory_and_graph(drive, mapped):
    eng, data, path = mapped
    assert eng.pose_graph.num_loops > 0  # the graph has loop edges to carry over
    back = read_session(path, expected=eng.session_parameters())
    fresh = make_engine(drive)
    fresh.load_session(back)
    for voxelize in (True, False):
        for a, b in zip(eng.map_points(voxelize), fresh.map_points(voxelize), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    for a, b in zip(eng.poses(), fresh.poses(), strict=True):
        assert np.array_equal(a, b)
    assert (fresh.n_frames, fresh.n_chunks) == (eng.n_frames, eng.n_chunks)
    assert fresh.chunk_spans() == eng.chunk_spans()
    g0, g1 = eng.pose_graph, fresh.pose_graph
    assert g1.nodes == g0.nodes and g1.num_loops == g0.num_loops == len(g0.edges) - len(g0) + 1
    for e0, e1 in zip(g0.edges, g1.edges, strict=True):
        assert (e0.src, e0.dst, e0.kind, e0.kernel, e0.robust_k) == (
            e1.src,
            e1.dst,
            e1.kind,
            e1.kernel,
            e1.robust_k,
        )
        assert np.array_equal(e0.sigmas, e1.sigmas)
        assert np.array_equal(e0.T_dst_src.matrix(), e1.T_dst_src.matrix())
    # the same factors: both graphs re-optimise to the same poses
    p0, p1 = g0.optimize(), g1.optimize()
    for n in p0:
        assert np.allclose(p0[n].matrix(), p1[n].matrix(), rtol=0, atol=1e-9)
    # keyframes: thinned, with the detector's descriptors, JPEGs byte for byte
    kf, kf1 = data.keyframes, fresh.keyframes
    assert 0 < len(kf) < N_FIRST / 2 and (np.diff(kf.frame_ids) >= 5).all()
    assert np.array_equal(kf.frame_ids, kf1.frame_ids) and kf.jpegs == kf1.jpegs
    assert np.array_equal(kf.descriptors, kf1.descriptors)
    ids, _, c2w = eng.poses()
    assert np.array_equal(kf1.c2w, c2w[np.searchsorted(ids, kf1.frame_ids)])
    db = fresh.loop_closure.keyframe_descriptors()
    assert np.array_equal(db.frame_ids, kf.frame_ids)
    assert set(back.cameras) == {"cam0"} and back.cameras["cam0"].image_size == (48, 160)
    assert back.parameters == eng.session_parameters()


def test_loaded_engine_keeps_mapping_with_new_ids(drive, mapped):
    eng, _, path = mapped
    data = read_session(path)
    fresh = make_engine(drive)
    fresh.load_session(data)
    old_ids, _, old_c2w = fresh.poses()
    old_chunks = set(fresh.chunk_spans())
    events = push_and_collect(fresh, (drive.frame(i) for i in range(N_FIRST, drive.n_frames)))
    new = [e for e in events if isinstance(e, PosesUpdate) and e.reason == "new"]
    new_ids = np.concatenate([e.frame_ids for e in new])
    assert new_ids.min() == data.n_frames and new_ids.max() == drive.n_frames - 1
    new_chunks = set(fresh.chunk_spans()) - old_chunks
    assert new_chunks and min(new_chunks) == data.next_chunk_id
    assert len(fresh.map_points()[0]) > len(eng.map_points()[0])
    # the new windows form their own chain, held by its own anchor until relocalised (the
    # drive revisits the start), then tied to a loaded chunk and released
    assert fresh.relocalisation_state().state == "localised"
    assert fresh.pose_graph.anchors == [0]
    ties = [e for e in fresh.pose_graph.edges if e.src >= data.next_chunk_id > e.dst]
    assert ties and all(e.kind == "loop" for e in ties)
    ids, _, c2w = fresh.poses()
    assert np.array_equal(ids[: len(old_ids)], old_ids) and np.isfinite(c2w).all()
    # the loaded keyframes are retrieved (the drive's start, which frames >= 110 revisit),
    # and loops to them are turned down (no images, no loop geometry), not crashed on
    lc = fresh.loop_closure
    to_loaded = [r for r in lc.rejected if r[1] < data.n_frames]
    assert any(later >= N_FIRST and earlier <= 15 for later, earlier, _ in to_loaded)
    assert any(why == "evicted" for *_, why in to_loaded)
    assert all(earlier >= data.n_frames for _, earlier in lc.accepted)
    # a continued session saves and loads again: both chains, old and new keyframes
    again = fresh.export_session()
    assert set(data.keyframes.frame_ids) <= set(again.keyframes.frame_ids)
    assert again.keyframes.frame_ids.max() >= data.n_frames
    path2 = write_session(again, path.parent / "lap1_continued")
    third = make_engine(drive)
    third.load_session(read_session(path2))
    for a, b in zip(fresh.poses(), third.poses(), strict=True):
        assert np.array_equal(a, b)
    assert third.pose_graph.anchors == fresh.pose_graph.anchors
    assert np.array_equal(third.map_points()[0], fresh.map_points()[0])


def test_external_frame_priors_and_motions_survive(drive, tmp_path):
    """A graph with GNSS-like priors in an ``enu`` frame and odometry motions: rebuilt with
    the same factors (re-optimises to the same poses), and its scale is the session's."""
    eng = make_engine(drive, loops=False)
    push_and_collect(eng, (drive.frame(i) for i in range(40)))
    nodes = eng.pose_graph.nodes
    assert len(nodes) >= 3
    F = Sim3(2.5, np.eye(3), np.array([1.0, -2.0, 0.5]))
    eng.add_external_frame("enu", F, np.r_[[1.0] * 3, [1e3] * 3, 10.0])
    rng = np.random.default_rng(0)
    for n in nodes:
        centre = eng.chunk_pose(n).t
        eng.add_position_prior(
            n, np.zeros(3), F.apply((centre + rng.normal(0, 0.05, 3))[None])[0], 0.5, "enu", 2.0
        )
    ids, _, c2w_a = eng.owned_frames(nodes[0])
    ids_b, _, c2w_b = eng.owned_frames(nodes[1])
    motion = np.eye(4)
    motion[2, 3] = 3.0
    eng.add_relative_motion(
        nodes[0], c2w_a[0], nodes[1], c2w_b[0], motion, np.r_[[0.01] * 3, [0.1] * 3], "enu", 3.0
    )
    before = eng.pose_graph.optimize()
    eng.apply_chunk_poses(before, "test")
    data = eng.export_session()
    assert data.scale.source == "graph:enu"
    assert data.scale.metres_per_unit == eng.external_frame("enu").s
    back = read_session(write_session(data, tmp_path / "s"))
    assert back.scale == data.scale
    fresh = make_engine(drive, loops=False)
    fresh.load_session(back)
    g = fresh.pose_graph
    assert len(g.position_priors) == len(nodes) and len(g.motions) == 1
    assert np.array_equal(g.frame("enu").matrix(), eng.external_frame("enu").matrix())
    p0, p1 = eng.pose_graph.optimize(), g.optimize()
    for n in p0:
        assert np.allclose(p0[n].matrix(), p1[n].matrix(), rtol=0, atol=1e-9)
    assert np.allclose(g.frame("enu").matrix(), eng.pose_graph.frame("enu").matrix(), atol=1e-9)
    assert np.allclose(g.position_residual(0), eng.pose_graph.position_residual(0), atol=1e-9)


def test_mismatching_engine_refuses_a_session_and_keeps_its_map(drive, mapped):
    _, data, _ = mapped
    other = MappingEngine(
        EngineConfig(), OracleBackend(drive, OracleConfig(seed=3))
    )  # 60/30 windows
    push_and_collect(other, (drive.frame(i) for i in range(64)))
    before = other.poses()
    with pytest.raises(SessionError, match="chunk_size: saved 16, here 60"):
        other.load_session(data)
    for a, b in zip(before, other.poses(), strict=True):
        assert np.array_equal(a, b)
    loc = make_engine(drive)
    loc.load_session(data, mode="localisation")
    assert loc.session_mode == "localisation"
    with pytest.raises(ValueError, match="mode"):
        make_engine(drive).load_session(data, mode="other")


def test_keyframe_database_queries_and_thumbnails(drive, mapped):
    _, data, _ = mapped
    eng = make_engine(drive, loops=False)  # the database is there with or without loops
    eng.load_session(data)
    kf: Keyframes = eng.keyframes
    for k in (0, len(kf) // 2, len(kf) - 1):
        best, sim = kf.query(kf.descriptors[k], top_k=3)[0]
        assert best == kf.frame_ids[k] and sim == pytest.approx(1.0, abs=1e-5)
        img = kf.thumbnail(int(kf.frame_ids[k]))
        assert img.shape == (48, 160, 3) and img.dtype == np.uint8
        # the JPEG is the frame's image, near enough for the network
        original = drive.frame(int(kf.frame_ids[k])).image
        assert np.abs(img.astype(float) - original).mean() < 8.0
    big = np.random.default_rng(0).integers(0, 255, (300, 600, 3), dtype=np.uint8)
    assert decode_thumbnail(encode_thumbnail(big)).shape == (128, 256, 3)
    # without loop closure a new export thins the placed frames itself
    eng2 = make_engine(drive, loops=False)
    push_and_collect(eng2, (drive.frame(i) for i in range(40)))
    kf2 = eng2.export_session(keyframe_stride=10).keyframes
    assert list(kf2.frame_ids) == [0, 10, 20, 30] and kf2.descriptors.shape == (4, 4096)


@pytest.mark.slow
def test_timing_of_a_200k_point_session(drive, mapped, tmp_path):
    """Write and load time of a session with 200k map points (printed for the docs)."""
    eng, data, _ = mapped
    m = data.map
    n = 200_000
    rng = np.random.default_rng(0)
    sizes = np.full(len(m.chunk_ids), n // len(m.chunk_ids))
    sizes[: n - sizes.sum()] += 1
    data.map = MapSnapshot(
        m.voxel_size,
        m.chunk_ids,
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        m.levels,
        rng.normal(0, 5, (n, 3)).astype(np.float32),
        rng.integers(0, 255, (n, 3), dtype=np.uint8),
        rng.random(n, dtype=np.float32),
        rng.integers(0, N_FIRST, n),
    )
    t0 = time.perf_counter()
    path = write_session(data, tmp_path / "big")
    t1 = time.perf_counter()
    back = read_session(path)
    t2 = time.perf_counter()
    fresh = make_engine(drive)
    fresh.load_session(back)
    t3 = time.perf_counter()
    size = sum(f.stat().st_size for f in path.iterdir())
    print(
        f"\n200k-point session ({len(data.keyframes)} keyframes, {size / 2**20:.1f} MiB): "
        f"write {t1 - t0:.2f} s, read+validate {t2 - t1:.2f} s, load {t3 - t2:.2f} s"
    )
    assert len(fresh.map) == n
