"""Our pipeline's runs: frames through the node's worker and engine, every figure measured.

Each column streams the same synthetic frames through a fresh engine built the node's way
(`build_engine`), owned by the node's `MappingWorker` (serial, or pipelined where the
worker has that mode), with the node's own output classes as the sink (`messages.py`).

Two passes per column of the node's configuration:

- **throughput**: every frame queued at once (no drops), so the worker never waits for
  the camera. A window's time is the wall time between two windows coming out of the
  worker; window 0 also pays for the first full chunk, so the headline figures are
  *steady*: FPS = new frames of the full windows after the first / their wall time;
  stage means over the same windows; what no stage covers is reported, not hidden.
- **latency**: frames submitted at a camera's arrival times (``--rate`` Hz, real sleeps),
  and each frame's latency measured from its arrival to its pose leaving the sink (after
  the pose messages, with ROS). A worker slower than the stride makes the queue grow, and
  the latency with it.

A real warm-up runs two full windows through a throwaway engine first (CUDA context,
kernels at full size, GCS sums), so no timed run pays for lazy initialisation.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.backends.scal3r import Scal3RBackendConfig
from scal3r_ros.mapping.config import BackendSection, WindowSection
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import Frame, MapUpdate, PosesUpdate, StatsUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.worker import MappingWorker
from scal3r_ros.model.scal3r import Scal3R
from scal3r_ros.tools.bench.memory import (
    gpu_peaks,
    peak_rss_bytes,
    reset_gpu_peaks,
    sync,
)
from scal3r_ros.tools.bench.messages import MessageBuilder

# engine stages (seconds per window in StatsUpdate.timings) -> table rows; a stage the
# engine adds later is reported too (its name as the row)
ENGINE_STAGES = ("infer", "loop_infer", "unproject", "align", "map", "store", "loop", "graph")
STAGES = ("preprocess", *ENGINE_STAGES, "publish")
WORKER_MODES = ("serial", "pipelined")


@dataclass
class BenchConfig:
    model: str = "scal3r-1b"  # scal3r-1b | tiny | oracle (the synthetic drive's truth)
    checkpoint: str | None = None  # scal3r-1b only; None: random weights
    frames: int = 6
    # the node's window section (short windows: a benchmark of a few frames) and backend
    # section (device; dtype of the optimised run: auto (bf16 on CUDA) | float32 | bfloat16)
    window: WindowSection = field(default_factory=lambda: WindowSection(chunk_size=4, overlap=2))
    backend: BackendSection = field(default_factory=BackendSection)
    width: int = 1242
    height: int = 375
    rate: float = 10.0  # camera rate of the latency pass [Hz]
    official: str | None = None  # official Scal3R checkout
    baseline: bool = True  # run the official-like configuration of our network
    seed: int = 0
    ablation: bool = False  # official_like -> optimised one choice per column
    ros: bool = True  # False: do not build/publish ROS messages (as without rclpy)
    # the network replaced by TimedBackend(<model>, network_ms / 1000): every inference
    # lasts at least this long (None: the model's own time)
    network_ms: float | None = None
    workers: tuple[str, ...] = ("serial",)  # worker modes of the node's configuration
    latency: bool = True  # the paced latency pass for the node's configuration

    @property
    def chunk(self) -> int:
        return self.window.chunk_size

    @property
    def overlap(self) -> int:
        return self.window.overlap

    @property
    def stride(self) -> int:
        return self.chunk - self.overlap

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def record(self) -> dict[str, Any]:
        """The settings as the results JSON holds them (flat keys)."""
        flat = asdict(self)
        del flat["window"], flat["backend"]
        out = {k: flat.pop(k) for k in ("model", "checkpoint", "frames")}
        out |= {"chunk": self.chunk, "overlap": self.overlap}
        out |= {k: flat.pop(k) for k in ("width", "height")}
        out |= {"device": self.device, "dtype": self.dtype}
        flat["workers"] = list(self.workers)
        return out | flat


@dataclass
class RunResult:
    """One column's measurements (times in ms unless named otherwise; "steady": the full
    windows after the first)."""

    name: str
    description: str
    worker: str  # serial | pipelined | offline (the official forward)
    frames: int
    windows: int
    steady_windows: int
    steady_new_frames: int
    wall_s: float  # whole throughput pass, first window included
    fps: float  # steady: steady_new_frames / steady wall time
    fps_wall: float  # frames / wall_s
    steady_window_ms: float  # steady wall time / steady_windows
    window_ms: list[float]  # each window's wall time (window 0: from the first frame)
    stages_ms: dict[str, float | None]  # steady means per window; publish None: no ROS
    stages_ms_window0: dict[str, float | None]
    outside_ms: float | None  # steady window time - sum of stage means (< 0: overlapped)
    preprocess_ms_per_frame: float
    network_ms_per_window: float  # steady mean of the infer stage
    network_fps: float  # steady new frames / steady network time
    overlap_ms: dict[str, float]  # network, rest, max(network, rest), network + rest
    loops: dict[str, float]  # verifications (loop windows through the network), accepted
    latency_s: dict[str, float]  # measured (latency pass); {} when not run
    peak_gpu_bytes: float | None  # allocated
    peak_gpu_reserved_bytes: float | None
    host_peak_rss_bytes: float
    rss_at_windows_max_bytes: float
    map_points: int
    gcs_state_bytes: float
    extra: dict[str, Any] = field(default_factory=dict)


# ================================================================== backends
def build_model(cfg: BenchConfig, device: str) -> Scal3R:
    """The network on ``device`` directly (no host copy of a large network), as the node
    builds it: a checkpoint streamed tensor by tensor, or random weights from ``cfg.seed``."""
    if cfg.checkpoint:
        from scal3r_ros.model.checkpoint import load_scal3r

        model, _ = load_scal3r(cfg.checkpoint, cfg.model, device=device)
        return model
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        return Scal3R(cfg.model)


def describe(c: Scal3RBackendConfig) -> str:
    """A configuration's column description, from the choices it makes."""
    prep = (
        "batched preprocessing (preprocess_batch)"
        if c.preprocess == "batch"
        else "official CPU preprocessing (PIL, per frame)"
    )
    heads = "all heads incl. points" if c.point_head else "heads camera+depth"
    if c.slim_model:
        heads += " (others dropped)"
    dtype = "bf16 autocast" if c.autocast_bf16 else "fp32"
    if c.slim_model and c.autocast_bf16:
        dtype += ", trunk weights held in bf16"
    return f"{prep}, {heads}, {dtype}"


