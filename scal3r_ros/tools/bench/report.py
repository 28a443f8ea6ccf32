"""Tables and ratios of a bench result, and the issue's targets table of a device check.

``python -m scal3r_ros.tools.bench.report --main A.json --lowlatency B.json --parity LOG``
prints the targets table `scripts/device_check.sh` ends with (device, date, each target,
its measured value, met or not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
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


# ================================================================== issue 14 targets
def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def targets_table(main: dict[str, Any], low: dict[str, Any] | None, parity: str | None) -> str:
    """The issue's GPU targets, each with its measured value (main: 60/30 run with the
    official forward and both worker modes; low: the 16/8 preset; parity: pytest log)."""
    m, c = main["machine"], main["config"]
    runs = main["runs"]
    ours = [k for k, r in runs.items() if r["worker"] != "offline"]
    node = ours[0] if ours else None
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, goal: str, value: float | None, ok: bool | None, fmt: str) -> None:
        shown = "n/a" if value is None else fmt.format(value)
        rows.append((what, goal, shown, "-" if ok is None else ("yes" if ok else "NO")))

    r = runs.get(node) if node else None
    stride = main["window_stride"]
    win = f"{c['chunk']}/{c['overlap']}"
    add(f"end-to-end FPS, steady ({win})", ">= 40", r and r["fps"], r and r["fps"] >= 40, "{:.1f}")
    ratio = next((v for k, v in main["ratios"].items() if k.startswith("official_vs_")), None)
    x = ratio and ratio["fps_end_to_end"]
    add("ratio vs official forward, same run", ">= 6x", x, None if x is None else x >= 6, "x{:.2f}")
    lat = r["latency_s"].get("max_s") if r else None
    goal = stride / c["rate"] + 1.0
    add(
        f"pose latency max, measured, queueing ({win})",
        f"<= {goal:.1f} s",
        lat,
        None if lat is None else lat <= goal,
        "{:.2f} s",
    )
    lr = None
    if low:
        low_ours = [k for k, v in low["runs"].items() if v["worker"] != "offline"]
        lr = low["runs"][low_ours[0]] if low_ours else None
    lwin = f"{low['config']['chunk']}/{low['config']['overlap']}" if low else "16/8"
    add(f"{lwin} preset FPS, steady", ">= 25", lr and lr["fps"], lr and lr["fps"] >= 25, "{:.1f}")
    llat = lr["latency_s"].get("max_s") if lr else None
    add(
        f"{lwin} preset pose latency max",
        "<= 1.5 s",
        llat,
        None if llat is None else llat <= 1.5,
        "{:.2f} s",
    )
    alloc = r["peak_gpu_bytes"] if r else None
    gib = None if alloc is None else alloc / 2**30
    add("peak GPU memory allocated", "<= 7.5 GiB", gib, gib and gib <= 7.5, "{:.2f} GiB")
    res = r and r["peak_gpu_reserved_bytes"]
    rows.append(("peak GPU memory reserved", "(reported)", _gib(res) if res else "n/a", "-"))
    rss = main["memory"]["host_rss_after_start_bytes"]
    rows.append(("host RSS after start", "<= 4 GB", f"{rss / 1e9:.2f} GB", _yes(rss <= 4e9)))
    if parity is not None:
        rows.append(("parity fixtures, fp32", "all pass", parity, _yes(_passed(parity))))
    diffs = [v["extra"]["poses_vs"] for v in runs.values() if "poses_vs" in v.get("extra", {})]
    if diffs:
        d = diffs[0]
        same = d["missing"] == 0 and d["max_translation"] == 0 and d["max_rotation_deg"] == 0
        rows.append(
            (
                "serial vs pipelined poses",
                "same",
                f"max {d['max_translation']:.3g} / {d['max_rotation_deg']:.3g} deg over "
                f"{d['frames']:.0f} frames",
                _yes(same),
            )
        )
    else:
        rows.append(("serial vs pipelined poses", "same", "not run (one worker mode)", "-"))
    lines = [
        f"device: {m['device_name']}; {m['date']}; torch {m['torch']}",
        f"model {c['model']}, {c['width']}x{c['height']}, dtype {c['dtype']}, camera "
        f"{c['rate']:g} Hz; main {win} ({node}), low-latency preset "
        f"{lwin + ' run' if low else 'not run'}; goals for 60/30 and 16/8 on one H100/H200",
        "",
        "| target (issue 14) | goal | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {v} | {ok} |" for a, b, v, ok in rows]
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _passed(summary: str) -> bool:
    return bool(re.search(r"\d+ passed", summary)) and not re.search(
        r"\d+ (failed|errors?)|no tests ran", summary
    )


def pytest_summary(log: Path) -> str:
    """The last pytest summary line of ``log`` ("no pytest summary" if none)."""
    pattern = r"[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran"
    found = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(pattern, ln)]
    return found[-1].strip("= ") if found else "no pytest summary"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="issue 14's targets table of a device check")
    p.add_argument("--main", required=True, help="the 60/30 bench JSON")
    p.add_argument("--lowlatency", default=None, help="the 16/8 bench JSON")
    p.add_argument("--parity", default=None, help="pytest log of the parity fixtures")
    a = p.parse_args(argv)
    try:
        main_result = json.loads(Path(a.main).read_text())
        low = json.loads(Path(a.lowlatency).read_text()) if a.lowlatency else None
        parity = pytest_summary(Path(a.parity)) if a.parity else None
    except (OSError, ValueError) as exc:
        print(f"[bench report] cannot read the results: {exc}", file=sys.stderr)
        return 2
    print(targets_table(main_result, low, parity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
