"""`scal3r_bench`: end-to-end speed and memory of the whole mapping path, with a baseline.

Frames (synthetic KITTI-size stream) -> preprocessing (``Backend.prepare``) -> network
(Scal3R, random weights unless ``--checkpoint``: the cost is the same) with causal GCS ->
Sim(3) alignment -> map -> ROS messages (TF, odometry, path, the window's PointCloud2,
built and published as the node does, no subscribers). Per-stage times come from the
engine's ``StatsUpdate`` events; the message stage is timed here.

Two configurations of OUR network run in the same process on the same frames, so the
ratio is measured, not quoted:

- ``optimised`` (the node's default): fast batched preprocessing (``preprocess_batch``),
  only the heads the engine needs (camera + depth), bf16 autocast on CUDA;
- ``official_like``: fp32, the official CPU preprocessing path (PIL, frame by frame), all
  heads including the point head.

With ``--ablation`` the step from ``official_like`` to ``optimised`` is measured one
choice at a time, each column adding one choice to the previous one: ``official_like`` ->
``+batch_preprocess`` -> ``+depth_heads_only`` -> ``optimised`` (+ bf16 autocast; skipped
where bf16 is off, e.g. on CPU without ``--dtype bfloat16``, since it would repeat the
previous column). The ratios then compare each column with the previous one.

With ``--official /path/to/Scal3R`` the official code's forward
(``scal3r.pipelines.backend.forward``, layer-synchronous GCS over all windows, fp32) also
runs on the same preprocessed windows. It needs the official dependencies (einops, rich,
pypose, ...); without ``--official`` nothing of it is imported. OpenCV, which the official
package imports at module level for its image I/O only, is replaced by a stand-in that
raises on use where it is not installed (the result's notes say so).

Without rclpy (or with ``--no-ros``) the message stage is not measured: its row reads
``n/a (no rclpy)`` and the window total and pose latency exclude it.

Pose latency is *computed from measurements*: for a camera at ``--rate`` Hz the oldest
new frame of a window waits ``stride / rate`` seconds for the window to fill, then the
window's processing time (network + engine + messages) as measured here.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from scal3r_ros.mapping.backends.factory import build_engine, resolve_device, use_bf16
from scal3r_ros.mapping.backends.protocol import ChunkInput
from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
from scal3r_ros.mapping.config import BackendSection, WindowSection
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.events import Frame, StatsUpdate
from scal3r_ros.mapping.memory import host_rss_bytes
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive, road_speed_laps
from scal3r_ros.mapping.windowing import ChunkScheduler, WindowConfig, window_problem
from scal3r_ros.model.preprocess import compute_target_size
from scal3r_ros.model.scal3r import Scal3R

# engine stages (seconds per window in StatsUpdate.timings) -> table rows
ENGINE_STAGES = ("infer", "unproject", "align", "map", "store", "loop", "graph")
STAGES = ("preprocess", *ENGINE_STAGES, "publish", "window_total")
# what MessageBuilder needs from ROS: without any of them the message stage is not measured
ROS_MODULES = (
    "rclpy",
    "builtin_interfaces.msg",
    "geometry_msgs.msg",
    "nav_msgs.msg",
    "rcl_interfaces.msg",
    "sensor_msgs.msg",
    "tf2_msgs.msg",
)
NO_ROS_CELL = "n/a (no rclpy)"


@dataclass
class BenchConfig:
    model: str = "scal3r-1b"  # scal3r-1b | tiny
    checkpoint: str | None = None  # scal3r-1b only; None: random weights
    frames: int = 6
    # the node's window section (short windows: a benchmark of a few frames) and backend
    # section (device; dtype of the optimised run: auto (bf16 on CUDA) | float32 | bfloat16)
    window: WindowSection = field(default_factory=lambda: WindowSection(chunk_size=4, overlap=2))
    backend: BackendSection = field(default_factory=BackendSection)
    width: int = 1242
    height: int = 375
    rate: float = 10.0  # camera rate for the latency figure [Hz]
    official: str | None = None  # official Scal3R checkout
    baseline: bool = True  # run the official-like configuration of our network
    seed: int = 0
    ablation: bool = False  # official_like -> optimised one choice per column
    ros: bool = True  # False: do not build/publish ROS messages (as without rclpy)

    @property
    def chunk(self) -> int:
        return self.window.chunk_size

    @property
    def overlap(self) -> int:
        return self.window.overlap

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def record(self) -> dict[str, Any]:
        """The settings as the results JSON has always held them (flat keys)."""
        flat = asdict(self)
        del flat["window"], flat["backend"]
        out = {k: flat.pop(k) for k in ("model", "checkpoint", "frames")}
        out |= {"chunk": self.chunk, "overlap": self.overlap}
        out |= {k: flat.pop(k) for k in ("width", "height")}
        out |= {"device": self.device, "dtype": self.dtype}
        return out | flat


@dataclass
class RunResult:
    """One configuration's measurements (times in ms unless named otherwise)."""

    name: str
    description: str
    frames: int
    windows: int
    wall_s: float
    fps: float
    stages_ms: dict[str, float | None]  # mean per window (preprocess: per window's new
    # frames); publish None: not measured (no ROS)
    preprocess_ms_per_frame: float
    network_ms_per_window: float
    network_fps: float  # frames / network time
    latency_s: dict[str, float]
    peak_gpu_bytes: float | None
    host_peak_rss_bytes: float
    rss_at_windows_max_bytes: float
    map_points: int
    gcs_state_bytes: float
    extra: dict[str, Any] = field(default_factory=dict)


