"""The engine against exact ground truth (oracle backend on the synthetic drive)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.alignment import AlignmentConfig
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import (
    AlignmentReport,
    MapUpdate,
    PointsUpdate,
    PosesUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.map_store import MapConfig
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.trajectory import ate_sim3

N_FRAMES = 120


DRIVE = dict(n_frames=N_FRAMES, seed=0)  # the conftest's ``drive`` fixture


def run(
    drive: SyntheticDrive, oracle: OracleConfig, config: EngineConfig | None = None
) -> tuple[MappingEngine, OracleBackend, list[MapUpdate]]:
    backend = OracleBackend(drive, oracle)
    eng = MappingEngine(config or EngineConfig.low_latency(), backend)
    return eng, backend, push_and_collect(eng, drive)


def true_chunk_to_world(
    drive: SyntheticDrive, eng: MappingEngine, oracle: OracleBackend, cid: int
) -> Sim3:
    """Chunk coords = gauge(inv(gt_ref) x_world)  =>  chunk -> world = gt_ref . gauge^-1."""
    frames = eng.chunk_frames(cid)
    ref = frames[len(frames) and (int(np.ceil(len(frames) / 2)) - 1)]
    gt_ref = Sim3.from_matrix(drive.gt_pose(ref))
    return gt_ref @ oracle.chunk_sim3[cid].inverse()


@pytest.fixture(scope="module")
def exact_run(drive):
    return run(drive, OracleConfig(random_sim3=True, seed=1))


def test_noise_free_trajectory_equals_ground_truth_up_to_one_sim3(drive, exact_run):
    eng, oracle, events = exact_run
    ids, _, c2w = eng.poses()
    assert list(ids) == list(range(N_FRAMES))  # every frame placed exactly once
    ate, S = ate_sim3(c2w, drive.gt_poses()[ids])
    assert ate < 1e-5 * drive.path_length()  # measured ~2e-4 m over ~190 m
    # orientations too: S maps map -> world, so R_S R_est == R_gt
    R_err = [S.R @ a[:3, :3] @ b[:3, :3].T for a, b in zip(c2w, drive.gt_poses(), strict=True)]
    ang = [np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) for R in R_err]
    assert max(ang) < 0.05
    # every per-chunk Sim(3) (scale included) recovered: S . G_c == true chunk -> world
    assert eng.n_chunks == 14
    for cid in range(eng.n_chunks):
        want = true_chunk_to_world(drive, eng, oracle, cid)
        got = S @ eng.chunk_pose(cid)
        assert got.s == pytest.approx(want.s, rel=1e-3)
        np.testing.assert_allclose(got.R, want.R, atol=1e-3)
    reports = [e for e in events if isinstance(e, AlignmentReport)]
    assert len(reports) == eng.n_chunks - 1 and all(r.ok for r in reports)


def test_map_points_lie_on_the_true_surface(drive, exact_run):
    eng, _, _ = exact_run
    _, _, c2w = eng.poses()
    _, S = ate_sim3(c2w, drive.gt_poses())
    xyz, rgb, conf = eng.map_points(voxelize=True)
    assert len(xyz) > 10_000 and rgb.dtype == np.uint8 and np.all(conf > 1.0)
    d = drive.surface_distance(S.apply(xyz.astype(np.float64)))
    assert np.percentile(d, 99) < 0.01  # metres
    assert xyz.shape == (len(rgb), 3)


def test_events_are_consistent(exact_run):
    eng, _, events = exact_run
    new = np.concatenate(
        [e.frame_ids for e in events if isinstance(e, PosesUpdate) and not e.corrected]
    )
    assert sorted(new.tolist()) == list(range(N_FRAMES))  # each frame announced once
    handed = [e for e in events if isinstance(e, PosesUpdate) and e.reason == "overlap"]
    assert handed and all(len(e.frame_ids) == 4 for e in handed)  # half of the 8 overlap
    stats = [e for e in events if isinstance(e, StatsUpdate)]
    assert len(stats) == eng.n_chunks
    assert all(s.timings["align"] >= 0 and s.memory["rss_bytes"] > 0 for s in stats)
    pts = [e for e in events if isinstance(e, PointsUpdate)]
    assert all(p.xyz.dtype == np.float32 and len(p.xyz) == len(p.rgb) for p in pts)


def test_noisy_oracle_keeps_ate_small(drive):
    oracle = OracleConfig(depth_noise=0.05, rot_noise_deg=0.2, trans_noise_m=0.02, seed=2)
    cfg = EngineConfig.low_latency(alignment=AlignmentConfig(max_points_per_frame=2000))
    eng, _, events = run(drive, oracle, cfg)
    _, _, c2w = eng.poses()
    ate, _ = ate_sim3(c2w, drive.gt_poses())
    # 5 % depth noise, 0.2 deg / 2 cm pose noise: stays below 0.5 % of the path
    assert ate < 0.005 * drive.path_length()
    assert all(r.ok for r in events if isinstance(r, AlignmentReport))


def test_drift_is_visible_without_loop_closure(drive):
    # the in-chunk bend makes chained alignment drift (loop closure has work to do)
    eng, _, _ = run(drive, OracleConfig(drift_yaw_deg_per_frame=0.15, seed=3))
    _, _, c2w = eng.poses()
    ate, _ = ate_sim3(c2w, drive.gt_poses())
    assert ate > 0.005 * drive.path_length()


def _corrupt_overlap(kind: str, bad_chunk: int):
    def corrupt(chunk: ChunkInput, pred: ChunkPrediction) -> ChunkPrediction:
        if chunk.chunk_id != bad_chunk:
            return pred
        first = int(chunk.frame_ids.min())
        shared = chunk.frame_ids < first + 8  # frames shared with the previous chunk
        rng = np.random.default_rng(0)
        if kind == "nan":
            pred.depth[shared] = np.nan
            pred.depth_conf[shared] = 1.0
        else:  # confident-looking garbage depth
            pred.depth[shared] = rng.uniform(1, 50, size=pred.depth[shared].shape)
        return pred

    return corrupt


@pytest.mark.parametrize(
    ("kind", "reason"), [("nan", "too_few_points"), ("garbage", "low_inlier_ratio")]
)
def test_degenerate_overlap_is_reported_and_does_not_corrupt_the_map(drive, kind, reason):
    bad = 5
    eng, _, events = run(drive, OracleConfig(seed=4, corrupt=_corrupt_overlap(kind, bad)))
    reports = {e.chunk_id: e for e in events if isinstance(e, AlignmentReport)}
    assert not reports[bad].ok and reports[bad].reason == reason
    assert reports[bad].fallback == "camera_poses"
    assert all(r.ok for c, r in reports.items() if c != bad)
    assert bad not in eng.map.chunk_ids()  # its points were kept out
    _, _, c2w = eng.poses()
    ate, S = ate_sim3(c2w, drive.gt_poses())
    assert ate < 1e-3 * drive.path_length()  # placed from the predicted camera poses
    xyz, _, _ = eng.map_points()
    d = drive.surface_distance(S.apply(xyz.astype(np.float64)))
    assert np.percentile(d, 99.9) < 0.05


def test_point_cap_is_enforced(drive):
    cap = 50_000
    cfg = EngineConfig.low_latency(map=MapConfig(max_points=cap, max_coarsen_levels=1))
    backend = OracleBackend(make_drive(n_frames=60), OracleConfig())
    eng = MappingEngine(cfg, backend)

    def capped(_events) -> None:
        assert len(eng.map) <= cap

    push_and_collect(eng, backend.drive, on_push=capped)
    assert len(eng.map) <= cap
    assert eng.map.n_coarsened > 0 and eng.map.n_evicted_chunks > 0
    assert eng.map.chunk_ids()[-1] == eng.n_chunks - 1  # newest data survives


def test_exact_mode_defers_to_flush_and_reset_restarts(drive):
    small = make_drive(n_frames=40)
    backend = OracleBackend(small, OracleConfig(seed=5))
    eng = MappingEngine(EngineConfig.low_latency(gcs_mode="exact"), backend)
    before = push_and_collect(eng, small, flush=False)
    assert before == []  # offline schedule: nothing until the sequence is complete
    after = eng.flush()
    assert any(isinstance(e, PosesUpdate) for e in after)
    _, _, c2w = eng.poses()
    ate, _ = ate_sim3(c2w, small.gt_poses())
    assert ate < 1e-4 * small.path_length()
    eng.reset()
    assert eng.n_frames == 0 and len(eng.trajectory) == 0 and len(eng.map) == 0
    eng2 = MappingEngine(EngineConfig.low_latency(gcs_mode="causal"), backend)
    for frame, _ in small.frames():
        eng.push(frame)
        eng2.push(frame)
    eng.flush()
    eng2.flush()
    np.testing.assert_allclose(eng.poses()[2], eng2.poses()[2], atol=1e-6)
