"""Stopping the node while a window is still being inferred (issue 16, item 4).

Before: a first window of 59 s, SIGINT during the second: "worker did not stop in time;
not saving", ``terminate called without an active exception``, exit -6, the first
window's map lost; a second SIGINT 0.05 s later raised KeyboardInterrupt in
``worker.stop()`` and saved nothing; a window finishing after the signal logged
``RCLError: publisher's context is invalid`` with a traceback.

The slow network is the oracle with ``oracle_window_delays``: windows after the first
take 600 s, i.e. they never finish within a test, so what happens does not depend on
timing. 8/4 windows: the first holds frames 0-7.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_drive
from node_harness import NODE, Recorder, oracle_node_args, start_mapping, stop

from scal3r_ros.mapping.backends.oracle import OracleBackend
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import PosesUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.windowing import WindowConfig
from scal3r_ros.mapping.worker import MappingWorker

pytestmark = pytest.mark.ros
N_FRAMES = 24
FIRST_WINDOW = 8
HANG_GUARD_S = 180.0  # only a bound on a broken run; nothing waits for it to pass


def _wait_for_line(log: Path, text: str, proc) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while text not in log.read_text():
        assert proc.poll() is None, f"node exited before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
        time.sleep(0.05)


def _run_until_second_window(tmp_path: Path, delays: str, wait_s: float):
    """Node + camera; returns once the first window is mapped and later frames came in
    (so the second window is in flight, or will be the final flush: both take 600 s)."""
    rec = Recorder("shutdown_tester")
    args = oracle_node_args(
        tmp_path / "maps",
        chunk_size=8,
        overlap=4,
        status_period=0.2,
        oracle_frames=N_FRAMES,
        oracle_window_delays=delays,
        shutdown_window_wait=wait_s,
        loop_closure=False,
    )
    try:
        camera_args = ["--frames", str(N_FRAMES), "--rate", "40"]
        node, camera = start_mapping(rec, args, tmp_path, camera_args, HANG_GUARD_S)
    except BaseException:
        rec.close()
        raise
    try:

        def first_window_done() -> bool:
            st = rec.last(f"{NODE}/status")
            return st is not None and st.chunks_processed >= 1 and st.frames_processed > 8

        assert rec.spin_until(first_window_done, HANG_GUARD_S, [node]), (
            tmp_path / "node.log"
        ).read_text()
    except BaseException:
        stop(camera)
        stop(node)
        rec.close()
        raise
    return rec, node, camera


def _finish(rec, node, camera) -> int:
    try:
        return node.wait(HANG_GUARD_S)
    finally:
        if camera is not None:
            stop(camera)
        if node.poll() is None:
            node.kill()
        rec.close()


def _saved_stamps(tmp_path: Path, log: str) -> list[int]:
    saved = sorted((tmp_path / "maps").glob("map_*"))
    assert len(saved) == 1, log
    assert (saved[0] / "map.ply").stat().st_size > 1000, log
    tum = np.loadtxt(saved[0] / "trajectory_tum.txt", ndmin=2)
    return np.round(tum[:, 0] * 1e9).astype(np.int64).tolist()


def _assert_clean(log: str) -> None:
    for bad in ("Traceback", "terminate called", "RCLError", "not saving", "failed"):
        assert bad not in log, log


def test_sigint_during_a_long_window_saves_the_windows_already_mapped(tmp_path):
    rec, node, camera = _run_until_second_window(tmp_path, "[0.0, 600.0]", wait_s=1.0)
    node.send_signal(signal.SIGINT)
    code = _finish(rec, node, camera)
    log = (tmp_path / "node.log").read_text()
    assert code == 0, log
    drive = make_drive(n_frames=N_FRAMES)
    assert _saved_stamps(tmp_path, log) == [drive.stamp_ns(i) for i in range(FIRST_WINDOW)]
    assert "window in progress is left out" in log
    _assert_clean(log)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_saves_at_once_and_never_aborts(tmp_path, second):
    """shutdown_window_wait 600 s: only the second signal can end the wait. It comes
    while the main thread is inside worker.stop() (where KeyboardInterrupt hit before);
    SIGTERM is what launch sends next when a node takes long."""
    rec, node, camera = _run_until_second_window(tmp_path, "[0.0, 600.0]", wait_s=600.0)
    node.send_signal(signal.SIGINT)
    _wait_for_line(tmp_path / "node.log", "Ctrl-C again saves", node)
    node.send_signal(second)
    code = _finish(rec, node, camera)
    log = (tmp_path / "node.log").read_text()
    assert code == 0, log
    drive = make_drive(n_frames=N_FRAMES)
    assert _saved_stamps(tmp_path, log) == [drive.stamp_ns(i) for i in range(FIRST_WINDOW)]
    assert f"{second.name}: saving what is mapped now" in log
    _assert_clean(log)


def test_a_window_finishing_after_the_signal_is_saved_not_published(tmp_path):
    """Windows of 1 s: after SIGINT the window in flight (if any) and the final flush
    finish with rclpy's context already shut down; no RCLError, every frame saved."""
    rec, node, camera = _run_until_second_window(tmp_path, "[0.0, 1.0]", wait_s=600.0)
    node.send_signal(signal.SIGINT)
    code = _finish(rec, node, camera)
    log = (tmp_path / "node.log").read_text()
    assert code == 0, log
    stamps = _saved_stamps(tmp_path, log)
    drive = make_drive(n_frames=N_FRAMES)
    assert len(stamps) > FIRST_WINDOW  # the window in flight and the tail were mapped
    assert stamps == [drive.stamp_ns(i) for i in range(len(stamps))]
    assert "left out" not in log
    _assert_clean(log)