# ================================================================== backends
def build_model(cfg: BenchConfig) -> Scal3R:
    if cfg.checkpoint:
        from scal3r_ros.model.checkpoint import load_scal3r

        model, _ = load_scal3r(cfg.checkpoint, cfg.model, device="cpu")
        return model
    torch.manual_seed(cfg.seed)
    return Scal3R(cfg.model)


# ================================================================== messages
def ros_missing() -> str | None:
    """Why the message stage cannot run here: the first of ``ROS_MODULES`` that does not
    import (None: all do). Only these are probed, so an import error anywhere else (our
    own ``scal3r_ros.ros`` modules included) still raises."""
    for name in ROS_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} cannot be imported ({type(exc).__name__}: {exc})"
    return None


class MessageBuilder:
    """Builds and publishes what the node publishes per window, with the node's own pieces
    and defaults: the map anchor and camera mount (`CameraMount`), /tf, odometry and
    ~/path (`PoseOutputs`), the window's ~/cloud (`CloudOutputs`; ~/map, throttled to
    map_publish_period by the node, is left out)."""

    def __init__(self) -> None:
        import rclpy
        from nav_msgs.msg import Odometry
        from nav_msgs.msg import Path as PathMsg
        from sensor_msgs.msg import PointCloud2
        from tf2_msgs.msg import TFMessage

        from scal3r_ros.ros.frames import FrameConverter, camera_mount
        from scal3r_ros.ros.mount import CameraMount
        from scal3r_ros.ros.outputs.cloud import CloudOutputs
        from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs
        from scal3r_ros.ros.params import NodeConfig

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("scal3r_bench", context=self.context)

        def publisher(msg_type, topic: str, depth: int):
            return self.node.create_publisher(msg_type, f"/scal3r_bench/{topic}", depth).publish

        cfg = NodeConfig()
        converter = FrameConverter(camera_mount(cfg.camera_xyz, cfg.camera_rpy))
        self.mount = CameraMount(
            cfg, converter, publisher(TFMessage, "tf_static", 1), lambda text: None
        )
        self.outputs = [
            PoseOutputs(
                converter,
                PoseFrames(cfg.map_frame, cfg.odom_frame, cfg.base_frame),
                publisher(TFMessage, "tf", 10),
                publisher(Odometry, "odometry", 10),
                publisher(PathMsg, "path", 1),
                path_period=cfg.path_publish_period,
                path_max_poses=cfg.path_max_poses,
            ),
            CloudOutputs(converter, cfg.map_frame, publisher(PointCloud2, "cloud", 10)),
        ]
        self.reset()

    def reset(self) -> None:
        self.mount.reset()
        for out in self.outputs:
            out.reset()

    def close(self) -> None:
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)

    def on_events(self, events: list) -> None:
        self.mount.on_events(events)
        for out in self.outputs:
            out.on_events(events)


