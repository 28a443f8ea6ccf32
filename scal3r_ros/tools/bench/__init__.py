"""`scal3r_bench`: end-to-end speed and memory of the whole mapping path, with baselines.

Frames (synthetic KITTI-size stream) -> the node's worker and engine (preprocessing,
network with causal GCS, Sim(3) alignment, map, loop closure) -> the node's ROS outputs
(TF, odometry, path, the window's PointCloud2; no subscribers). Random weights unless
``--checkpoint``: the cost is the same. Every figure is measured (``runs.py`` says how):
steady-state FPS and stage means (windows after the first), time outside any stage,
pose latency of frames arriving at ``--rate`` Hz with queueing, GPU memory allocated and
reserved, host RSS after start.

Columns: ``optimised`` (the node's configuration) and ``official_like`` (fp32, the
official CPU preprocessing, all heads) of OUR network on the same frames in the same
process; ``--ablation`` goes from one to the other a choice per column; ``--official
PATH`` adds the official forward (``official.py``); ``--workers serial,pipelined`` runs
the node's configuration on both worker modes and compares their poses.

``--network-ms T`` replaces the network by ``TimedBackend(<model>, T / 1000)`` (``--model
oracle`` or ``tiny``): every window's inference lasts T ms while the rest of the
pipeline is real, so the worker's overlap of network and post-processing is measured on
a CPU machine (columns: the worker modes).

Modules: ``runs`` (our pipeline's passes and figures), ``official`` (the official
forward), ``report`` (tables, ratios), ``targets`` (the device check's targets table),
``memory`` (RSS, GPU memory, ``--engine-memory``), ``messages`` (the ROS output stage),
``conversions`` (``--conversions``), ``pipeline`` (``python -m
scal3r_ros.tools.bench.pipeline``: serial vs pipelined window time over the replayed
oracle with a simulated network, T + P vs max(T, P)).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from scal3r_ros.mapping.backends.factory import resolve_device, use_bf16
from scal3r_ros.mapping.backends.scal3r import Scal3RBackend
from scal3r_ros.mapping.backends.timed import TimedBackend
from scal3r_ros.mapping.config import BackendSection, WindowSection
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive, road_speed_laps
from scal3r_ros.mapping.windowing import window_problem
from scal3r_ros.tools.bench.memory import engine_memory, rss_bytes
from scal3r_ros.tools.bench.messages import NO_ROS_CELL, MessageBuilder, ros_missing
from scal3r_ros.tools.bench.report import format_table, machine_info, speedup
from scal3r_ros.tools.bench.runs import (
    ENGINE_STAGES,
    STAGES,
    WORKER_MODES,
    BenchConfig,
    RunResult,
    build_model,
    default_workers,
    describe,
    fill_oracle_cache,
    pose_difference,
    render_frames,
    run_column,
    variants,
    warm_up,
)

__all__ = [
    "ENGINE_STAGES",
    "NO_ROS_CELL",
    "STAGES",
    "BenchConfig",
    "RunResult",
    "main",
    "ros_missing",
    "run_bench",
    "variants",
]

MODELS = ("scal3r-1b", "tiny", "oracle")


def _backends(cfg: BenchConfig, device: str, bf16: bool) -> tuple[dict[str, Any], dict, list]:
    """{variant: backend} in column order, {variant: description}, notes. A variant named
    "" is the single backend of ``--network-ms`` / ``--model oracle``, whose columns are
    named after the worker mode alone."""
    notes: list[str] = []
    if cfg.model == "oracle" or cfg.network_ms is not None:
        if cfg.model == "oracle":
            from scal3r_ros.mapping.backends.factory import BackendSpec, make_backend
            from scal3r_ros.mapping.config import OracleSection

            oracle = OracleSection(
                oracle_frames=cfg.frames,
                oracle_width=cfg.width,
                oracle_height=cfg.height,
                oracle_seed=cfg.seed,
                oracle_laps=road_speed_laps(cfg.frames),
            )
            inner = make_backend(BackendSpec(kind="oracle", oracle=oracle)).backend
            what = "oracle (the synthetic drive's depth and poses, network-like gauge)"
        else:
            no_baseline = replace(cfg, ablation=False, baseline=False)
            c = variants(no_baseline, device, bf16)[0]["optimised"]  # the node's choices
            if cfg.model == "tiny":
                inner = Scal3RBackend.from_config("tiny", c, seed=cfg.seed)
            else:
                inner = Scal3RBackend(build_model(cfg, device), c)
            what = f"{cfg.model} ({describe(c)})"
        if cfg.network_ms is None:
            return {"": inner}, {"": what}, notes
        notes.append(
            f"network: TimedBackend({cfg.model}, {cfg.network_ms:g} ms): every inference "
            f"(windows and loop windows) lasts at least {cfg.network_ms:g} ms, sleeping "
            "beside the rest of the pipeline as a GPU would; the rest is real"
        )
        return (
            {"": TimedBackend(inner, cfg.network_ms / 1e3)},
            {"": f"{what}, inference held to >= {cfg.network_ms:g} ms"},
            notes,
        )
    configs, notes = variants(cfg, device, bf16)
    shared = None  # the full network, shared by the columns that keep every head in fp32
    backends = {}
    for k, c in configs.items():
        if c.slim_model:  # its own network: heads dropped, weights held in bf16 (the node's)
            backends[k] = Scal3RBackend(build_model(cfg, device), c)
        else:
            shared = shared or build_model(cfg, device)
            backends[k] = Scal3RBackend(shared, c)
    return backends, {k: describe(c) for k, c in configs.items()}, notes


def _frames(cfg: BenchConfig, backends: dict[str, Any]) -> list:
    """The stream: the oracle's own drive when the oracle is the backend (its depth then
    rendered before any timing), else the synthetic drive of ``cfg``."""
    single = backends.get("")
    oracle = getattr(single, "inner", single)  # under --network-ms: the timed backend's
    drive = getattr(oracle, "drive", None)
    if drive is None:
        drive = SyntheticDrive(
            SyntheticConfig(width=cfg.width, height=cfg.height, n_frames=cfg.frames, seed=cfg.seed)
        )
        return render_frames(drive, cfg.frames)
    frames = render_frames(drive, cfg.frames)
    fill_oracle_cache(oracle, frames, cfg.chunk)
    return frames


def config_problem(cfg: BenchConfig) -> str | None:
    """What is wrong with ``cfg`` for a user to fix (None: nothing)."""
    timed = cfg.model == "oracle" or cfg.network_ms is not None
    if timed and (cfg.ablation or cfg.official):
        return "--ablation and --official need the real network: drop --network-ms / --model oracle"
    if cfg.ablation and not cfg.baseline:
        return "--ablation starts from official_like: drop --no-baseline"
    if cfg.official and cfg.model != "scal3r-1b":
        return "--official is supported for --model scal3r-1b only"
    if cfg.model == "oracle" and cfg.frames > 256:
        return "--model oracle: at most 256 frames (the oracle keeps 256 frames' depth)"
    if cfg.frames < cfg.chunk + cfg.stride:
        return (
            f"--frames {cfg.frames}: the steady figures need two full windows, "
            f"--frames >= chunk + stride = {cfg.chunk + cfg.stride}"
        )
    bad = [w for w in cfg.workers if w not in WORKER_MODES]
    if bad or not cfg.workers or len(set(cfg.workers)) != len(cfg.workers):
        return f"--workers takes distinct modes of {', '.join(WORKER_MODES)}, got {cfg.workers}"
    return None


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    dev = resolve_device(cfg.device)
    device = str(dev)
    bf16 = use_bf16(cfg.dtype, dev)
    if problem := config_problem(cfg):
        raise ValueError(problem)
    backends, descriptions, notes = _backends(cfg, device, bf16)
    rss_after_start = rss_bytes()  # the model built and on its device, no frame yet
    frames = _frames(cfg, backends)
    no_ros = "--no-ros given" if not cfg.ros else ros_missing()
    messages = None if no_ros else MessageBuilder()
    if no_ros:
        notes.append(
            f"ROS messages: not measured ({no_ros}), shown as '{NO_ROS_CELL}'; "
            "the window time and the pose latency exclude the message stage"
        )
    for backend in backends.values():
        warm_up(backend, frames, cfg)
    # the node's configuration: its column(s) get every worker mode and the latency pass
    node = "optimised" if "optimised" in backends else list(backends)[-1]
    runs: dict[str, RunResult] = {}
    streams: dict[str, Any] = {}
    columns: list[tuple[str, str, str]] = []  # (column, variant, worker mode)
    for variant in backends:
        modes = cfg.workers if variant == node else cfg.workers[:1]
        for mode in modes:
            many = variant == node and len(cfg.workers) > 1
            col = variant if not many else (f"{variant}/{mode}" if variant else mode)
            columns.append((col or mode, variant, mode))
    try:
        for col, variant, mode in columns:
            runs[col], streams[col] = run_column(
                col,
                f"{descriptions[variant]}; {mode} worker",
                backends[variant],
                frames,
                cfg,
                messages,
                mode,
                latency=cfg.latency and variant == node,
            )
    finally:
        if messages is not None:
            messages.close()
    node_cols = [c for c, v, _ in columns if v == node]
    for col in node_cols[1:]:  # the same frames and network: the same poses expected
        runs[col].extra["poses_vs"] = pose_difference(streams[node_cols[0]], streams[col])
        runs[col].extra["poses_vs"]["column"] = node_cols[0]
    del streams
    firsts = {v: c for c, v, _ in reversed(columns)}  # each variant's first column
    ours = [firsts[v] for v in backends]
    best = firsts[node]
    if cfg.official:
        del backends  # room for the official model
        gc.collect()
        from scal3r_ros.tools.bench.official import run_official

        runs["official"] = run_official(Path(cfg.official), cfg, frames, device)
        notes += [
            f"official: {m} is not installed; a stand-in that raises on use was "
            "registered (the official package imports it for image I/O only)"
            for m in runs["official"].extra["stand_ins"]
        ]
    # "A_vs_B": how many times faster B is than A. Default: every run vs the node's
    # column; ablation: each column vs the previous one, then the first vs the last
    if cfg.ablation:
        best = ours[-1]
        pairs = [*zip(ours[:-1], ours[1:], strict=True), (ours[0], best)]
    else:
        pairs = [(k, best) for k in ours if k != best]
    # the worker modes of the node's configuration: serial -> pipelined
    for col in node_cols[1:]:
        a, b = node_cols[0], col
        pairs.append((b, a) if runs[a].worker == "pipelined" else (a, b))
    pairs += [(k, best) for k in runs if k not in ours and k not in node_cols]
    result_runs = {k: asdict(r) for k, r in runs.items()}
    ratios = {f"{a}_vs_{b}": speedup(result_runs[a], result_runs[b]) for a, b in pairs}
    return {
        "machine": machine_info(device),
        "config": cfg.record(),
        "window_stride": cfg.stride,
        "memory": {"host_rss_after_start_bytes": rss_after_start},
        "runs": result_runs,
        "ratios": ratios,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scal3r_bench", description=__doc__.splitlines()[0])
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
    p.add_argument(
        "--model",
        default="scal3r-1b",
        choices=MODELS,
        help="oracle: the synthetic drive's truth in place of a network (with --network-ms)",
    )
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
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="camera rate of the latency pass [Hz] (0: no latency pass)",
    )
    p.add_argument("--no-latency", action="store_true", help="skip the paced latency pass (faster)")
    p.add_argument(
        "--network-ms",
        type=float,
        default=None,
        metavar="T",
        help="replace the network by TimedBackend(--model, T/1000): every inference lasts "
        ">= T ms, the rest of the pipeline is real (overlap on a CPU machine)",
    )
    p.add_argument(
        "--workers",
        default=None,
        help="worker modes of the node's configuration, comma-separated (serial, pipelined), "
        "or all (those this build has, the node's first); default: the node's mode, all "
        "with --network-ms",
    )
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
    if a.network_ms is not None and not a.network_ms >= 0:
        p.error(f"--network-ms must be >= 0, got {a.network_ms:g}")
    if a.rate < 0:
        p.error(f"--rate must be >= 0, got {a.rate:g}")
    if a.frames < 1:
        p.error(f"--frames must be >= 1, got {a.frames}")
    if a.conversions:
        from scal3r_ros.tools.bench.conversions import conversions

        print(conversions())
        return 0
    if a.engine_memory:
        try:
            marks = sorted(int(x) for x in a.engine_memory.split(","))
        except ValueError:
            p.error(f"--engine-memory takes frame counts N1,N2,..., got {a.engine_memory!r}")
        print(engine_memory(marks[-1], a.width, a.height, a.chunk, a.overlap, marks, a.max_points))
        return 0
    if a.workers is None:
        workers = default_workers(both=a.network_ms is not None or a.model == "oracle")
    elif a.workers == "all":
        workers = default_workers(both=True)[::-1]  # the node's (pipelined) first
    else:
        workers = tuple(w.strip() for w in a.workers.split(",") if w.strip())
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
        network_ms=a.network_ms,
        workers=workers,
        latency=not a.no_latency,
    )
    if problem := config_problem(cfg):
        p.error(problem)
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
