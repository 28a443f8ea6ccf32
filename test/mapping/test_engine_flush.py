"""The tail of a stream: frames after the last full window get a pose on ``flush``.

Issue 13: "300 frames processed, 296 poses saved". Windows of 16/8 end at frames 16, 24,
...; the frames after the last one are mapped by ``MappingEngine.flush`` as a shorter
window (the previous window's last ``overlap`` frames plus the new ones), also when only
one frame is new, and mapping can go on after a flush (a save in mid-stream).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import AlignmentReport, PosesUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.trajectory import ate_sim3
from scal3r_ros.mapping.windowing import ChunkScheduler, WindowConfig

N = 70  # 16/8 windows end at 16, 24, ..., 64: six frames left for the flush


DRIVE = dict(n_frames=N, seed=0)  # the conftest's ``drive`` fixture


def engine(drive: SyntheticDrive) -> MappingEngine:
    oracle = OracleBackend(drive, OracleConfig(random_sim3=True, seed=3))
    return MappingEngine(EngineConfig.low_latency(loop_closure=False), oracle)


def assert_consistent(eng: MappingEngine, drive: SyntheticDrive, n: int) -> None:
    """Every frame placed once, at the true pose up to one Sim(3), and each frame's map
    points held by the chunk that owns the frame (no frame inserted twice)."""
    ids, _, c2w = eng.poses()
    assert ids.tolist() == list(range(n))
    if n >= 3:  # ATE after a Sim(3) fit: ~2e-6 m measured (float32 depth)
        ate, _ = ate_sim3(c2w, drive.gt_poses()[:n])
        assert ate < 1e-5 * drive.path_length()
    for cid, cloud in eng.map._clouds.items():
        frames = np.unique(cloud.frame)
        assert all(eng.trajectory.owner(int(f)) == cid for f in frames), cid


@pytest.mark.parametrize("n", [N, 65, 17, 5, 1])
def test_flush_places_every_frame_of_a_stream(drive, n):
    # 65: one frame after the last window; 17: one after the first; 5, 1: no full window
    eng = engine(drive)
    push_and_collect(eng, map(drive.frame, range(n)), flush=False)
    full = max(range(16, n + 1, 8), default=0)  # frames placed by full windows
    assert len(eng.poses()[0]) == full
    events = eng.flush()
    new = [
        f
        for e in events
        if isinstance(e, PosesUpdate) and not e.corrected
        for f in e.frame_ids.tolist()
    ]
    assert new == list(range(full, n))  # announced as new poses
    reports = [e for e in events if isinstance(e, AlignmentReport)]
    assert all(r.ok for r in reports)  # the tail window aligned on its overlap frames
    if n >= 16:
        assert len(reports) == 1 and reports[0].n_points > 0
    assert_consistent(eng, drive, n)
    assert eng.flush() == []  # nothing left: a second flush does nothing


def test_tail_window_holds_the_overlap_and_the_new_frames():
    sched = ChunkScheduler(WindowConfig(16, 8))
    specs = [s for _ in range(65) if (s := sched.push()) is not None]
    assert specs[-1].frame_ids == tuple(range(48, 64))
    tail = sched.flush()
    assert tail is not None and tail.frame_ids == tuple(range(56, 65))  # 8 context + 1 new
    assert sched.flush() is None


def test_mapping_goes_on_after_a_flush(drive):
    """A flush in mid-stream (the node's save service) must not break what follows: the
    next full window covers the flushed one's frames, takes over its newest ones, and the
    result is as exact as a run without the flush."""
    eng = engine(drive)
    push_and_collect(eng, map(drive.frame, range(43)), flush=False)  # windows end at 16, 24, 32, 40
    eng.flush()  # frames 32..42 as a window
    assert len(eng.poses()[0]) == 43
    events = push_and_collect(eng, map(drive.frame, range(43, N)), flush=False)
    moved = [
        f
        for e in events
        if isinstance(e, PosesUpdate) and e.reason == "overlap"
        for f in e.frame_ids.tolist()
    ]
    assert set(range(39, 43)) <= set(moved)  # the flushed window's newest frames moved on
    eng.flush()
    assert_consistent(eng, drive, N)


def test_exact_mode_flush_places_every_frame(drive):
    eng = MappingEngine(
        EngineConfig.low_latency(gcs_mode="exact", loop_closure=False),
        OracleBackend(drive, OracleConfig(seed=2)),
    )
    push_and_collect(eng, map(drive.frame, range(N)), flush=False)
    assert len(eng.poses()[0]) == 0
    eng.flush()
    assert_consistent(eng, drive, N)


@pytest.mark.parametrize("n", [22, 21, 1])
def test_tail_window_through_the_tiny_network(n):
    """The network gets the short windows too: 8/4 windows end at 8, 12, 16, 20; 22 and 21
    leave a 6- and a 5-frame tail (4 context frames), 1 a single-frame window."""
    from test_scal3r_backend import tiny_backend

    drive = make_drive(n_frames=n, width=160, height=48)
    eng = MappingEngine(EngineConfig(window=WindowConfig(8, 4)), tiny_backend())
    push_and_collect(eng, map(drive.frame, range(n)), flush=False)
    eng.flush()
    ids, _, c2w = eng.poses()
    assert ids.tolist() == list(range(n)) and np.isfinite(c2w).all()
    assert eng.n_chunks == max(0, (n - 4) // 4) + 1


def test_flush_retries_a_failing_tail_window(drive):
    """No later window will retry the tail: a transient failure (CUDA out of memory) is
    retried within the flush, up to the attempts allowed."""
    from scal3r_ros.mapping.events import ChunkFailed

    failures = []

    def fail_once(chunk, pred):
        if chunk.chunk_id == 7 and not failures:  # 16/8 on 70 frames: the tail is chunk 7
            failures.append(chunk.chunk_id)
            raise RuntimeError("CUDA out of memory (simulated)")
        return pred

    eng = MappingEngine(
        EngineConfig.low_latency(loop_closure=False),
        OracleBackend(drive, OracleConfig(seed=3, corrupt=fail_once)),
    )
    push_and_collect(eng, map(drive.frame, range(N)), flush=False)
    events = eng.flush()
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert [(e.chunk_id, e.will_retry) for e in failed] == [(7, True)]
    assert_consistent(eng, drive, N)
