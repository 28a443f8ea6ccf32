"""Pipeline overlap on a CPU machine: serial vs pipelined window time over the real engine.

The network is simulated (``TimedBackend``: each inference lasting ``--network-ms``, the
wait sleeping as a GPU synchronise would); its output is the oracle's ground truth at the
network's 518x154 KITTI input, computed on a first, untimed pass and replayed (the
oracle's own rendering would otherwise count as network time). Everything after the
network is the real engine at real sizes (60/30 windows, loop closure on as in the node).
Both worker modes get the same frames, all queued at once, so each runs as fast as it can:

- T: the network stage per window (inference + loop chunks + frame preparation),
- P: the placement stage per window (unproject, align, map, store, loop verification,
  graph), both means of the engine's stage times over the steady windows (after the
  first);
- window time: mean spacing of the windows' last events over the steady windows.

Serial should take ~T+P a window, pipelined ~max(T, P).

    python -m scal3r_ros.tools.bench.pipeline --network-ms 650
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.backends.oracle import OracleBackend
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.backends.timed import TimedBackend
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.events import MapUpdate, StatsUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.mapping.windowing import WindowConfig, window_problem
from scal3r_ros.mapping.worker import MappingWorker

NETWORK_STAGES = ("prepare", "infer", "loop_infer")  # the worker's network thread
PLACEMENT_STAGES = ("unproject", "align", "map", "store", "loop", "graph")


class Replay:
    """``inner`` 's predictions, recorded on a first pass and replayed by chunk (id, loop
    or not, frame stamps): in a timed run the network stage is the simulated time, not the
    oracle's rendering. A chunk not recorded is computed (and counted) as it comes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.recording = True
        self._cache: dict[tuple, ChunkPrediction] = {}

    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        key = (chunk.chunk_id, bool(chunk.is_loop), tuple(int(s) for s in chunk.stamps_ns))
        pred = self._cache.get(key)
        if pred is None:
            pred = self.inner.infer(chunk, gcs_state)
            if self.recording:  # without the point head's output (the engine aligns depth)
                pred = dataclasses.replace(pred, points=None, points_conf=None)
                self._cache[key] = pred
        return pred

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass
class ModeResult:
    """One worker mode's steady-state figures (milliseconds per window)."""

    mode: str
    windows: int
    network_ms: float  # T: network-stage time per window, measured
    placement_ms: float  # P: placement-stage time per window, measured
    window_ms: float  # mean spacing of the windows' last events


def record(drive: SyntheticDrive, args: argparse.Namespace) -> Replay:
    """The untimed first pass: every window's (and loop chunk's) prediction recorded."""
    replay = Replay(OracleBackend(drive))
    engine = build_engine(EngineConfig(window=WindowConfig(args.chunk_size, args.overlap)), replay)
    for i in range(drive.n_frames):
        engine.push(drive.frame(i))
    replay.recording = False
    return replay


def run_mode(
    drive: SyntheticDrive, replay: Replay, args: argparse.Namespace, pipelined: bool
) -> ModeResult:
    """Every frame of ``drive`` through a worker; the steady windows' figures."""
    backend = TimedBackend(replay, args.network_ms / 1e3)
    cfg = EngineConfig(window=WindowConfig(args.chunk_size, args.overlap))
    done: dict[int, float] = {}
    stats: dict[int, dict[str, float]] = {}
    lock = threading.Lock()

    def sink(events: list[MapUpdate]) -> None:
        now = time.perf_counter()
        with lock:
            for e in events:
                if isinstance(e, StatsUpdate) and e.chunk_id >= 0:
                    done[e.chunk_id], stats[e.chunk_id] = now, dict(e.timings)

    errors: list[str] = []
    worker = MappingWorker(
        lambda: build_engine(cfg, backend),
        sink,
        queue_size=drive.n_frames + 1,
        on_error=errors.append,
        pipelined=pipelined,
    )
    frames = [drive.frame(i) for i in range(drive.n_frames)]  # rendered before the clock
    worker.start()
    try:
        for f in frames:
            worker.submit(f)
        while worker.stats_snapshot()[0].processed < len(frames) and worker.alive:
            time.sleep(0.05)
        worker.call(lambda engine: None, timeout=3600.0)  # after every window is placed
    finally:
        worker.stop(timeout=60.0)
    if errors:
        raise RuntimeError(f"the engine failed: {errors[0]}")
    ids = sorted(done)
    steady = ids[1:]  # after the first window (warm-up, no alignment)
    if len(steady) < 2:
        raise RuntimeError("fewer than three windows: raise --windows")

    def mean_ms(stages: tuple[str, ...]) -> float:
        return 1e3 * sum(sum(stats[c].get(s, 0.0) for s in stages) for c in steady) / len(steady)

    return ModeResult(
        "pipelined" if pipelined else "serial",
        len(ids),
        mean_ms(NETWORK_STAGES),
        mean_ms(PLACEMENT_STAGES),
        1e3 * (done[steady[-1]] - done[steady[0]]) / (len(steady) - 1),
    )


