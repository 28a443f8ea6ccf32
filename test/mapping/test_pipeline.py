"""The pipelined worker (issue 14): window k is placed on a second thread while window k+1
is in the network, with the serial results (poses, map, GCS state, events), bitwise.

Overlap and ordering are shown with events (a stage waiting for the other), never with
durations, so the tests hold on a loaded machine.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.protocol import ChunkPrediction
from scal3r_ros.mapping.backends.scal3r import Scal3RBackend
from scal3r_ros.mapping.backends.timed import TimedBackend
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine, is_aligned_part
from scal3r_ros.mapping.events import (
    ChunkFailed,
    LoopClosureUpdate,
    MapUpdate,
    PosesUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.loop_closure import (
    LoopClosure,
    LoopClosureConfig,
    LoopDetectorConfig,
    OracleDescriptor,
)
from scal3r_ros.mapping.windowing import WindowConfig
from scal3r_ros.mapping.worker import MappingWorker

WAIT_S = 300.0  # a bound for a hang, never a measurement


class Recorder:
    """A backend wrapper: the order of the network calls (chunk id, loop chunk or not) and
    when each began and ended; ``on_start(chunk)`` runs as a call begins (a test's gate),
    ``fail(chunk)`` True makes the call raise (a CUDA out of memory)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, bool]] = []
        self.started: dict[int, float] = {}
        self.on_start = lambda chunk: None
        self.fail = lambda chunk: False

    def infer(self, chunk, gcs_state):
        self.started.setdefault(chunk.chunk_id, time.perf_counter())
        self.on_start(chunk)
        if self.fail(chunk):
            raise RuntimeError(f"CUDA out of memory (simulated) in chunk {chunk.chunk_id}")
        pred = self.inner.infer(chunk, gcs_state)
        self.calls.append((chunk.chunk_id, bool(chunk.is_loop)))
        return pred

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def wait_until(cond, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def snapshot(eng: MappingEngine) -> dict[str, Any]:
    """Poses, map and GCS state of an engine, copied."""
    ids, stamps, c2w = eng.poses()
    xyz, rgb, conf = eng.map_points(voxelize=False)
    gcs = eng.gcs_state()
    state = {}
    if gcs is not None:
        state = {k: v.clone() if torch.is_tensor(v) else v for k, v in gcs.state_dict().items()}
    return dict(ids=ids, stamps=stamps, c2w=c2w, xyz=xyz, rgb=rgb, conf=conf, gcs=state)


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("ids", "stamps", "c2w", "xyz", "rgb", "conf"):
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key
    assert a["gcs"].keys() == b["gcs"].keys()
    for k, v in a["gcs"].items():
        assert torch.equal(v, b["gcs"][k]) if torch.is_tensor(v) else v == b["gcs"][k], k


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same_value(x[k], y[k]) for k in x)
    if isinstance(x, float) and np.isnan(x):
        return isinstance(y, float) and bool(np.isnan(y))
    return x == y


def assert_same_events(a: list[MapUpdate], b: list[MapUpdate]) -> None:
    """Same events in the same order, every field equal (stats: only the chunk id)."""
    assert [type(e).__name__ for e in a] == [type(e).__name__ for e in b]
    for x, y in zip(a, b, strict=True):
        assert x.chunk_id == y.chunk_id
        if isinstance(x, StatsUpdate):
            continue
        for f in dataclasses.fields(x):
            assert _same_value(getattr(x, f.name), getattr(y, f.name)), (type(x), f.name)