def variants(cfg: BenchConfig, device: str, bf16: bool) -> tuple[dict, list[str]]:
    """The configurations of our network to run, in column order ({name: backend config}),
    and notes on those left out. Default: ``optimised`` (the node's) and ``official_like``
    (the release's choices). ``--ablation``: from ``official_like`` to ``optimised``, each
    column adding one choice to the previous one."""
    official_like = Scal3RBackendConfig(
        device=device, autocast_bf16=False, point_head=True, preprocess="reference"
    )
    optimised = Scal3RBackendConfig(  # the node's: unused heads dropped, bf16-held weights
        device=device, autocast_bf16=bf16, point_head=False, preprocess="batch", slim_model=True
    )
    if not cfg.ablation:
        out = {"optimised": optimised}
        if cfg.baseline:
            out["official_like"] = official_like
        return out, []
    if not cfg.baseline:
        raise ValueError("--ablation starts from official_like: drop --no-baseline")
    out = {"official_like": official_like}
    out["+batch_preprocess"] = replace(out["official_like"], preprocess="batch")
    out["+depth_heads_only"] = replace(out["+batch_preprocess"], point_head=False)
    if bf16:
        out["+bf16_autocast"] = replace(out["+depth_heads_only"], autocast_bf16=True)
    # the last step: the slim network (unused heads dropped; weights held in bf16 under bf16)
    out["optimised"] = optimised  # = the previous column with slim_model
    return out, []


def backend_device(backend: Any) -> str:
    """Where ``backend`` computes (the oracle: on the CPU)."""
    return str(getattr(getattr(backend, "config", None), "device", "cpu"))


class InferLog:
    """``inner`` with the time of every inference recorded, loop windows (the network
    part of a loop verification) apart from the regular ones."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.loop_s: list[float] = []
        self.window_s: list[float] = []

    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        t0 = time.perf_counter()
        pred = self.inner.infer(chunk, gcs_state)
        (self.loop_s if chunk.is_loop else self.window_s).append(time.perf_counter() - t0)
        return pred

    def __getattr__(self, name: str) -> Any:
        # the rest of the backend protocol and its optional hooks are the inner backend's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


# ================================================================== worker
def default_workers(both: bool) -> tuple[str, ...]:
    """The node's worker mode (pipelined), or both to compare."""
    return WORKER_MODES if both else ("pipelined",)


