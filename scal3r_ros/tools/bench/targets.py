"""Issue 14's targets table of a device check: each GPU target, its goal, the measured
value and whether it is met, with the device and the date.

``python -m scal3r_ros.tools.bench.targets --main A.json --lowlatency B.json --parity LOG``
is what `scripts/device_check.sh` ends with (A, B: ``scal3r_bench --json`` of the 60/30
run and of the 16/8 preset; LOG: the pytest log of the parity fixtures).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


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
    p = argparse.ArgumentParser(
        prog="python -m scal3r_ros.tools.bench.targets",
        description="issue 14's targets table of a device check",
    )
    p.add_argument("--main", required=True, help="the 60/30 bench JSON")
    p.add_argument("--lowlatency", default=None, help="the 16/8 bench JSON")
    p.add_argument("--parity", default=None, help="pytest log of the parity fixtures")
    a = p.parse_args(argv)
    try:
        main_result = json.loads(Path(a.main).read_text())
        low = json.loads(Path(a.lowlatency).read_text()) if a.lowlatency else None
        parity = pytest_summary(Path(a.parity)) if a.parity else None
    except (OSError, ValueError) as exc:
        print(f"[bench targets] cannot read the results: {exc}", file=sys.stderr)
        return 2
    print(targets_table(main_result, low, parity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
