"""The worker's queue, drop policies, commands and error recovery (no ROS, no DDS)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import make_drive

from scal3r_ros.mapping.events import Frame, StatsUpdate
from scal3r_ros.mapping.worker import MappingWorker


class FakeEngine:
    """Records frames; blocks while ``gate`` is clear; raises on chosen stamps."""

    def __init__(self, fail_on=()):
        self.seen: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = set(fail_on)
        self.resets = 0
        self.n_frames = 0

    def push(self, frame):
        self.gate.wait(10)
        if frame.stamp_ns in self.fail_on:
            raise RuntimeError(f"CUDA out of memory (simulated) at {frame.stamp_ns}")
        self.seen.append(frame.stamp_ns)
        self.n_frames += 1
        return [StatsUpdate(len(self.seen), {"network": 0.01}, {})] if frame.stamp_ns % 2 else []

    def prepare(self, frame):
        """The pipelined worker prepares frames ahead: the fake's prepared frame is itself."""
        return frame

    def push_network(self, frame):
        """The worker's network phase: a fake's events come out at once (nothing to place)."""
        return self.push(frame)

    def flush_network(self):
        """The worker's flush: the fake's flush event at once, nothing to place or finish."""
        return [StatsUpdate(-1, {}, {})]

    def finish(self):
        return []

    def reset(self):
        self.resets += 1
        self.seen.clear()


def frame(i: int) -> Frame:
    return Frame(stamp_ns=i, camera_id="cam", image=np.zeros((4, 4, 3), np.uint8))


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def make_worker():
    workers = []

    def make(engine, **kw):
        events = []
        errors = []
        w = MappingWorker(lambda: engine, events.extend, on_error=errors.append, **kw)
        w.start()
        workers.append(w)
        return w, events, errors

    yield make
    for w in workers:
        w.stop()


def test_frames_flow_in_order_and_events_reach_the_sink(make_worker):
    eng = FakeEngine()
    w, events, _ = make_worker(eng)
    for i in range(10):
        assert w.submit(frame(i))
    wait_until(lambda: w.stats.processed == 10)
    assert eng.seen == list(range(10))
    assert len(events) == 5 and w.stats.chunks == 5
    assert w.stats.dropped_total == 0


@pytest.mark.parametrize(
    "policy, kept", [("drop_oldest", [0, 7, 8, 9]), ("drop_newest", [0, 1, 2, 3])]
)
def test_full_queue_drops_by_policy_and_counts(make_worker, policy, kept):
    eng = FakeEngine()
    eng.gate.clear()  # worker stuck on frame 0
    w, _, _ = make_worker(eng, queue_size=3, drop_policy=policy)
    w.submit(frame(0))
    wait_until(lambda: w.stats.busy)
    results = [w.submit(frame(i)) for i in range(1, 10)]
    assert results[:3] == [True, True, True] and not any(results[3:])
    assert w.queue_length() == 3
    assert w.stats.dropped["queue_full"] == 6
    snap, queued = w.stats_snapshot()  # what the status timer reads: a copy
    assert queued == 3 and snap.busy and snap.dropped["queue_full"] == 6
    eng.gate.set()
    wait_until(lambda: w.stats.processed == 4)
    assert eng.seen == kept
    assert snap.processed == 0 and w.stats_snapshot()[0].processed == 4
    snap.dropped["queue_full"] = 0
    assert w.stats.dropped["queue_full"] == 6


def test_engine_error_is_reported_and_worker_recovers(make_worker):
    eng = FakeEngine(fail_on={3})
    w, _, errors = make_worker(eng)
    for i in range(6):
        w.submit(frame(i))
    wait_until(lambda: w.stats.processed + w.stats.errors == 6)
    assert w.stats.errors == 1 and "out of memory" in w.stats.last_error
    assert len(errors) == 1 and "RuntimeError" in errors[0]
    assert eng.seen == [0, 1, 2, 4, 5]


def test_reset_runs_in_queue_order_and_call_returns_results(make_worker):
    eng = FakeEngine()
    w, _, _ = make_worker(eng)
    done = threading.Event()
    w.submit(frame(1))
    w.request("reset", lambda events: done.set())
    w.submit(frame(2))
    assert done.wait(5)
    wait_until(lambda: w.stats.processed == 2)
    assert eng.resets == 1 and eng.seen == [2]
    assert w.call(lambda e: list(e.seen)) == [2]
    with pytest.raises(ZeroDivisionError):
        w.call(lambda e: 1 / 0)