def tiny_setup(
    n_frames: int = 32, device: str = "cpu"
) -> tuple[MappingEngine, Recorder, LoopClosure, Any]:
    """The tiny random network, 8/4 windows, oracle place recognition: a loop chunk is
    inferred in mid-stream (candidate 19 <-> 3, finalised at frame 27), so its place in
    the GCS sums between two windows is tested."""
    from test_scal3r_backend import tiny_backend

    drive = make_drive(n_frames=n_frames, width=160, height=48, extra_laps=1.0)
    od = OracleDescriptor(length_scale=8.0)
    lc = LoopClosure(
        LoopClosureConfig(
            half_window=4,
            detector=LoopDetectorConfig(nms_radius=8),
            descriptor_fn=lambda f: od(drive.gt_pose(f)[:3, 3]),
        )
    )
    backend = tiny_backend()
    if device != "cpu":  # the same weights, moved
        backend = Scal3RBackend(backend.model, dataclasses.replace(backend.config, device=device))
    rec = Recorder(backend)
    return MappingEngine(EngineConfig(window=WindowConfig(8, 4)), rec, lc), rec, lc, drive


def oracle_setup(n_frames: int = 120, network_s: float = 0.0):
    """The oracle with in-window drift and loop closure that accepts loops (16/8 windows)."""
    drive = make_drive(n_frames=n_frames, seed=0)
    od = OracleDescriptor(length_scale=3.0)
    lc = LoopClosure(
        LoopClosureConfig(
            detector=LoopDetectorConfig(use_nms=False),
            descriptor_fn=lambda f: od(drive.gt_pose(f)[:3, 3]),
        )
    )
    inner = OracleBackend(drive, OracleConfig(drift_yaw_deg_per_frame=0.15, seed=3))
    rec = Recorder(TimedBackend(inner, network_s) if network_s else inner)
    return MappingEngine(EngineConfig.low_latency(), rec, lc), rec, lc, drive


SETUPS = {"tiny": tiny_setup, "oracle": oracle_setup}


class Sink:
    """The worker's sink: every call's events, and when each window's stats came."""

    def __init__(self) -> None:
        self.parts: list[list[MapUpdate]] = []
        self.stats_at: dict[int, float] = {}
        self.hook = lambda events: None

    def __call__(self, events: list[MapUpdate]) -> None:
        self.hook(events)
        self.parts.append(list(events))
        for e in events:
            if isinstance(e, StatsUpdate):
                self.stats_at[e.chunk_id] = time.perf_counter()

    @property
    def events(self) -> list[MapUpdate]:
        return [e for p in self.parts for e in p]


def start_worker(eng: MappingEngine, pipelined: bool, sink: Sink, errors: list[str]):
    w = MappingWorker(
        lambda: eng, sink, queue_size=100_000, on_error=errors.append, pipelined=pipelined
    )
    w.start()
    return w


def run_worker(eng, drive, pipelined: bool, sink: Sink | None = None):
    """Every frame through a worker, then a flushed snapshot (as the node's save)."""
    sink = sink or Sink()
    errors: list[str] = []
    w = start_worker(eng, pipelined, sink, errors)
    try:
        for i in range(drive.n_frames):
            w.submit(drive.frame(i))
        wait_until(lambda: w.stats.processed == drive.n_frames)
        snap = w.call(snapshot, timeout=WAIT_S, flush=True)
    finally:
        assert w.stop(timeout=WAIT_S)
    return snap, sink, errors, w