def make_worker(
    engine_factory: Callable[[], MappingEngine],
    sink: Callable[[list[MapUpdate]], None],
    queue_size: int,
    mode: str,
    on_error: Callable[[str], None],
) -> MappingWorker:
    """The node's worker in ``mode``; queue_size large enough that no frame is dropped."""
    if mode not in WORKER_MODES:
        raise ValueError(f"worker mode must be one of {WORKER_MODES}, got {mode!r}")
    return MappingWorker(
        engine_factory,
        sink,
        queue_size=queue_size,
        on_error=on_error,
        pipelined=mode == "pipelined",
    )


@dataclass
class WindowRecord:
    chunk_id: int
    done_s: float  # perf_counter when its stats left the sink (its work is over)
    timings: dict[str, float]
    memory: dict[str, float]
    publish_s: float | None  # the sink's message time since the previous window


class Recorder:
    """The worker's sink: publishes through the node's outputs and records when each
    window finished and when each frame's first pose went out (any worker thread)."""

    def __init__(self, messages: MessageBuilder | None) -> None:
        self.messages = messages
        self.lock = threading.Lock()
        self.windows: list[WindowRecord] = []
        self.pose_out_s: dict[int, float] = {}
        self.new_frames: Counter[int] = Counter()  # chunk id -> frames placed first
        self._publish_s = 0.0

    def __call__(self, events: list[MapUpdate]) -> None:
        t0 = time.perf_counter()
        t_pose = self.messages.on_events(events) if self.messages is not None else t0
        t1 = time.perf_counter()
        with self.lock:
            self._publish_s += t1 - t0
            for ev in events:
                if isinstance(ev, PosesUpdate) and ev.reason == "new" and not ev.corrected:
                    for f in ev.frame_ids:
                        self.pose_out_s.setdefault(int(f), t_pose)
                    self.new_frames[ev.chunk_id] += len(ev.frame_ids)
                elif isinstance(ev, StatsUpdate):
                    publish = self._publish_s if self.messages is not None else None
                    self.windows.append(
                        WindowRecord(ev.chunk_id, t1, dict(ev.timings), dict(ev.memory), publish)
                    )
                    self._publish_s = 0.0


@dataclass
class Stream:
    """What one pass through the worker produced."""

    start_s: float
    wall_s: float
    arrivals_s: list[float]  # when each frame was submitted
    queue_max: int
    record: Recorder
    full_windows: set[int]  # chunk ids of windows of chunk_size frames (not a flush)
    last_full_end: int  # frames before this were placed by full windows
    poses: tuple[np.ndarray, np.ndarray, np.ndarray]  # engine.poses() at the end
    map_points: int
    loops_accepted: int
    infer_log: InferLog
    device: str


def stream(
    backend: Any,
    frames: list[Frame],
    cfg: BenchConfig,
    messages: MessageBuilder | None,
    mode: str,
    rate_hz: float | None = None,
    desc: str = "",
) -> Stream:
    """``frames`` through a fresh engine on the node's worker; at ``rate_hz`` (real
    arrival times) or all queued at once (None). Raises RuntimeError if a window failed."""
    device = backend_device(backend)
    reset = getattr(backend, "reset_resolution", None)
    if reset is not None:
        reset()
    if messages is not None:
        messages.reset()
    reset_gpu_peaks(device)
    log = InferLog(backend)
    rec = Recorder(messages)
    errors: list[str] = []
    config = EngineConfig.from_sections(cfg.window)
    worker = make_worker(
        lambda: build_engine(config, log), rec, len(frames) + 1, mode, errors.append
    )
    worker.start()
    done = threading.Event()
    arrivals: list[float] = []
    queue_max = 0
    t_start = time.perf_counter()
    try:
        for i, frame in enumerate(tqdm(frames, desc=desc, unit="frame", leave=False)):
            if rate_hz:
                left = t_start + i / rate_hz - time.perf_counter()
                if left > 0:
                    time.sleep(left)
            arrivals.append(time.perf_counter())
            worker.submit(frame)
            queue_max = max(queue_max, worker.queue_length())
        worker.request("flush", lambda _events: done.set())
        while not done.wait(0.2):
            if not worker.alive:
                raise RuntimeError("the mapping worker ended before the flush")
        sync(device)
        wall = time.perf_counter() - t_start
    finally:
        worker.stop()
    if errors:
        raise RuntimeError(f"{len(errors)} window(s) failed; first: {errors[0]}")
    engine = worker.engine
    assert engine is not None
    spans = engine.chunk_spans()
    full = {c for c, (a, b) in spans.items() if b - a == cfg.chunk}
    lc = engine.loop_closure
    return Stream(
        start_s=t_start,
        wall_s=wall,
        arrivals_s=arrivals,
        queue_max=queue_max,
        record=rec,
        full_windows=full,
        last_full_end=max((spans[c][1] for c in full), default=0),
        poses=engine.poses(),
        map_points=len(engine.map),
        loops_accepted=len(getattr(lc, "accepted", ())),
        infer_log=log,
        device=device,
    )