# ================================================================== runs
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_rss_bytes() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def run_pipeline(
    name: str,
    description: str,
    backend: Scal3RBackend,
    frames: list[Frame],
    cfg: BenchConfig,
    messages: MessageBuilder | None,
) -> RunResult:
    """Stream ``frames`` through a fresh engine with ``backend``; time every stage.
    ``messages`` None: no ROS, the message stage is not measured (``publish`` is None)
    and the window total and latency exclude it."""
    device = backend.config.device
    engine = build_engine(EngineConfig.from_sections(cfg.window), backend)
    backend.reset_resolution()
    if messages is not None:
        messages.reset()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    windows: list[dict[str, float]] = []
    memory: list[dict[str, float]] = []

    def handle(events: list) -> None:
        t_pub = None
        if messages is not None:
            _sync(device)
            t0 = time.perf_counter()
            messages.on_events(events)
            t_pub = time.perf_counter() - t0
        for ev in events:
            if isinstance(ev, StatsUpdate):
                t = dict(ev.timings)
                t["preprocess"] = t.pop("prepare", 0.0)
                if t_pub is not None:
                    t["publish"] = t_pub
                windows.append(t)
                memory.append(dict(ev.memory))

    t_start = time.perf_counter()
    for frame in tqdm(frames, desc=f"{name}", unit="frame", leave=False):
        handle(engine.push(frame))
    handle(engine.flush())
    _sync(device)
    wall = time.perf_counter() - t_start
    if not windows:
        raise RuntimeError("no window was processed: use --frames >= --chunk")

    n = len(frames)
    stages: dict[str, float | None]
    stages = {s: 1e3 * float(np.mean([w.get(s, 0.0) for w in windows])) for s in STAGES[:-1]}
    if messages is None:
        stages["publish"] = None  # not measured (and 0 in the window total below)
    per_window = [sum(w.get(s, 0.0) for s in ENGINE_STAGES + ("publish",)) for w in windows]
    stages["window_total"] = 1e3 * float(np.mean(per_window))
    infer_total = sum(w["infer"] for w in windows)
    prep_total = sum(w["preprocess"] for w in windows)
    stride = cfg.chunk - cfg.overlap
    wait = stride / cfg.rate
    # windows after the first (the first waits for a whole chunk, not a stride)
    steady = per_window[1:] or per_window
    return RunResult(
        name=name,
        description=description,
        frames=n,
        windows=len(windows),
        wall_s=wall,
        fps=n / wall,
        stages_ms=stages,
        preprocess_ms_per_frame=1e3 * prep_total / n,
        network_ms_per_window=1e3 * infer_total / len(windows),
        network_fps=n / infer_total,
        latency_s={
            "fill_wait_s": wait,
            "mean_s": wait + float(np.mean(steady)),
            "max_s": wait + float(np.max(steady)),
        },
        peak_gpu_bytes=float(torch.cuda.max_memory_allocated())
        if device.startswith("cuda")
        else None,
        host_peak_rss_bytes=_peak_rss_bytes(),
        rss_at_windows_max_bytes=max(m["rss_bytes"] for m in memory),
        map_points=int(memory[-1]["map_points"]),
        gcs_state_bytes=float(memory[-1]["gcs_state_bytes"]),
    )