@pytest.mark.parametrize("setup", ["tiny", "oracle"])
def test_pipelined_worker_gives_the_serial_results_bitwise(setup):
    eng_s, rec_s, lc_s, drive = SETUPS[setup]()
    serial_events = push_and_collect(eng_s, drive)
    serial = snapshot(eng_s)

    eng_p, rec_p, lc_p, _ = SETUPS[setup]()
    piped, sink, errors, w = run_worker(eng_p, drive, pipelined=True)

    assert not errors and w.stats.errors == 0
    assert_same_state(serial, piped)
    assert_same_events(serial_events, sink.events)
    # the network saw the same calls in the same order: windows and loop chunks (GCS sums)
    assert rec_s.calls == rec_p.calls
    assert lc_s.rejected == lc_p.rejected and lc_s.accepted == lc_p.accepted
    loop_at = [k for k, (_, is_loop) in enumerate(rec_s.calls) if is_loop]
    assert loop_at and loop_at[0] < len(rec_s.calls) - 1  # a loop chunk between two windows
    if setup == "oracle":
        assert any(isinstance(e, LoopClosureUpdate) for e in sink.events)
    else:
        assert serial["gcs"]  # the tiny net's causal GCS sums were compared

    # events in a valid order: each window's poses in a sink call of their own, before its
    # map points and stats; windows in order
    stats = [e.chunk_id for e in sink.events if isinstance(e, StatsUpdate)]
    assert stats == sorted(stats) and len(stats) == eng_p.n_chunks
    for cid in stats:
        head = [k for k, p in enumerate(sink.parts) if is_aligned_part(p) and p[-1].chunk_id == cid]
        tail = [
            k
            for k, p in enumerate(sink.parts)
            if any(isinstance(e, StatsUpdate) and e.chunk_id == cid for e in p)
        ]
        assert len(head) == 1 and len(tail) == 1 and head[0] < tail[0], cid


@pytest.mark.parametrize("pipelined", [True, False])
def test_the_stages_overlap_with_a_timed_network(pipelined):
    """With TimedBackend(oracle, T), window k+1's network starts while window k is still
    being placed: the sink, inside window k's placement, waits for window k+1's inference
    to begin (pipelined it does; serial it never could, so that run checks the opposite)."""
    eng, rec, _, drive = oracle_setup(n_frames=48, network_s=0.05)
    sink = Sink()
    started = {k: threading.Event() for k in range(8)}
    rec.on_start = lambda chunk: None if chunk.is_loop else started[chunk.chunk_id].set()
    seen: dict[int, bool] = {}

    def hook(events):
        k = events[-1].chunk_id
        if pipelined and is_aligned_part(events) and k < 3:
            seen[k] = started[k + 1].wait(WAIT_S)  # window k is aligned, not yet mapped

    sink.hook = hook
    errors: list[str] = []
    w = start_worker(eng, pipelined, sink, errors)
    for i in range(40):  # windows end at frames 16, 24, 32, 40: chunks 0..3
        w.submit(drive.frame(i))
    wait_until(lambda: len(sink.stats_at) == 4)
    assert w.stop(timeout=WAIT_S) and not errors
    if pipelined:
        assert seen == {0: True, 1: True, 2: True}
        for k in range(3):  # recorded intervals: infer(k+1) began before k was placed
            assert rec.started[k + 1] < sink.stats_at[k]
    else:
        for k in range(3):  # serial: window k is placed before window k+1's network
            assert sink.stats_at[k] <= rec.started[k + 1]


def test_commands_during_a_pipelined_run_see_every_window(tmp_path):
    """A flush, a save and a reset in the middle of a pipelined run act on every window
    inferred before them, as in the serial run of the same commands."""
    eng_s, _, _, drive = oracle_setup(n_frames=80)
    push_and_collect(eng_s, (drive.frame(i) for i in range(37)))  # pushed then flushed
    after_flush = snapshot(eng_s)
    push_and_collect(eng_s, (drive.frame(i) for i in range(37, 50)), flush=False)
    eng_s.save_trajectory(tmp_path / "serial.tum")
    eng_s.reset()
    push_and_collect(eng_s, (drive.frame(i) for i in range(50, 80)))
    final = snapshot(eng_s)

    eng, _, _, _ = oracle_setup(n_frames=80)
    sink, errors = Sink(), []
    w = start_worker(eng, True, sink, errors)
    try:
        for i in range(37):
            w.submit(drive.frame(i))
        flushed = threading.Event()
        w.request("flush", lambda _events: flushed.set())
        assert flushed.wait(WAIT_S)
        assert_same_state(after_flush, w.call(snapshot, timeout=WAIT_S))
        for i in range(37, 50):
            w.submit(drive.frame(i))
        wait_until(lambda: w.stats.processed == 50)
        w.call(lambda e: e.save_trajectory(tmp_path / "piped.tum"), timeout=WAIT_S)
        w.request("reset")
        for i in range(50, 80):
            w.submit(drive.frame(i))
        wait_until(lambda: w.stats.processed == 80)
        assert_same_state(final, w.call(snapshot, timeout=WAIT_S, flush=True))
    finally:
        assert w.stop(timeout=WAIT_S)
    assert (tmp_path / "piped.tum").read_text() == (tmp_path / "serial.tum").read_text()
    assert not errors and w.stats.resets == 1