def test_a_call_goes_ahead_of_queued_frames_but_not_of_an_earlier_reset(make_worker):
    """Reset, then save (the ~/reset and ~/save_map services): the save must see the reset
    even when the worker has not taken the reset yet; it still skips the frame backlog."""
    eng = FakeEngine()
    eng.gate.clear()  # the worker is held in frame 0
    w, _, _ = make_worker(eng, queue_size=10)
    w.submit(frame(0))
    wait_until(lambda: w.stats.busy)
    w.submit(frame(1))
    w.request("reset")
    w.submit(frame(2))
    seen: list[list[int]] = []
    caller = threading.Thread(target=lambda: seen.append(w.call(lambda e: list(e.seen))))
    caller.start()
    wait_until(lambda: w.pending() == ["frame", "reset", "call", "frame"])
    eng.gate.set()
    caller.join(5)
    assert seen == [[]]  # after the reset (frame 0 and 1 forgotten), before frame 2
    wait_until(lambda: eng.seen == [2])


def test_stop_abandons_queue_and_counts_it(make_worker):
    eng = FakeEngine()
    eng.gate.clear()
    w, _, _ = make_worker(eng, queue_size=10)
    for i in range(5):
        w.submit(frame(i))
    wait_until(lambda: w.stats.busy)
    threading.Timer(0.2, eng.gate.set).start()
    assert w.stop(timeout=5)
    assert w.stats.dropped["shutdown"] == 4 and eng.seen == [0]


def test_bad_settings_rejected():
    with pytest.raises(ValueError):
        MappingWorker(FakeEngine, print, drop_policy="drop_random")
    with pytest.raises(ValueError):
        MappingWorker(FakeEngine, print, queue_size=0)


def test_window_failures_reported_by_the_engine_are_counted(make_worker):
    from scal3r_ros.mapping.events import ChunkFailed

    class FailingEngine(FakeEngine):
        def push(self, frame):
            super().push(frame)
            return [ChunkFailed(frame.stamp_ns, "OutOfMemoryError: CUDA out of memory", 1, True)]

    w, events, errors = make_worker(FailingEngine())
    w.submit(frame(0))
    wait_until(lambda: w.stats.processed == 1 and events)
    assert w.stats.errors == 1 and "out of memory" in w.stats.last_error
    assert "will retry" in errors[0]


def test_a_failing_sink_is_reported_and_the_worker_keeps_going():
    eng = FakeEngine()
    calls = []

    def sink(events):
        calls.append(events)
        if len(calls) == 1:
            raise KeyError(17)

    errors = []
    w = MappingWorker(lambda: eng, sink, on_error=errors.append)
    w.start()
    try:
        for i in range(4):
            w.submit(frame(i))
        wait_until(lambda: len(calls) == 2)
        assert w.stats.errors == 1 and "KeyError" in w.stats.last_error
        assert "publishing failed" in errors[0] and eng.seen == [0, 1, 2, 3]
    finally:
        w.stop()


def test_stop_with_flush_flushes_after_the_window_in_progress_into_the_given_sink(make_worker):
    eng = FakeEngine()
    w, events, _ = make_worker(eng)
    w.submit(frame(0))
    wait_until(lambda: w.stats.processed == 1)
    final = []
    assert w.stop(flush=True, sink=final.extend)
    assert [e.chunk_id for e in final] == [-1] and w.stats.chunks == 1  # FakeEngine.flush
    assert all(e.chunk_id != -1 for e in events)  # not in the worker's own sink
    w2, events2, _ = make_worker(FakeEngine())
    assert w2.stop() and events2 == []  # no flush unless asked


def _oracle_engine(n_frames: int):
    from scal3r_ros.mapping.backends.oracle import OracleBackend
    from scal3r_ros.mapping.engine import EngineConfig, MappingEngine

    drive = make_drive(n_frames=n_frames)
    return drive, MappingEngine(EngineConfig.low_latency(), OracleBackend(drive))


@pytest.mark.parametrize("pipelined", [False, True])
def test_every_processed_frame_has_a_pose_after_a_save_and_after_stop(make_worker, pipelined):
    """Issue 13: "300 frames processed, 296 poses saved". 16/8 windows end at 16, 24, 32:
    the save after 37 frames and the stop after 45 must hold all of them (pipelined: the
    save and the stop wait for the windows still being placed)."""
    from scal3r_ros.mapping.events import PosesUpdate

    drive, eng = _oracle_engine(45)
    w, events, errors = make_worker(eng, pipelined=pipelined)
    for i in range(37):
        w.submit(drive.frame(i))
    wait_until(lambda: w.stats.processed == 37, timeout=300)
    saved = w.call(lambda e: e.poses()[0].tolist(), flush=True)
    assert saved == list(range(37))
    for i in range(37, 45):
        w.submit(drive.frame(i))
    wait_until(lambda: w.stats.processed == 45, timeout=300)
    assert w.stop(flush=True)
    assert eng.poses()[0].tolist() == list(range(45)) and not errors
    published = {f for e in events if isinstance(e, PosesUpdate) for f in e.frame_ids.tolist()}
    assert published == set(range(45))  # the tail's poses reached the sink too