class _StandIn(types.ModuleType):
    """Stands in for a module that the official package imports at module level but its
    forward never uses: every attribute is a function that raises, so no use goes unseen."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise ImportError(
                f"{self.__name__}.{attr}: {self.__name__} is not installed "
                "(scal3r_bench registered a stand-in for the official imports)"
            )

        return unavailable


# the official package imports OpenCV at module level for image I/O (not in the forward);
# its wheel is too large to carry to a GPU machine that lacks it
OFFICIAL_STAND_INS = ("cv2",)


def run_official(checkout: Path, cfg: BenchConfig, frames: list[Frame], device: str) -> RunResult:
    """The official forward (release preprocessing, layer-synchronous GCS, all heads, fp32)
    over the same windows our engine forms from the same frames."""
    sys.path.insert(0, str(checkout.resolve()))
    stand_ins = []
    for name in OFFICIAL_STAND_INS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _StandIn(name)
            stand_ins.append(name)
    import yaml
    from scal3r.models.scal3r import Scal3R as OfficialScal3R
    from scal3r.pipelines import backend as official_backend
    from scal3r.utils.base_utils import DotDict as dotdict

    from scal3r_ros.model.preprocess import preprocess_image_reference

    if cfg.model != "scal3r-1b":
        raise ValueError("--official is supported for --model scal3r-1b only")
    sampler = yaml.safe_load((checkout / "configs/models/scal3r.yaml").read_text())
    sampler = sampler["model_cfg"]["sampler_cfg"]
    sampler["use_checkpoint"] = False  # activation checkpointing is a training option
    torch.manual_seed(cfg.seed)
    model = OfficialScal3R(dotdict(sampler)).to(device).eval()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    sched = ChunkScheduler(WindowConfig(cfg.chunk, cfg.overlap))
    specs = [s for s in (sched.push() for _ in frames) if s is not None]
    last = sched.flush()
    specs += [last] if last is not None else []

    t0 = time.perf_counter()
    h, w = frames[0].image.shape[:2]
    target = compute_target_size(h, w, 518, 14)
    imgs = np.stack([preprocess_image_reference(f.image, target, 14)[0] for f in frames])
    t_prep = time.perf_counter() - t0
    th, tw = target
    batches = []
    for spec in specs:
        order = [spec.frame_ids[k] for k in spec.network_order]
        rgb = torch.from_numpy(imgs[order]).float()[None]  # (1, S, H, W, 3)
        meta = dotdict(
            rgb=rgb.reshape(1, len(order), th * tw, 3).contiguous(),
            H=torch.tensor([th]),
            W=torch.tensor([tw]),
        )
        batches.append(dotdict(meta=meta))
    args = dotdict(device=device, streaming_state=0, offload_batches=0, offload_outputs=0)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        official_backend.forward(model, batches, args)
    _sync(device)
    t_net = time.perf_counter() - t0
    n = len(frames)
    peak = float(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None
    del model
    gc.collect()
    return RunResult(
        name="official",
        description="official scal3r.pipelines.backend.forward: release preprocessing, "
        "layer-synchronous GCS over all windows (offline), all heads, fp32",
        frames=n,
        windows=len(specs),
        wall_s=t_prep + t_net,
        fps=n / (t_prep + t_net),
        stages_ms={"preprocess": 1e3 * t_prep / len(specs), "infer": 1e3 * t_net / len(specs)},
        preprocess_ms_per_frame=1e3 * t_prep / n,
        network_ms_per_window=1e3 * t_net / len(specs),
        network_fps=n / t_net,
        latency_s={},
        peak_gpu_bytes=peak,
        host_peak_rss_bytes=_peak_rss_bytes(),
        rss_at_windows_max_bytes=float(host_rss_bytes()),
        map_points=0,
        gcs_state_bytes=0.0,
        extra={
            "note": "network and preprocessing only (no alignment/map/messages)",
            "stand_ins": stand_ins,
        },
    )


def warm_up(backends: list[Scal3RBackend], frames: list[Frame], n: int) -> None:
    """One small window through each configuration (lazy initialisation, CUDA context and
    kernels are not steady state) so no timed run pays for it."""
    for backend in backends:
        img = backend.prepare(frames[0].image, None)[0]
        chunk = ChunkInput(-1, np.arange(n), np.arange(n), np.stack([img] * n))
        backend.infer(chunk, backend.new_gcs_state("causal"))
        backend.reset_resolution()
        _sync(backend.config.device)


def describe(c: Scal3RBackendConfig) -> str:
    """A configuration's column description, from the choices it makes."""
    prep = (
        "batched preprocessing (preprocess_batch)"
        if c.preprocess == "batch"
        else "official CPU preprocessing (PIL, per frame)"
    )
    heads = "all heads incl. points" if c.point_head else "heads camera+depth"
    return f"{prep}, {heads}, {'bf16 autocast' if c.autocast_bf16 else 'fp32'}"