def test_a_window_failing_in_the_network_stage_is_reported_as_in_the_serial_run():
    eng_s, rec_s, _, drive = oracle_setup(n_frames=64)
    rec_s.fail = lambda chunk: chunk.chunk_id == 2 and not chunk.is_loop
    serial_events = push_and_collect(eng_s, drive)

    eng, rec, _, _ = oracle_setup(n_frames=64)
    rec.fail = rec_s.fail
    piped, sink, errors, w = run_worker(eng, drive, pipelined=True)
    assert_same_state(snapshot(eng_s), piped)
    assert_same_events(serial_events, sink.events)
    failed = [e for e in sink.events if isinstance(e, ChunkFailed)]
    assert [e.attempt for e in failed] == [1, 2, 3] and not failed[-1].will_retry
    assert w.stats.errors == 3 and len(errors) == 3 and "skipped" in errors[-1]
    assert eng.n_chunks == eng_s.n_chunks > 3  # the windows after it were mapped


def test_a_window_failing_in_the_placement_stage_is_reported_and_the_run_goes_on():
    """Window 2's map insertion raises: counted and reported once, the windows after it
    are placed, the same in the serial and the pipelined worker."""
    runs = {}
    for pipelined in (False, True):
        eng, _, _, drive = oracle_setup(n_frames=64)
        insert = eng.map.insert

        def failing_insert(chunk_id, *args, insert=insert, **kw):
            if chunk_id == 2:
                raise RuntimeError("simulated failure while mapping window 2")
            return insert(chunk_id, *args, **kw)

        eng.map.insert = failing_insert
        snap, sink, errors, w = run_worker(eng, drive, pipelined)
        assert w.stats.errors == 1 and "window 2" in w.stats.last_error
        assert len(errors) == 1 and "simulated failure" in errors[0]
        stats = [e.chunk_id for e in sink.events if isinstance(e, StatsUpdate)]
        assert 2 not in stats and max(stats) > 2  # later windows placed and reported
        runs[pipelined] = snap, sink.events
    assert_same_state(runs[False][0], runs[True][0])
    assert_same_events(runs[False][1], runs[True][1])


@pytest.mark.parametrize("detach", [False, True])
def test_stop_with_a_window_in_each_stage(detach):
    """Window 0 held inside its placement (map insertion), window 1 inside the network:
    stop waits for both and the flush after them (or, past its timeout, detaches: nothing
    more reaches the sink)."""
    eng, rec, _, drive = oracle_setup(n_frames=40)
    in_net, in_place = threading.Event(), threading.Event()
    gate = threading.Event()

    def net_gate(chunk):
        if chunk.chunk_id == 1 and not chunk.is_loop:
            in_net.set()
            gate.wait(WAIT_S)

    insert = eng.map.insert

    def place_gate(chunk_id, *args, **kw):  # window 0 aligned, its map insertion held
        if chunk_id == 0:
            in_place.set()
            gate.wait(WAIT_S)
        return insert(chunk_id, *args, **kw)

    rec.on_start = net_gate
    eng.map.insert = place_gate
    sink, errors = Sink(), []
    w = start_worker(eng, True, sink, errors)
    for i in range(28):  # windows end at 16 (chunk 0) and 24 (chunk 1); 4 frames after
        w.submit(drive.frame(i))
    assert in_net.wait(WAIT_S) and in_place.wait(WAIT_S)
    if detach:
        assert not w.stop(timeout=0.2, flush=True) and w.detached
        n_parts = len(sink.parts)
        gate.set()
        wait_until(lambda: not w.alive)
        assert len(sink.parts) == n_parts  # cut off from the sink
        return
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(w.stop(timeout=WAIT_S, flush=True)))
    stopper.start()
    # stop has begun: it abandoned the 4 frames queued behind window 1
    wait_until(lambda: w.stats_snapshot()[0].dropped["shutdown"] == 4)
    gate.set()
    stopper.join(WAIT_S)
    assert result == [True] and not w.alive and not errors
    stats = {e.chunk_id for e in sink.events if isinstance(e, StatsUpdate)}
    assert stats >= {0, 1}  # both windows placed, then the flush's
    frames = sorted({f for e in sink.events if isinstance(e, PosesUpdate) for f in e.frame_ids})
    assert frames == list(range(w.stats.processed))