# ------------------------------------------------------------------ the worker alone
class GatedOracle(OracleBackend):
    """The oracle whose second and later windows wait for ``gate`` (a network busy for as
    long as the test wants); ``entered`` is set when one is waiting."""

    def __init__(self, drive: SyntheticDrive) -> None:
        super().__init__(drive)
        self.gate, self.entered = threading.Event(), threading.Event()

    def infer(self, chunk, gcs_state):
        if self.n_inferred >= 1:
            self.entered.set()
            assert self.gate.wait(HANG_GUARD_S), "gate never opened"
        return super().infer(chunk, gcs_state)


def _stuck_worker():
    """A worker whose engine mapped the first window and is inside the second."""
    drive = make_drive(n_frames=N_FRAMES)
    backend = GatedOracle(drive)
    cfg = EngineConfig(window=WindowConfig(chunk_size=8, overlap=4), loop_closure=False)
    engine = MappingEngine(cfg, backend)
    events, errors = [], []
    worker = MappingWorker(lambda: engine, events.extend, queue_size=64, on_error=errors.append)
    worker.start()
    for i in range(N_FRAMES):
        worker.submit(drive.frame(i))
    assert backend.entered.wait(HANG_GUARD_S)
    return drive, backend, engine, worker, events, errors


def test_the_engine_is_read_whole_while_a_window_is_inferred():
    drive, backend, engine, worker, _, _ = _stuck_worker()
    try:
        ids, stamps, _ = engine.poses()  # another thread, the worker inside window 2
        assert ids.tolist() == list(range(FIRST_WINDOW))
        assert stamps.tolist() == [drive.stamp_ns(i) for i in range(FIRST_WINDOW)]
        assert len(engine.map_points()[0]) > 0
    finally:
        backend.gate.set()
        worker.stop(timeout=HANG_GUARD_S)


def test_stop_detaches_a_window_that_does_not_finish_in_time():
    _, backend, engine, worker, events, errors = _stuck_worker()
    published = len(events)
    assert not worker.stop(timeout=0.0, flush=True)  # the window is stuck: no wait
    assert worker.detached and worker.alive and worker.stats.dropped["shutdown"] > 0
    with engine.state_lock:  # what a save reads: the first window, consistently
        assert engine.poses()[0].tolist() == list(range(FIRST_WINDOW))
    backend.gate.set()  # the window ends after all, once the node no longer listens
    assert worker.join(HANG_GUARD_S)
    assert not worker.alive and len(events) == published and not errors


def test_an_interrupt_ends_the_wait_and_pending_calls_are_answered():
    _, backend, _, worker, _, _ = _stuck_worker()
    answers: list[BaseException] = []

    def save_map() -> None:
        try:
            worker.call(lambda engine: None, timeout=HANG_GUARD_S)
        except BaseException as exc:
            answers.append(exc)

    caller = threading.Thread(target=save_map)
    caller.start()
    interrupt = threading.Event()
    threading.Timer(0.2, interrupt.set).start()  # "Ctrl-C again" while stop waits
    try:
        assert not worker.stop(timeout=3600.0, flush=True, interrupt=interrupt)
        caller.join(HANG_GUARD_S)
        assert not caller.is_alive() and isinstance(answers[0], RuntimeError)
        assert "stopped" in str(answers[0])
    finally:
        backend.gate.set()


def test_events_of_a_window_finishing_within_the_wait_reach_the_final_sink():
    _, backend, engine, worker, events, _ = _stuck_worker()
    final: list = []
    threading.Timer(0.2, backend.gate.set).start()
    assert worker.stop(timeout=HANG_GUARD_S, flush=True, sink=final.extend)
    placed = {f for e in final if isinstance(e, PosesUpdate) for f in e.frame_ids.tolist()}
    assert placed and max(placed) == engine.poses()[0].max()
    assert engine.poses()[0].tolist() == list(range(engine.n_frames))  # the tail, too