def table(network_ms: float, results: list[ModeResult]) -> str:
    """One column per mode; each mode's model uses its own measured T and P (the load of a
    shared machine moves P between runs)."""
    serial, piped = results
    rows = [
        ("simulated network [ms/window]", f"{network_ms:.0f}", f"{network_ms:.0f}"),
        ("T: network stage, measured", f"{serial.network_ms:.0f}", f"{piped.network_ms:.0f}"),
        ("P: placement stage, measured", f"{serial.placement_ms:.0f}", f"{piped.placement_ms:.0f}"),
        (
            "model: serial T+P, pipelined max(T, P)",
            f"{serial.network_ms + serial.placement_ms:.0f}",
            f"{max(piped.network_ms, piped.placement_ms):.0f}",
        ),
        ("window time, measured", f"{serial.window_ms:.0f}", f"{piped.window_ms:.0f}"),
    ]
    w = max(len(r[0]) for r in rows)
    out = [f"| {'[ms per window]'.ljust(w)} | serial | pipelined |", f"|{'-' * (w + 2)}|---|---|"]
    out += [f"| {a.ljust(w)} | {b} | {c} |" for a, b, c in rows]
    out.append(f"speed-up serial / pipelined: {serial.window_ms / piped.window_ms:.2f}x")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network-ms", type=float, default=650.0, help="simulated network time")
    p.add_argument("--windows", type=int, default=8, help="windows per run (>= 3)")
    p.add_argument("--chunk-size", type=int, default=60)
    p.add_argument("--overlap", type=int, default=30)
    p.add_argument("--width", type=int, default=518, help="image width (network input)")
    p.add_argument("--height", type=int, default=154, help="image height (network input)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args(argv)
    problem = window_problem(args.chunk_size, args.overlap)
    if not args.network_ms >= 0:
        problem = f"--network-ms must be >= 0, got {args.network_ms}"
    elif args.windows < 3:
        problem = f"--windows must be >= 3, got {args.windows}"
    elif args.width < 8 or args.height < 8:
        problem = f"image size must be at least 8x8, got {args.width}x{args.height}"
    if problem:
        print(f"scal3r_bench.pipeline: {problem}", file=sys.stderr)
        return 2
    stride = args.chunk_size - args.overlap
    n_frames = args.chunk_size + stride * (args.windows - 1)
    drive = SyntheticDrive(SyntheticConfig(n_frames=n_frames, width=args.width, height=args.height))
    print(
        f"{args.windows} windows of {args.chunk_size}/{args.overlap} at "
        f"{args.width}x{args.height}, replayed oracle + TimedBackend({args.network_ms:.0f} ms)"
        f", {os.cpu_count()} CPUs",
        flush=True,
    )
    replay = record(drive, args)
    results = [run_mode(drive, replay, args, pipelined) for pipelined in (False, True)]
    print(table(args.network_ms, results))
    if args.json:
        print(json.dumps({"network_ms": args.network_ms, "runs": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