# ================================================================== figures
def _stage_means(windows: list[WindowRecord], ros: bool) -> dict[str, float | None]:
    """Mean seconds -> ms per stage over ``windows`` (the engine's ``prepare`` reported
    as ``preprocess``; ``engine_total`` is a sum of the others, left out)."""
    names = [*STAGES]
    for w in windows:
        names += [k for k in w.timings if k not in names and k not in ("prepare", "engine_total")]
    out: dict[str, float | None] = {}
    for s in names:
        key = "prepare" if s == "preprocess" else s
        if s == "publish":
            out[s] = 1e3 * float(np.mean([w.publish_s or 0.0 for w in windows])) if ros else None
        else:
            out[s] = 1e3 * float(np.mean([w.timings.get(key, 0.0) for w in windows]))
    return out


def throughput_figures(s: Stream, cfg: BenchConfig, ros: bool) -> dict[str, Any]:
    """Steady-state figures of a throughput pass (see the module doc)."""
    ws = s.record.windows
    if not ws:
        raise RuntimeError("no window was processed: use --frames >= --chunk")
    done = [w.done_s for w in ws]
    window_ms = [1e3 * (b - a) for a, b in zip([s.start_s, *done[:-1]], done, strict=True)]
    steady_idx = [k for k in range(1, len(ws)) if ws[k].chunk_id in s.full_windows]
    if not steady_idx:
        raise ValueError(
            "no steady window: the bench needs two full windows "
            f"(--frames >= chunk + stride = {cfg.chunk + cfg.stride})"
        )
    steady = [ws[k] for k in steady_idx]
    steady_s = done[steady_idx[-1]] - done[0]  # window 1 .. the last full one
    new = sum(s.record.new_frames[w.chunk_id] for w in steady)
    stages = _stage_means(steady, ros)
    network_ms = stages["infer"] or 0.0
    rest_ms = sum(v or 0.0 for k, v in stages.items() if k != "infer")
    steady_window_ms = 1e3 * steady_s / len(steady)
    infer_s = sum(w.timings.get("infer", 0.0) for w in steady)
    loop_s = s.infer_log.loop_s
    return dict(
        windows=len(ws),
        steady_windows=len(steady),
        steady_new_frames=new,
        fps=new / steady_s if steady_s > 0 else float("inf"),
        steady_window_ms=steady_window_ms,
        window_ms=window_ms,
        stages_ms=stages,
        stages_ms_window0=_stage_means(ws[:1], ros),
        outside_ms=steady_window_ms - network_ms - rest_ms,
        preprocess_ms_per_frame=1e3
        * sum(w.timings.get("prepare", 0.0) for w in steady)
        / max(new, 1),
        network_ms_per_window=network_ms,
        network_fps=new / infer_s if infer_s > 0 else float("inf"),
        overlap_ms={
            "network": network_ms,
            "rest": rest_ms,
            "max": max(network_ms, rest_ms),
            "sum": network_ms + rest_ms,
            "window": steady_window_ms,
        },
        loops={
            "verifications": float(len(loop_s)),
            "verify_network_ms": 1e3 * float(np.mean(loop_s)) if loop_s else 0.0,
            "accepted": float(s.loops_accepted),
        },
        rss_at_windows_max_bytes=max(w.memory.get("rss_bytes", 0.0) for w in ws),
        map_points=s.map_points,
        gcs_state_bytes=float(ws[-1].memory.get("gcs_state_bytes", 0.0)),
    )


def latency_figures(s: Stream, cfg: BenchConfig, rate_hz: float) -> dict[str, float]:
    """Arrival -> pose out of every frame placed by a full window after the first."""
    lat = [
        s.record.pose_out_s[f] - s.arrivals_s[f]
        for f in range(cfg.chunk, s.last_full_end)
        if f in s.record.pose_out_s
    ]
    if not lat:
        return {}
    return {
        "rate_hz": rate_hz,
        "fill_wait_s": cfg.stride / rate_hz,
        "frames": float(len(lat)),
        "mean_s": float(np.mean(lat)),
        "p50_s": float(np.median(lat)),
        "max_s": float(np.max(lat)),
        "queue_max": float(s.queue_max),
    }