def variants(cfg: BenchConfig, device: str, bf16: bool) -> tuple[dict, list[str]]:
    """The configurations of our network to run, in column order ({name: backend config}),
    and notes on those left out. Default: ``optimised`` (the node's) and ``official_like``
    (the release's choices). ``--ablation``: from ``official_like`` to ``optimised``, each
    column adding one choice to the previous one."""
    official_like = Scal3RBackendConfig(
        device=device, autocast_bf16=False, point_head=True, preprocess="reference"
    )
    optimised = Scal3RBackendConfig(
        device=device, autocast_bf16=bf16, point_head=False, preprocess="batch"
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
    if not bf16:
        why = "--dtype float32" if cfg.dtype == "float32" else f"dtype auto on {device}"
        return out, [
            f"optimised (+ bf16 autocast) skipped: bf16 is off here ({why}), so it would "
            "repeat +depth_heads_only, which is then the optimised configuration "
            "(--dtype bfloat16 measures the bf16 step)"
        ]
    out["optimised"] = optimised  # = +depth_heads_only with bf16 autocast
    return out, []


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


def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({cpu})"
    return {
        "device": device,
        "device_name": dev_name,
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "scal3r_bench " + " ".join(sys.argv[1:]),
    }


def speedup(base: RunResult, new: RunResult) -> dict[str, float]:
    """How many times faster ``new`` is than ``base`` (> 1: ``new`` is faster)."""
    return {
        "fps_end_to_end": new.fps / base.fps,
        "network_time": base.network_ms_per_window / new.network_ms_per_window,
        "preprocess_time": base.preprocess_ms_per_frame / max(new.preprocess_ms_per_frame, 1e-9),
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    dev = resolve_device(cfg.device)
    device = str(dev)
    bf16 = use_bf16(cfg.dtype, dev)
    configs, notes = variants(cfg, device, bf16)
    drive = SyntheticDrive(
        SyntheticConfig(width=cfg.width, height=cfg.height, n_frames=cfg.frames, seed=cfg.seed)
    )
    frames = render_frames(drive, cfg.frames)
    model = build_model(cfg)
    backends = {k: Scal3RBackend(model, c) for k, c in configs.items()}
    no_ros = "--no-ros given" if not cfg.ros else ros_missing()
    messages = None if no_ros else MessageBuilder()
    if no_ros:
        notes.append(
            f"ROS messages: not measured ({no_ros}), shown as '{NO_ROS_CELL}'; "
            "the window total and the pose latency exclude the message stage"
        )
    warm_up(list(backends.values()), frames, min(cfg.chunk, 2))
    runs: dict[str, RunResult] = {}
    try:
        for name, backend in backends.items():
            runs[name] = run_pipeline(
                name, describe(backend.config), backend, frames, cfg, messages
            )
    finally:
        if messages is not None:
            messages.close()
    ours = list(runs)
    if cfg.official:
        del backends, model  # room for the official model
        gc.collect()
        runs["official"] = run_official(Path(cfg.official), cfg, frames, device)
        notes += [
            f"official: {m} is not installed; a stand-in that raises on use was "
            "registered (the official package imports it for image I/O only)"
            for m in runs["official"].extra["stand_ins"]
        ]
    # "A_vs_B": how many times faster B is than A. Default: every run vs optimised;
    # ablation: each column vs the previous one, then the first vs the last
    if cfg.ablation:
        best = ours[-1]
        pairs = [*zip(ours[:-1], ours[1:], strict=True), (ours[0], best)]
    else:
        best = "optimised"
        pairs = [(k, best) for k in ours if k != best]
    pairs += [(k, best) for k in runs if k not in ours]
    ratios = {f"{a}_vs_{b}": speedup(runs[a], runs[b]) for a, b in pairs}
    return {
        "machine": machine_info(device),
        "config": cfg.record(),
        "window_stride": cfg.chunk - cfg.overlap,
        "runs": {k: asdict(r) for k, r in runs.items()},
        "ratios": ratios,
        "notes": notes,
    }


# ================================================================== table
def _mb(x: float | None) -> str:
    return "n/a (CPU)" if x is None else f"{x / 2**20:.0f} MiB"


def _stage_ms(x: float | None) -> str:
    return NO_ROS_CELL if x is None else f"{x:.1f}"  # None: the message stage, without ROS


def format_table(result: dict[str, Any]) -> str:
    """Markdown table, one column per configuration."""
    m, c = result["machine"], result["config"]
    runs = result["runs"]
    names = list(runs)
    lines = [
        f"device: {m['device_name']}; torch {m['torch']}; {m['cpu_cores']} CPU cores; {m['date']}",
        f"model {c['model']} ({'checkpoint' if c['checkpoint'] else 'random weights'}), "
        f"{c['frames']} frames {c['width']}x{c['height']}, windows {c['chunk']}/{c['overlap']} "
        f"(stride {result['window_stride']}), camera {c['rate']:g} Hz, GCS causal",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, fn) -> None:
        cells = []
        for k in names:
            try:
                cells.append(fn(runs[k]))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("FPS end to end", lambda r: f"{r['fps']:.3g}")
    row("FPS network only", lambda r: f"{r['network_fps']:.3g}")
    row("preprocess [ms/frame]", lambda r: f"{r['preprocess_ms_per_frame']:.1f}")
    row("network [ms/window] (GCS/TTT inside)", lambda r: f"{r['network_ms_per_window']:.0f}")
    for s, label in (
        ("unproject", "unproject"),
        ("align", "alignment"),
        ("map", "map"),
        ("store", "store (overlap/loop geometry)"),
        ("loop", "loop detection"),
        ("graph", "pose graph"),
        ("publish", "ROS messages (build+publish)"),
        ("window_total", "window total (network..messages)"),
    ):
        row(f"{label} [ms/window]", lambda r, s=s: _stage_ms(r["stages_ms"][s]))
    row("pose latency mean [s] (computed)", lambda r: f"{r['latency_s']['mean_s']:.2f}")
    row("pose latency max [s] (computed)", lambda r: f"{r['latency_s']['max_s']:.2f}")
    row("peak GPU memory", lambda r: _mb(r["peak_gpu_bytes"]))
    row("host peak RSS (process so far)", lambda r: f"{r['host_peak_rss_bytes'] / 2**20:.0f} MiB")
    row("windows", lambda r: str(r["windows"]))
    row("map points", lambda r: str(r["map_points"]) if r["map_points"] else "-")
    lines.append("")
    for k, r in runs.items():
        lines.append(f"- {k}: {r['description']}")
    for k, v in result["ratios"].items():
        lines.append(
            f"- ratio {k}: end-to-end FPS x{v['fps_end_to_end']:.2f}, network time "
            f"x{v['network_time']:.2f}, preprocessing time x{v['preprocess_time']:.2f} "
            f"(> 1: {k.split('_vs_', 1)[1]} is faster)"
        )
    lines.append(
        f"- pose latency = stride/rate ({result['window_stride']}/{c['rate']:g} Hz = "
        f"{result['window_stride'] / c['rate']:.2f} s) + measured window time (windows after "
        "the first); computed from measurements, not timed on /tf"
    )
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def engine_memory(
    frames: int,
    width: int,
    height: int,
    chunk: int,
    overlap: int,
    checkpoints: list[int],
    max_points: int = 2_000_000,
) -> str:
    """Issue 5's engine benchmark: the oracle backend (no network) through the engine,
    host RSS at the checkpoints and the per-window engine overhead by stage."""
    from scal3r_ros.mapping.backends.factory import BackendSpec, make_backend
    from scal3r_ros.mapping.config import MapSection, OracleSection

    oracle = OracleSection(
        oracle_frames=frames,
        oracle_width=width,
        oracle_height=height,
        oracle_laps=road_speed_laps(frames),
    )
    built = make_backend(BackendSpec(kind="oracle", oracle=oracle))
    config = EngineConfig.from_sections(
        WindowSection(chunk_size=chunk, overlap=overlap), MapSection(max_points=max_points)
    )
    engine = build_engine(config, built.backend, built.loop_closure)
    drive = built.backend.drive
    stages: dict[str, list[float]] = {}
    rss: dict[int, float] = {}
    points: dict[int, int] = {}
    for i in tqdm(range(frames), desc="engine memory", unit="frame"):
        for ev in engine.push(drive.frame(i)):
            if isinstance(ev, StatsUpdate):
                for k, v in ev.timings.items():
                    stages.setdefault(k, []).append(v * 1e3)
        if i + 1 in checkpoints:
            rss[i + 1] = float(host_rss_bytes())
            points[i + 1] = len(engine.map)
    lines = [
        f"oracle engine, {width}x{height}, windows {chunk}/{overlap}, {frames} frames, "
        f"map cap {max_points} points",
        "",
        "| frames | host RSS [MiB] | growth vs first | map points |",
        "|---|---|---|---|",
    ]
    first = rss[min(rss)] if rss else 1.0
    for n, r in sorted(rss.items()):
        lines.append(f"| {n} | {r / 2**20:.0f} | {100 * (r / first - 1):+.1f} % | {points[n]} |")
    lines += ["", "| stage (per window) | median ms | p95 ms |", "|---|---|---|"]
    for k, v in stages.items():
        if k not in ("infer", "prepare"):  # the oracle stands in for the network
            lines.append(f"| {k} | {np.median(v):.1f} | {np.percentile(v, 95):.1f} |")
    return "\n".join(lines)


def conversions(repeats: int = 50) -> str:
    """Issue 6's adapter costs: what the image callback and a cloud publication cost."""
    from sensor_msgs.msg import CompressedImage

    from scal3r_ros.ros.conversions import (
        cloud_to_array,
        compressed_to_rgb,
        image_to_rgb,
        points_to_cloud,
        rgb_to_image,
    )

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (375, 1242, 3), np.uint8)
    msg = rgb_to_image(rgb)
    bgr = rgb_to_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    bgr.encoding = "bgr8"
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = CompressedImage(format="jpeg", data=buf.getvalue())
    xyz = rng.normal(size=(200_000, 3)).astype(np.float32)
    col = rng.integers(0, 256, (200_000, 3), np.uint8)
    conf = rng.random(200_000).astype(np.float32)
    cloud = points_to_cloud(xyz, col, conf)
    cases = {
        "image_to_rgb 1242x375 rgb8": lambda: image_to_rgb(msg),
        "image_to_rgb 1242x375 bgr8": lambda: image_to_rgb(bgr),
        "compressed_to_rgb 1242x375 jpeg": lambda: compressed_to_rgb(jpeg),
        "points_to_cloud 200k (x,y,z,rgb,conf)": lambda: points_to_cloud(xyz, col, conf),
        "cloud_to_array 200k": lambda: cloud_to_array(cloud),
    }
    lines = ["| operation | median ms | p95 ms |", "|---|---|---|"]
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        lines.append(f"| {name} | {np.median(times):.2f} | {np.percentile(times, 95):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--conversions",
        action="store_true",
        help="instead: time the node's message conversions (image callback, PointCloud2 build)",
    )
    p.add_argument(
        "--engine-memory",
        default=None,
        metavar="N1,N2,...",
        help="instead: oracle engine only (no network), host RSS after these "
        "frame counts and per-window engine overhead",
    )
    p.add_argument("--model", default="scal3r-1b", choices=("scal3r-1b", "tiny"))
    p.add_argument("--checkpoint", default=None, help="scal3r.pt (default: random weights)")
    p.add_argument("--frames", type=int, default=6)
    d = BenchConfig()
    p.add_argument("--chunk", type=int, default=d.chunk, help="window length [frames]")
    p.add_argument("--overlap", type=int, default=d.overlap, help="window overlap [frames]")
    p.add_argument("--width", type=int, default=1242)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype",
        default=d.dtype,
        choices=("auto", "float32", "bfloat16"),
        help="optimised run: auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument("--rate", type=float, default=10.0, help="camera rate for the latency [Hz]")
    p.add_argument("--official", default=None, help="official Scal3R checkout: also run it")
    p.add_argument("--no-baseline", action="store_true", help="skip the official-like run")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="official_like -> +batch_preprocess -> +depth_heads_only -> optimised, "
        "one choice per column, each ratio vs the previous column",
    )
    p.add_argument(
        "--no-ros",
        action="store_true",
        help="do not build/publish ROS messages (as without rclpy): that stage is not measured",
    )
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-points", type=int, default=2_000_000, help="--engine-memory: the map store's cap"
    )
    a = p.parse_args(argv)
    if problem := window_problem(a.chunk, a.overlap):
        p.error(problem)  # exit 2, the rule of the node and the offline tool
    if a.conversions:
        print(conversions())
        return 0
    if a.engine_memory:
        marks = sorted(int(x) for x in a.engine_memory.split(","))
        print(engine_memory(marks[-1], a.width, a.height, a.chunk, a.overlap, marks, a.max_points))
        return 0
    cfg = BenchConfig(
        model=a.model,
        checkpoint=a.checkpoint,
        frames=a.frames,
        window=WindowSection(chunk_size=a.chunk, overlap=a.overlap),
        backend=BackendSection(device=a.device, dtype=a.dtype),
        width=a.width,
        height=a.height,
        rate=a.rate,
        official=a.official,
        baseline=not a.no_baseline,
        seed=a.seed,
        ablation=a.ablation,
        ros=not a.no_ros,
    )
    try:
        result = run_bench(cfg)
    except (ValueError, RuntimeError, ImportError) as exc:
        print(f"[bench] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    table = format_table(result)
    result["table_markdown"] = table
    print(table)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
