"""Tables and ratios of a bench result (the targets table of a device check: targets.py)."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from scal3r_ros.tools.bench.messages import NO_ROS_CELL

STAGE_LABELS = (
    ("preprocess", "preprocess (on the worker)"),
    ("infer", "network (GCS/TTT inside)"),
    ("unproject", "unproject"),
    ("align", "alignment"),
    ("map", "map"),
    ("store", "store (overlap/loop geometry)"),
    ("loop", "loop closure (retrieval + verification)"),
    ("graph", "pose graph"),
    ("publish", "ROS messages (build+publish)"),
)


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


def speedup(base: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    """How many times faster ``new`` is than ``base`` (> 1: ``new`` is faster); runs as
    their result dicts. FPS: each run's steady end-to-end FPS."""
    return {
        "fps_end_to_end": new["fps"] / base["fps"],
        "network_time": base["network_ms_per_window"] / new["network_ms_per_window"],
        "preprocess_time": base["preprocess_ms_per_frame"]
        / max(new["preprocess_ms_per_frame"], 1e-9),
    }


def _mib(x: float | None) -> str:
    return "n/a (CPU)" if x is None else f"{x / 2**20:.0f} MiB"


def _ms(x: float | None) -> str:
    return NO_ROS_CELL if x is None else f"{x:.1f}"  # None: the message stage, without ROS


def format_table(result: dict[str, Any]) -> str:
    """Markdown table, one column per run, then the notes that say what each figure is."""
    m, c = result["machine"], result["config"]
    runs = result["runs"]
    names = list(runs)
    stride = result["window_stride"]
    net = f", network replaced by {c['network_ms']:g} ms a window" if c.get("network_ms") else ""
    weights = "checkpoint" if c["checkpoint"] else "random weights"
    if c["model"] == "oracle":
        weights = "the synthetic drive's depth and poses"
    lines = [
        f"device: {m['device_name']}; torch {m['torch']}; {m['cpu_cores']} CPU cores; {m['date']}",
        f"model {c['model']} ({weights}){net}, "
        f"{c['frames']} frames {c['width']}x{c['height']}, windows {c['chunk']}/{c['overlap']} "
        f"(stride {stride}), camera {c['rate']:g} Hz, GCS causal",
        f"host RSS after start (model on its device, before any frame): "
        f"{result['memory']['host_rss_after_start_bytes'] / 2**20:.0f} MiB",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, fn) -> None:
        cells = []
        for k in names:
            try:
                cells.append(fn(runs[k]))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("worker", lambda r: r["worker"])
    row("FPS end to end, steady", lambda r: f"{r['fps']:.3g}")
    row("FPS whole run (first window incl.)", lambda r: f"{r['fps_wall']:.3g}")
    row("FPS network only, steady", lambda r: f"{r['network_fps']:.3g}")
    row("window time, steady [ms]", lambda r: f"{r['steady_window_ms']:.0f}")
    row("preprocess [ms/frame]", lambda r: f"{r['preprocess_ms_per_frame']:.1f}")
    for s, label in STAGE_LABELS:
        row(f"{label} [ms/window]", lambda r, s=s: _ms(r["stages_ms"][s]))
    known = {s for s, _ in STAGE_LABELS}
    extra = [s for r in runs.values() for s in r.get("stages_ms", {}) if s not in known]
    for s in dict.fromkeys(extra):
        row(f"{s} [ms/window]", lambda r, s=s: _ms(r["stages_ms"][s]))
    row("outside any stage [ms/window]", lambda r: f"{r['outside_ms']:.1f}")
    row("network + rest (serial bound) [ms]", lambda r: f"{r['overlap_ms']['sum']:.0f}")
    row("max(network, rest) (overlap bound) [ms]", lambda r: f"{r['overlap_ms']['max']:.0f}")
    row(
        "loop verifications (network ms each)",
        lambda r: f"{r['loops']['verifications']:.0f} ({r['loops']['verify_network_ms']:.0f})",
    )
    row("pose latency mean [s] (measured)", lambda r: f"{r['latency_s']['mean_s']:.2f}")
    row("pose latency max [s] (measured)", lambda r: f"{r['latency_s']['max_s']:.2f}")
    row("queue max [frames] (latency pass)", lambda r: f"{r['latency_s']['queue_max']:.0f}")
    row("peak GPU memory allocated", lambda r: _mib(r["peak_gpu_bytes"]))
    row("peak GPU memory reserved", lambda r: _mib(r["peak_gpu_reserved_bytes"]))
    row("host peak RSS (process so far)", lambda r: f"{r['host_peak_rss_bytes'] / 2**20:.0f} MiB")
    row("windows (steady)", lambda r: f"{r['windows']} ({r['steady_windows']})")
    row("map points", lambda r: str(r["map_points"]) if r["map_points"] else "-")
    row(
        "poses vs first column: max translation / rotation",
        lambda r: (
            f"{r['extra']['poses_vs']['max_translation']:.3g} / "
            f"{r['extra']['poses_vs']['max_rotation_deg']:.3g} deg"
        ),
    )
    lines.append("")
    for k, r in runs.items():
        lines.append(f"- {k}: {r['description']}")
    for k, v in result["ratios"].items():
        lines.append(
            f"- ratio {k}: end-to-end FPS x{v['fps_end_to_end']:.2f}, network time "
            f"x{v['network_time']:.2f}, preprocessing time x{v['preprocess_time']:.2f} "
            f"(> 1: {k.split('_vs_', 1)[1]} is faster)"
        )
    lines += [
        "- steady: the full windows after the first (window 0 waits for a whole chunk and "
        "pays first-call costs); FPS = their new frames / their wall time out of the "
        "worker; stage rows are means over the same windows",
        "- outside any stage: steady window time minus the stage means (the worker's own "
        "time, queue hand-offs; negative when stages overlap in a pipelined worker)",
        f"- pose latency: frames submitted at {c['rate']:g} Hz (a camera's arrival times), "
        "from arrival to the pose out of the node's outputs, frames of the steady windows, "
        f"queueing included (a window fills in stride/rate = {stride / c['rate']:.2f} s)"
        if c["rate"] > 0
        else "- pose latency: not measured (--rate 0)",
    ]
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines)
