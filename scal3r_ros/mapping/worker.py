"""The background worker: a bounded frame queue and the thread that owns the engine.

Why a separate thread with its own queue: ROS callbacks must never wait for the GPU.
The callback only converts and calls `submit` (O(1)); this thread runs the engine (and
so the CUDA device) and hands the resulting events to a sink. Nothing here imports ROS,
so the queueing, drop and recovery rules are tested without DDS.

Pipelined (``pipelined=True``): the worker thread runs each window's network phase
(``MappingEngine.push_network``) and hands the inferred window over a bounded queue to a
second, placement thread (``MappingEngine.place``: alignment, map, loop verification,
events), so window k is placed while window k+1 is in the network. The network phase keeps
the causal GCS order, so the results are the serial ones. Poses reach the sink as soon as
a window is aligned. Commands (reset, flush, calls) wait until every inferred window is
placed. Frames are prepared (resized to the network's input, ``MappingEngine.prepare``)
on a third thread as they are submitted, so the network thread only stores them; its
"prepare" stage time is then the wait for one that is not ready yet. On CUDA the placement
stage runs on a stream of its own (``tensors.StageStream``). Serial (``pipelined=False``):
the same phases, one after the other, on the worker thread.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from scal3r_ros.mapping.engine import InferredWindow, MappingEngine
from scal3r_ros.mapping.events import ChunkFailed, Frame, MapUpdate, StatsUpdate
from scal3r_ros.mapping.memory import release_freed_memory
from scal3r_ros.mapping.tensors import StageStream, mark_ready

DROP_POLICIES = ("drop_oldest", "drop_newest")


@dataclass
class WorkerStats:
    """Counters shared with the node's status/diagnostics timers (read under the lock)."""

    received: int = 0
    processed: int = 0  # frames mapped: through the network, their windows placed
    dropped: collections.Counter = field(default_factory=collections.Counter)
    chunks: int = 0
    errors: int = 0
    resets: int = 0
    last_error: str = ""
    last_chunk_s: float = 0.0
    busy: bool = False

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class MappingWorker:
    """Owns ``engine``; frames in through `submit`, events out through ``sink``.

    ``sink(events)`` is called on the worker thread, or, pipelined, on the placement
    thread (one call at a time, in the serial order of events). A failing chunk (backend
    error, CUDA out of memory, ...) is counted and reported through ``on_error``, in
    either stage; the worker keeps going with the next frames.

    ``pipelined``: place window k on a second thread while window k+1 is in the network;
    ``handoff``: inferred windows waiting for the placement thread before the network
    thread waits too (memory: each holds a full prediction).
    """

    def __init__(
        self,
        engine_factory: Callable[[], MappingEngine],
        sink: Callable[[list[MapUpdate]], None],
        queue_size: int = 64,
        drop_policy: str = "drop_oldest",
        on_error: Callable[[str], None] | None = None,
        pipelined: bool = False,
        handoff: int = 1,
    ) -> None:
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {DROP_POLICIES}, got {drop_policy!r}")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if handoff < 1:
            raise ValueError("handoff must be >= 1")
        self._engine_factory = engine_factory
        self.engine: MappingEngine | None = None
        self._sink = sink
        self._on_error = on_error or (lambda msg: None)
        self.queue_size = queue_size
        self.drop_policy = drop_policy
        self._queue: collections.deque[tuple[str, object]] = collections.deque()
        self._cond = threading.Condition()
        self._sink_lock = threading.Lock()  # held while events go out (see `_detach`)
        self.stats = WorkerStats()
        self._stop = False
        self.detached = False  # `stop` gave up waiting: events dropped, errors unreported
        self._current: object = None  # the queue item in progress
        self._thread = threading.Thread(target=self._run, name="scal3r_worker", daemon=True)
        self.pipelined = pipelined
        # inferred windows (and the network phase's events, in order) for the placement
        # thread; None ends it
        self._handoff: queue.Queue[_Placement | None] = queue.Queue(maxsize=handoff)
        self._stream = StageStream()  # the placement stage's own CUDA stream
        self._network_busy = False
        self._placements = 0  # handed over, not yet placed
        # frames through the network phase; `stats.processed` follows once every window
        # they completed is placed (a processed frame has a pose, as in the serial worker)
        self._net_frames = 0
        self._stage = threading.Thread(target=self._run_stage, name="scal3r_place", daemon=True)
        # pipelined: frames are prepared (resized to the network's input) on a thread of
        # their own as they are submitted, while the network thread runs a window
        self._prepare: ThreadPoolExecutor | None = None

    # ----------------------------------------------------------------- producer side
    def start(self) -> None:
        self.engine = self._engine_factory()
        if self.pipelined:
            self._prepare = ThreadPoolExecutor(1, thread_name_prefix="scal3r_prepare")
            self._stage.start()
        self._thread.start()

    def submit(self, frame: Frame) -> bool:
        """Enqueue a frame; returns False when it (or the oldest) had to be dropped."""
        with self._cond:
            self.stats.received += 1
            if self._stop:  # the node is shutting down: nothing new is mapped
                self.stats.dropped["shutdown"] += 1
                return False
            accepted = True
            if self._frames_queued() >= self.queue_size:
                accepted = False
                self.stats.dropped["queue_full"] += 1
                if self.drop_policy == "drop_newest":
                    return False
                for i, (kind, old) in enumerate(self._queue):  # the oldest frame, not a command
                    if kind == "frame":
                        del self._queue[i]
                        _cancel(old)
                        break
            item: Frame | Future = frame
            if self._prepare is not None and self.engine is not None:
                item = self._prepare.submit(self.engine.prepare, frame)
            self._queue.append(("frame", item))
            self._cond.notify()
            return accepted

    def request(self, command: str, callback: Callable[[object], None] | None = None) -> None:
        """Run ``command`` ('reset' or 'flush') on the worker thread, in queue order
        (ignored once the worker is stopping)."""
        with self._cond:
            if self._stop:
                return
            self._queue.append((command, callback))
            self._cond.notify()

    def call(
        self, fn: Callable[[MappingEngine], object], timeout: float = 60.0, flush: bool = False
    ) -> object:
        """Run ``fn(engine)`` on the worker thread and wait for its result (for saving).
        It goes ahead of the queued frames (a save does not wait for the backlog) but after
        the commands requested before it (a reset, then a save: the save sees the reset).
        ``flush``: first map the frames processed after the last full window
        (``engine.flush``, events to the sink), so a save holds every processed frame.
        Raises RuntimeError when the worker stops before running it."""
        call = _Call(fn, flush)
        with self._cond:
            if self._stop:
                raise RuntimeError("the mapping worker is stopping")
            commands = [i for i, (kind, _) in enumerate(self._queue) if kind != "frame"]
            self._queue.insert(commands[-1] + 1 if commands else 0, ("call", call))
            self._cond.notify()
        if not call.done.wait(timeout):
            raise TimeoutError(f"worker did not answer within {timeout:.0f} s")
        if call.error is not None:
            raise call.error
        return call.result

    def queue_length(self) -> int:
        with self._cond:
            return self._frames_queued()

    def pending(self) -> list[str]:
        """What waits in the queue, in the order it will run ('frame', 'reset', 'flush',
        'call'): the order the services rely on, for tests and inspection."""
        with self._cond:
            return [kind for kind, _ in self._queue]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end (after `stop`); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats_snapshot(self) -> tuple[WorkerStats, int]:
        """A consistent copy of the counters and the frames queued (for status timers)."""
        with self._cond:
            copy = replace(self.stats, dropped=collections.Counter(self.stats.dropped))
            return copy, self._frames_queued()

    @property
    def alive(self) -> bool:
        """The worker thread is running (after a detaching `stop`: still in a window)."""
        return self._thread.is_alive()

    def stop(
        self,
        timeout: float = 30.0,
        flush: bool = False,
        sink: Callable[[list[MapUpdate]], None] | None = None,
        interrupt: threading.Event | None = None,
    ) -> bool:
        """Abandon queued frames (counted) and pending calls, let the window in progress
        (pipelined: the windows in either stage) finish and join, all within ``timeout``
        seconds or until ``interrupt`` is set (the user insists: a second Ctrl-C). True if
        the thread finished.

        ``flush``: before it ends, the thread maps the frames processed after the last
        full window as a final shorter one (``engine.flush``), so every processed frame
        has a pose before the node saves; within the same ``timeout``.
        ``sink``: where events go from now on (the window in progress, the flush).

        False: the thread is still in a window after ``timeout`` (a slow network); it is
        detached -- whatever it still produces is dropped, its errors are not reported,
        nothing reaches the sink any more -- so the caller can save what the engine has
        integrated (reads under ``engine.state_lock``) and exit without waiting for it.
        """
        if sink is not None:
            with self._sink_lock:
                self._sink = sink
        with self._cond:
            self._stop = True
            abandoned = self._frames_queued()
            if abandoned:
                self.stats.dropped["shutdown"] += abandoned
            calls = [item for kind, item in self._queue if kind == "call"]
            for _, item in self._queue:
                _cancel(item)
            self._queue.clear()
            if flush and self.engine is not None:
                self._queue.append(("flush", None))
            self._cond.notify()
        for call in calls:
            call.cancel(RuntimeError("the mapping worker stopped before this request ran"))
        if self._thread.is_alive():
            deadline = time.monotonic() + max(timeout, 0.0)
            while self._thread.is_alive() and not (interrupt is not None and interrupt.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._thread.join(min(left, 0.1))  # short: `interrupt` is polled
        else:  # never started, or ended before: the flush runs here
            with self._cond:
                pending, self._queue = list(self._queue), collections.deque()
            for kind, item in pending:
                self._handle(kind, item)
        if self._thread.is_alive():
            self._detach()
            return False
        return True

    def _detach(self) -> None:
        """Cut a thread that did not stop in time off from the node: after this returns
        no event of it reaches the sink (a delivery in progress is waited for)."""
        with self._sink_lock:
            self.detached = True
            self._sink = lambda events: None
            self._on_error = lambda msg: None
        current = self._current
        if isinstance(current, _Call):  # a save_map in progress: its caller stops waiting
            current.cancel(RuntimeError("the node stopped before this request finished"))

    def _frames_queued(self) -> int:
        return sum(1 for kind, _ in self._queue if kind == "frame")

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stop:
                        self._cond.wait(0.5)
                    if not self._queue:  # stopping, and nothing left (a final flush runs first)
                        return
                    kind, item = self._queue.popleft()
                    self._network_busy = True
                    self._set_busy()
                    self._current = item
                try:
                    self._handle(kind, item)
                finally:
                    with self._cond:
                        self._network_busy = False
                        self._set_busy()
                        self._current = None
        finally:  # the windows handed over are placed before the thread ends
            if self._stage.is_alive():
                self._handoff.put(None)
                self._stage.join()
            if self._prepare is not None:
                self._prepare.shutdown(wait=False, cancel_futures=True)

    def _run_stage(self) -> None:
        """The placement thread: windows in the order the network phase inferred them."""
        while True:
            placement = self._handoff.get()
            try:
                if placement is None:
                    return
                pred = placement.window.pred if placement.window is not None else None
                with self._stream.run(pred, placement.ready):
                    self._place(placement)
            except Exception as exc:  # (a failing error report): the stage must go on
                self._report(exc)
            finally:
                if placement is not None:
                    with self._cond:
                        self._placements -= 1
                        done = self._net_frames if self._placements == 0 else placement.frames_done
                        self.stats.processed = max(self.stats.processed, done)
                        self._set_busy()
                self._handoff.task_done()

    def _set_busy(self) -> None:
        """(under ``_cond``) Busy while either stage has work."""
        self.stats.busy = self._network_busy or self._placements > 0

    def _drain(self) -> None:
        """Wait until every window handed to the placement thread is placed (commands see
        whole windows; a reset must not meet a window still being placed)."""
        if self._stage.is_alive():
            self._handoff.join()

    def _forward(self, items: list, t0: float, frames_done: int) -> None:
        """The network phase's output, in order, to the placement stage: events as they
        are, each inferred window to be placed; pipelined through the hand-off (blocks
        while it is full), else placed here."""
        for p in self._placements_of(items, t0):
            p.frames_done = frames_done
            if self._stage.is_alive():
                if p.window is not None:
                    p.ready = mark_ready(p.window.pred)
                with self._cond:
                    self._placements += 1
                    self._set_busy()
                self._handoff.put(p)
            else:
                self._place(p)

    @staticmethod
    def _placements_of(items: Iterable[MapUpdate | InferredWindow], t0: float):
        """The network phase's items as placement-stage work, lazily: each inferred window,
        and each run of events between them."""
        events: list[MapUpdate] = []
        for x in items:
            if isinstance(x, InferredWindow):
                if events:
                    yield _Placement(None, t0, events)
                    events = []
                yield _Placement(x, t0)
            else:
                events.append(x)
        if events:
            yield _Placement(None, t0, events)

    def _place(self, p: _Placement) -> list[MapUpdate]:
        """One window's placement phase, its two event parts to the sink as they come;
        a failure is counted and reported as one of the network phase. Returns the events."""
        if p.window is None:
            self._deliver(p.events, p.t0)
            return p.events
        engine = self.engine
        assert engine is not None
        out: list[MapUpdate] = []
        try:
            for part in engine.place(p.window):
                self._deliver(part, p.t0)
                out += part
        except Exception as exc:
            self._report(exc)
        return out

    def _report(self, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        with self._cond:
            self.stats.errors += 1
            self.stats.last_error = msg
        self._on_error(msg + "\n" + traceback.format_exc(limit=4))

    def _handle(self, kind: str, item: object) -> None:
        engine = self.engine
        assert engine is not None
        if kind == "call":
            self._drain()
            if item.flush:  # type: ignore[attr-defined]
                self._handle("flush", None)
            item.run(engine)  # type: ignore[attr-defined]
            return
        t0 = time.perf_counter()
        if kind == "frame":
            try:
                frame = item.result() if isinstance(item, Future) else item  # prepared ahead
                items = engine.push_network(frame)  # type: ignore[arg-type]
            except Exception as exc:
                self._report(exc)
                return
            with self._cond:
                self._net_frames += 1
                frames_done = self._net_frames
            self._forward(items, t0, frames_done)
            with self._cond:
                if self._placements == 0:  # nothing of it (or before it) still to place
                    self.stats.processed = self._net_frames
            return
        self._drain()
        try:
            if kind == "flush":  # its windows' poses go out as soon as they are aligned
                events = []
                for p in self._placements_of(engine.flush_network(), t0):
                    events += self._place(p)
                finish = engine.finish()
                self._deliver(finish, t0)
                events += finish
            elif kind == "reset":
                engine.reset()
                events = []
                with self._cond:
                    self.stats.resets += 1
            else:
                raise ValueError(f"unknown worker command {kind!r}")
        except Exception as exc:
            self._report(exc)
            return
        if kind != "flush":  # (delivered as they came)
            self._deliver(events, t0)
        if callable(item):
            item(events)

    def _deliver(self, events: list[MapUpdate], t0: float) -> None:
        """Count a window's events (stats, failures), report failures, hand them to the
        sink; ``t0``: when the frame that completed the window was taken from the queue."""
        if events:
            failures = [e for e in events if isinstance(e, ChunkFailed)]
            with self._cond:
                self.stats.chunks += sum(1 for e in events if isinstance(e, StatsUpdate))
                self.stats.last_chunk_s = time.perf_counter() - t0
                self.stats.errors += len(failures)
                if failures:
                    self.stats.last_error = failures[-1].error
            for f in failures:
                self._on_error(
                    f"window {f.chunk_id} failed (attempt {f.attempt}, "
                    f"{'will retry' if f.will_retry else 'skipped'}): {f.error}"
                )
            try:
                with self._sink_lock:
                    self._sink(events)
                release_freed_memory()  # the messages' temporaries, as after each window
            except Exception as exc:  # publishing failed: report it, keep mapping
                msg = f"publishing failed: {type(exc).__name__}: {exc}"
                with self._cond:
                    self.stats.errors += 1
                    self.stats.last_error = msg
                self._on_error(msg + "\n" + traceback.format_exc(limit=4))


@dataclass
class _Placement:
    """One item of the placement stage: an inferred window to place, or events of the
    network phase (window failures) that go out in their place in the order."""

    window: InferredWindow | None
    t0: float
    events: list[MapUpdate] = field(default_factory=list)
    frames_done: int = 0  # frames through the network phase when it was handed over
    ready: Any = None  # CUDA event after the window's prediction (None on the CPU)


def _cancel(item: object) -> None:
    """A queued frame abandoned: its preparation is not started, if it has not begun."""
    if isinstance(item, Future):
        item.cancel()


class _Call:
    """A `MappingWorker.call` request: run ``fn(engine)`` on the worker thread; its
    caller waits on ``done`` for ``result`` or ``error``."""

    def __init__(self, fn: Callable[[MappingEngine], object], flush: bool) -> None:
        self.fn, self.flush = fn, flush
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def run(self, engine: MappingEngine) -> None:
        try:
            self.result = self.fn(engine)
        except Exception as exc:  # handed to the caller
            self.error = exc
        self.done.set()

    def cancel(self, error: BaseException) -> None:
        self.error = error
        self.done.set()