def pose_difference(a: Stream, b: Stream) -> dict[str, float]:
    """How far ``b``'s final poses are from ``a``'s (common frames; map units, degrees)."""
    ids_a, _, pa = a.poses
    ids_b, _, pb = b.poses
    common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
    if not len(common):
        return {"frames": 0.0}
    dt = np.linalg.norm(pa[ia, :3, 3] - pb[ib, :3, 3], axis=1)
    # the angle from the chordal distance ||Ra - Rb|| = 2 sqrt(2) sin(angle / 2): exactly 0
    # for equal matrices (the trace form is not, for rotations orthonormal to float32 only)
    chord = np.linalg.norm(pa[ia, :3, :3] - pb[ib, :3, :3], axis=(1, 2))
    angle = 2 * np.arcsin(np.clip(chord / (2 * np.sqrt(2)), 0.0, 1.0))
    return {
        "frames": float(len(common)),
        "missing": float(len(ids_a) + len(ids_b) - 2 * len(common)),
        "max_translation": float(dt.max()),
        "max_rotation_deg": float(np.degrees(angle).max()),
        "map_points_difference": float(b.map_points - a.map_points),
    }


def run_column(
    name: str,
    description: str,
    backend: Any,
    frames: list[Frame],
    cfg: BenchConfig,
    messages: MessageBuilder | None,
    mode: str,
    latency: bool,
) -> tuple[RunResult, Stream]:
    """One column: the throughput pass, then (``latency``) the paced latency pass."""
    s = stream(backend, frames, cfg, messages, mode, desc=name)
    fig = throughput_figures(s, cfg, messages is not None)
    peaks = gpu_peaks(s.device)
    lat: dict[str, float] = {}
    if latency and cfg.rate > 0:
        paced = stream(backend, frames, cfg, messages, mode, cfg.rate, desc=f"{name} paced")
        lat = latency_figures(paced, cfg, cfg.rate)
    n = len(frames)
    result = RunResult(
        name=name,
        description=description,
        worker=mode,
        frames=n,
        wall_s=s.wall_s,
        fps_wall=n / s.wall_s,
        latency_s=lat,
        peak_gpu_bytes=peaks.allocated_bytes,
        peak_gpu_reserved_bytes=peaks.reserved_bytes,
        host_peak_rss_bytes=peak_rss_bytes(),
        **fig,
    )
    return result, s


# ================================================================== preparation
def warm_up(backend: Any, frames: list[Frame], cfg: BenchConfig) -> None:
    """Two full windows (window 0 and the first aligned one) through a throwaway engine:
    CUDA context, kernels at the real window size, autocast and GCS-sum paths, the
    engine's own first-call costs. No timed pass pays for lazy initialisation."""
    engine = build_engine(EngineConfig.from_sections(cfg.window), backend)
    for frame in frames[: cfg.chunk + cfg.stride]:
        engine.push(frame)
    del engine
    reset = getattr(backend, "reset_resolution", None)
    if reset is not None:
        reset()
    sync(backend_device(backend))


def fill_oracle_cache(oracle: Any, frames: list[Frame], chunk: int) -> None:
    """The oracle renders each frame's depth on its first inference; rendering stands in
    for nothing the node does, so every frame is rendered once before any timing."""
    for a in range(0, len(frames), chunk):
        part = frames[a : a + chunk]
        imgs = np.stack([oracle.prepare(f.image, f.intrinsics)[0] for f in part])
        stamps = np.array([f.stamp_ns for f in part], dtype=np.int64)
        ids = np.arange(a, a + len(part))
        oracle.infer(ChunkInput(2**31 - 1, ids, stamps, imgs), None)  # an id no window has


def render_frames(drive: SyntheticDrive, n: int) -> list[Frame]:
    """The synthetic stream, rendered before any timing. Frame i is a pure function of i
    and numpy releases the GIL in the ray casting, so on a many-core machine (a GPU host)
    threads render the same frames sooner."""
    workers = min(8, (os.cpu_count() or 1) // 2)
    bar = dict(total=n, desc="render", unit="frame", leave=False)
    if workers < 2:
        return [drive.frame(i) for i in tqdm(range(n), **bar)]
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(drive.frame, range(n)), **bar))
