"""The background worker: a bounded frame queue and the one thread that owns the engine.

Why a separate thread with its own queue: ROS callbacks must never wait for the GPU.
The callback only converts and calls `submit` (O(1)); this thread runs the engine (and
so the CUDA device) and hands the resulting events to a sink. Nothing here imports ROS,
so the queueing, drop and recovery rules are tested without DDS.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from scal3r_ros.mapping.engine import MappingEngine, release_freed_memory
from scal3r_ros.mapping.frame import ChunkFailed, Frame, MapUpdate, StatsUpdate

DROP_POLICIES = ("drop_oldest", "drop_newest")


@dataclass
class WorkerStats:
    """Counters shared with the node's status/diagnostics timers (read under the lock)."""

    received: int = 0
    processed: int = 0
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

    ``sink(events)`` is called on the worker thread. A failing chunk (backend error,
    CUDA out of memory, ...) is counted and reported through ``on_error``; the worker
    keeps going with the next frames.
    """

    def __init__(
        self,
        engine_factory: Callable[[], MappingEngine],
        sink: Callable[[list[MapUpdate]], None],
        queue_size: int = 64,
        drop_policy: str = "drop_oldest",
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {DROP_POLICIES}, got {drop_policy!r}")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._engine_factory = engine_factory
        self.engine: MappingEngine | None = None
        self._sink = sink
        self._on_error = on_error or (lambda msg: None)
        self.queue_size = queue_size
        self.drop_policy = drop_policy
        self._queue: collections.deque[tuple[str, object]] = collections.deque()
        self._cond = threading.Condition()
        self.stats = WorkerStats()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="scal3r_worker", daemon=True)

    # ----------------------------------------------------------------- producer side
    def start(self) -> None:
        self.engine = self._engine_factory()
        self._thread.start()

    def submit(self, frame: Frame) -> bool:
        """Enqueue a frame; returns False when it (or the oldest) had to be dropped."""
        with self._cond:
            self.stats.received += 1
            accepted = True
            if self._frames_queued() >= self.queue_size:
                accepted = False
                self.stats.dropped["queue_full"] += 1
                if self.drop_policy == "drop_newest":
                    return False
                for i, (kind, _) in enumerate(self._queue):  # the oldest frame, not a command
                    if kind == "frame":
                        del self._queue[i]
                        break
            self._queue.append(("frame", frame))
            self._cond.notify()
            return accepted

    def request(self, command: str, callback: Callable[[object], None] | None = None) -> None:
        """Run ``command`` ('reset' or 'flush') on the worker thread, in queue order."""
        with self._cond:
            self._queue.append((command, callback))
            self._cond.notify()

    def call(self, fn: Callable[[MappingEngine], object], timeout: float = 60.0,
             flush: bool = False) -> object:  # fmt: skip
        """Run ``fn(engine)`` on the worker thread and wait for its result (for saving).
        ``flush``: first map the frames processed after the last full window
        (``engine.flush``, events to the sink), so a save holds every processed frame."""
        done = threading.Event()
        box: dict[str, object] = {}

        def run(engine: MappingEngine) -> None:
            if flush:
                self._handle("flush", None)
            try:
                box["result"] = fn(engine)
            except Exception as exc:  # handed to the caller
                box["error"] = exc
            done.set()

        with self._cond:
            self._queue.appendleft(("call", run))
            self._cond.notify()
        if not done.wait(timeout):
            raise TimeoutError(f"worker did not answer within {timeout:.0f} s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("result")

    def queue_length(self) -> int:
        with self._cond:
            return self._frames_queued()

    def stop(self, timeout: float = 30.0, flush: bool = False,
             sink: Callable[[list[MapUpdate]], None] | None = None) -> bool:  # fmt: skip
        """Finish the chunk in progress, abandon queued frames, join. True if joined.

        ``flush``: then map the frames processed after the last full window as a final
        shorter one (``engine.flush``, on this thread: the worker's has ended), so every
        processed frame has a pose before the node saves; its events go to ``sink``
        (default: the worker's sink), failures to ``on_error`` as usual.
        """
        with self._cond:
            self._stop = True
            abandoned = self._frames_queued()
            if abandoned:
                self.stats.dropped["shutdown"] += abandoned
            self._queue.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        joined = not self._thread.is_alive()
        if joined and flush and self.engine is not None:
            if sink is not None:
                self._sink = sink
            self._handle("flush", None)
        return joined

    def _frames_queued(self) -> int:
        return sum(1 for kind, _ in self._queue if kind == "frame")

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                kind, item = self._queue.popleft()
                self.stats.busy = True
            try:
                self._handle(kind, item)
            finally:
                with self._cond:
                    self.stats.busy = False

    def _handle(self, kind: str, item: object) -> None:
        engine = self.engine
        assert engine is not None
        if kind == "call":
            item(engine)  # type: ignore[operator]
            return
        t0 = time.perf_counter()
        try:
            if kind == "frame":
                events = engine.push(item)  # type: ignore[arg-type]
                with self._cond:
                    self.stats.processed += 1
            elif kind == "flush":
                events = engine.flush()
            elif kind == "reset":
                engine.reset()
                events = []
                with self._cond:
                    self.stats.resets += 1
            else:
                raise ValueError(f"unknown worker command {kind!r}")
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            with self._cond:
                self.stats.errors += 1
                self.stats.last_error = msg
            self._on_error(msg + "\n" + traceback.format_exc(limit=4))
            return
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
                self._sink(events)
                release_freed_memory()  # the messages' temporaries, as after each window
            except Exception as exc:  # publishing failed: report it, keep mapping
                msg = f"publishing failed: {type(exc).__name__}: {exc}"
                with self._cond:
                    self.stats.errors += 1
                    self.stats.last_error = msg
                self._on_error(msg + "\n" + traceback.format_exc(limit=4))
        if kind != "frame" and callable(item):
            item(events)
