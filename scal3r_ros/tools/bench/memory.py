"""Memory figures of the bench: host RSS, GPU memory (allocated and reserved), and issue
5's long-run engine benchmark (``scal3r_bench --engine-memory``).

Why both GPU figures: ``allocated`` is what tensors hold (the model's own footprint);
``reserved`` is what PyTorch's caching allocator took from the driver, which is what
another process on the same GPU can no longer use.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.config import WindowSection
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.events import StatsUpdate
from scal3r_ros.mapping.memory import host_rss_bytes
from scal3r_ros.mapping.sim.synthetic import road_speed_laps


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    """Wait for the GPU, so a time read afterwards includes its queued work."""
    if is_cuda(device):
        torch.cuda.synchronize()


def peak_rss_bytes() -> float:
    """The process's peak resident set so far (ru_maxrss, KiB on Linux)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def rss_bytes() -> float:
    """The process's resident set now."""
    return float(host_rss_bytes())


@dataclass
class GpuPeaks:
    """Peak GPU memory since `reset_gpu_peaks` (None on a CPU device)."""

    allocated_bytes: float | None
    reserved_bytes: float | None


def reset_gpu_peaks(device: str) -> None:
    """Start a run's peak from its own footprint: cached blocks of an earlier run are
    returned first, so ``reserved`` is this run's too."""
    if is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peaks(device: str) -> GpuPeaks:
    if not is_cuda(device):
        return GpuPeaks(None, None)
    torch.cuda.synchronize()
    return GpuPeaks(
        float(torch.cuda.max_memory_allocated()), float(torch.cuda.max_memory_reserved())
    )


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
            rss[i + 1] = rss_bytes()
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