def test_the_stage_stream_is_a_no_op_without_cuda_tensors():
    """On the CPU (numpy or CPU tensors) nothing is recorded and no stream is entered."""
    from scal3r_ros.mapping.tensors import StageStream, mark_ready

    pred = ChunkPrediction(
        c2w=np.tile(np.eye(4), (2, 1, 1)),
        intrinsics=np.tile(np.eye(3), (2, 1, 1)),
        depth=torch.ones(2, 4, 4),
        depth_conf=np.ones((2, 4, 4), np.float32),
    )
    assert mark_ready(pred) is None and mark_ready(None) is None
    with StageStream().run(pred, None) as ctx:
        assert ctx is None  # contextlib.nullcontext


@pytest.mark.gpu
def test_pipelined_on_cuda_gives_the_serial_results_bitwise():
    """The placement stage on its own CUDA stream (waiting on the window's event, tensors
    marked for it) computes exactly what the serial path computes on one stream."""
    eng_s, _, _, drive = tiny_setup(device="cuda")
    push_and_collect(eng_s, drive)
    serial = snapshot(eng_s)
    eng_p, _, _, _ = tiny_setup(device="cuda")
    piped, _, errors, _ = run_worker(eng_p, drive, pipelined=True)
    assert not errors
    assert_same_state(serial, piped)


class PrepareLog:
    """A backend whose `prepare` records the thread it ran on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.threads: list[str] = []

    def prepare(self, image, K):
        self.threads.append(threading.current_thread().name)
        return self.inner.prepare(image, K)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize("pipelined", [False, True])
def test_frames_are_prepared_off_the_network_thread_when_pipelined(pipelined):
    drive = make_drive(n_frames=24, width=64, height=32)
    backend = PrepareLog(OracleBackend(drive, OracleConfig()))
    eng = MappingEngine(EngineConfig(window=WindowConfig(8, 4), loop_closure=False), backend)
    snap, _, errors, _ = run_worker(eng, drive, pipelined=pipelined)
    assert not errors and len(snap["ids"]) == drive.n_frames
    assert len(backend.threads) == drive.n_frames  # each frame prepared once
    expected = "scal3r_prepare" if pipelined else "scal3r_worker"
    assert all(t.startswith(expected) for t in backend.threads), set(backend.threads)


def test_a_frame_prepared_before_a_reset_is_prepared_again():
    drive = make_drive(n_frames=8, width=64, height=32)
    backend = PrepareLog(OracleBackend(drive, OracleConfig()))
    eng = MappingEngine(EngineConfig(window=WindowConfig(8, 4), loop_closure=False), backend)
    early = eng.prepare(drive.frame(0))
    eng.push_network(eng.prepare(drive.frame(1)))  # valid: prepared in this generation
    assert len(backend.threads) == 2
    eng.reset()  # the network's input size may change here
    eng.push_network(early)
    assert len(backend.threads) == 3 and eng.n_frames == 1
