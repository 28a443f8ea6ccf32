"""`scal3r_soak`: a long synthetic stream through the node, cross-process; is memory flat?

Starts the mapping node (oracle backend by default, ``--tiny`` for the tiny random
network) and the synthetic camera as separate processes, as ``scal3r_demo`` does, and
samples over time into ``soak.csv``: frames received, processed, dropped, queue length,
pose latency (wall time from the camera's publishing schedule to the newest placed frame
in the node's ``~/status``), the node process's RSS (``/proc/<pid>/status``) and
map points. At the end it saves the map and trajectory through the node's service and
checks:

- host RSS growth after warm-up < 10% (median level over the last 20 % of the frames
  against the 20 % after warm-up; the map store's cap in force: ``--max-points``). Only
  judged when the warm-up covers the filling of the node's bounded stores (the loop
  descriptor store fills for its first 2000 frames): a shorter run reports "n/a: run too
  short" for this check, since its growth is the stores filling up, not a leak;
- no frame dropped (meaningful when ``--rate`` is below the node's processing rate);
- the camera published and the node received every frame;
- the saved trajectory has one line per processed frame (the save maps the frames
  after the last full window first), and the map is non-empty and within the cap.

Writes ``soak.csv``, ``soak.png`` and ``soak_summary.json`` into ``--out``; exit code 1
when a check fails (a check that does not apply, ``null`` in the summary, is no failure).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scal3r_ros.mapping.config import WindowSection
from scal3r_ros.mapping.loop_closure import LoopDetectorConfig
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, road_speed_laps
from scal3r_ros.mapping.windowing import window_problem
from scal3r_ros.tools.processes import SyntheticSession, rss_bytes

COLUMNS = (
    "wall_s",
    "frames_received",
    "frames_processed",
    "queue_length",
    "frames_dropped",
    "newest_placed_frame",
    "latency_ms",
    "node_rss_mb",
    "map_points",
    "chunks",
)


@dataclass
class SoakConfig:
    frames: int = 20000
    rate: float = 10.0  # camera rate [frames/s]; keep it below the node's processing rate
    max_points: int = 200_000  # the map store's cap
    out: str = "output/soak"
    tiny: bool = False  # tiny random network instead of the oracle
    # the node's window section (the low-latency 16/8 layout: a soak runs for hours on a CPU)
    window: WindowSection = field(
        default_factory=lambda: WindowSection(chunk_size=16, overlap=8, gcs_mode="causal")
    )
    period: float = 1.0  # sampling period [s]
    warmup: float = 0.2  # fraction of the frames before RSS growth is measured
    max_growth: float = 0.10
    timeout: float = 0.0  # seconds for the whole stream; 0: 3 x frames / rate + 300
    domain_id: int | None = None  # ROS_DOMAIN_ID for all three processes (None: inherited)
    stall_s: float = 120.0  # fail when frames wait but none is processed for this long
    params: tuple[str, ...] = ()  # extra node parameters, NAME:=VALUE
    settle_s: float = 10.0  # after the camera exits: wait this long for late frames
    laps: float = 0.0  # laps of the synthetic loop; 0: road speed (the demo's 1.15 per 300)

    @property
    def drive_laps(self) -> float:
        return self.laps or road_speed_laps(self.frames)


def store_fill_frames() -> int:
    """Frames until the node's slowest-filling bounded store is full: the loop-retrieval
    descriptor store (the node's thumbnail detector: ``capacity`` descriptors, one every
    ``db_stride`` frames; it is thinned, not grown, after that). The map store's cap and
    the frame store's RAM window (128 frames) fill sooner at the soak's image size."""
    det = LoopDetectorConfig.thumbnail()
    return det.capacity * max(1, det.db_stride)


def frames_needed_for_growth(warmup: float) -> int:
    """Shortest run whose warm-up (``warmup`` x frames) covers `store_fill_frames`: before
    that, RSS grows by design and the growth rule cannot tell a leak from it."""
    return int(np.ceil(store_fill_frames() / warmup)) if warmup > 0 else 2**62


def growth_verdict(
    growth: float | None, frames: int, warmup: float, max_growth: float
) -> tuple[bool | None, str]:
    """(passed, text) of the RSS growth check; passed is None when it does not apply."""
    need = frames_needed_for_growth(warmup)
    if frames < need:
        return None, (
            f"run too short ({frames} frames < {need} needed: the "
            f"{100 * warmup:g} % warm-up must cover the bounded stores' filling, "
            f"{store_fill_frames()} frames)"
        )
    if growth is None:
        return False, "too few samples after warm-up"
    return growth < max_growth, f"{100 * growth:.1f} % (limit {100 * max_growth:g} %)"


def rss_growth(rows: list[dict], n_frames: int, warmup: float) -> tuple[float, float, float]:
    """(growth fraction, RSS level after warm-up, max RSS after warm-up) in MiB.

    Growth compares levels, not single samples: the median RSS over the 20 % of frames
    after warm-up against the median over the last 20 %. Each window allocates and frees
    its working set (RSS swings by ~100 MiB within a window), so a peak-against-first-sample
    ratio measures that swing, not growth; the peak is still returned and reported.
    """
    after = [r for r in rows if r["frames_processed"] >= warmup * n_frames]
    early = [r["node_rss_mb"] for r in after if r["frames_processed"] < (warmup + 0.2) * n_frames]
    late = [r["node_rss_mb"] for r in after if r["frames_processed"] >= 0.8 * n_frames]
    if len(early) < 2 or len(late) < 2:
        raise RuntimeError("too few samples after warm-up to judge RSS growth")
    base = float(np.median(early))
    peak = max(r["node_rss_mb"] for r in after)
    return float(np.median(late)) / base - 1.0, base, peak


def fresh_status(session: SyntheticSession, limit: float = 60.0):
    """The node's status from after the save: the save maps the stream's tail (windows,
    loop closures, map points change) and the status in hand may predate it. The second
    status received after the save's response was published after it (one may be in
    flight from before)."""
    seen: list = []

    def new() -> bool:
        if session.status and (not seen or session.status[-1] is not seen[-1]):
            seen.append(session.status[-1])
        return len(seen) >= 3  # the one in hand, then two new ones

    session.spin_until(new, limit, "waiting for the status after the save")
    return seen[-1]


def camera_published(log: Path) -> int:
    """Frames the camera says it published (its last log line); 0 when it did not finish.
    (The watcher does not subscribe to the images: the camera starts streaming when its
    first subscriber appears, and that must be the node.)"""
    m = re.search(r"published (\d+) frames", log.read_text())
    return int(m.group(1)) if m else 0


def ply_vertices(path: Path) -> int:
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"element vertex"):
                return int(line.split()[2])
            if line.strip() == b"end_header":
                break
    raise ValueError(f"{path}: no vertex count in the PLY header")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["frames_processed"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    series = (
        ("node_rss_mb", "node RSS [MiB]"),
        ("queue_length", "queue [frames]"),
        ("latency_ms", "latency [ms]"),
        ("map_points", "map points"),
    )
    for ax, (key, label) in zip(axes, series, strict=True):
        ax.plot(x, [r[key] for r in rows], lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("frames processed")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_soak(cfg: SoakConfig) -> dict:
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.domain_id is not None:  # keep other ROS graphs on this machine out
        os.environ["ROS_DOMAIN_ID"] = str(cfg.domain_id)
    backend = "tiny" if cfg.tiny else "oracle"
    params = {
        "backend": backend,
        "max_points": str(cfg.max_points),
        "chunk_size": str(cfg.window.chunk_size),
        "overlap": str(cfg.window.overlap),
    }
    params.update(p.split(":=", 1) for p in cfg.params)
    session = SyntheticSession(out, cfg.frames, params, "scal3r_soak", laps=cfg.drive_laps)
    node = session.node
    rows: list[dict] = []
    timeout = cfg.timeout or 3 * cfg.frames / cfg.rate + 300
    t0 = time.monotonic()
    next_sample = time.monotonic()
    progress = (-1, time.monotonic())  # (frames processed, when it last changed)
    bar = tqdm(total=cfg.frames, desc="soak", unit="frame")

    def sample() -> None:
        """Record a CSV row each period; fail when the node stops processing."""
        nonlocal next_sample, progress
        if not session.status:
            return
        st = session.status[-1]
        if time.monotonic() >= next_sample:
            next_sample += cfg.period
            rows.append(_row(st, node.pid, t0))
            bar.update(rows[-1]["frames_processed"] - bar.n)
        if st.frames_processed != progress[0]:
            progress = (st.frames_processed, time.monotonic())
        elif (
            st.frames_received > st.frames_processed + st.frames_dropped
            and time.monotonic() - progress[1] > cfg.stall_s
        ):
            log = (out / "node.log").read_text()[-2000:]
            raise RuntimeError(
                f"the node stopped processing ({st.frames_processed} "
                f"frames) while streaming:\n{log}"
            )

    try:
        session.start(cfg.rate)
        t0 = next_sample = time.monotonic()
        session.spin_until(lambda: session.streamed(cfg.settle_s), timeout, "streaming", sample)
        rows.append(_row(session.status[-1], node.pid, t0))
        saved = session.save("soak", 300)
        final = fresh_status(session)
    finally:
        bar.close()
        code = session.close()

    estimate_latency(rows, cfg.rate)
    with open(out / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    title = (
        f"soak: {cfg.frames} frames at {cfg.rate:g} Hz, {backend} backend, map cap {cfg.max_points}"
    )
    plot(rows, out / "soak.png", title)

    published = camera_published(out / "camera.log")
    lat = [r["latency_ms"] for r in rows if np.isfinite(r["latency_ms"])]
    processed = int(max(r["frames_processed"] for r in rows))
    try:
        growth, rss_base, rss_peak = rss_growth(rows, processed, cfg.warmup)
    except RuntimeError:  # too few samples (a short run)
        growth, rss_base, rss_peak = None, float("nan"), float("nan")
    growth_ok, growth_text = growth_verdict(growth, processed, cfg.warmup, cfg.max_growth)
    expected = int(final.frames_processed)  # the save flushes: every processed frame
    traj = out / "soak" / "trajectory_tum.txt"
    traj_lines = len(np.loadtxt(traj, ndmin=2)) if saved.success and traj.exists() else 0
    ply = out / "soak" / "map.ply"
    map_points = ply_vertices(ply) if saved.success and ply.exists() else 0
    checks = {
        "rss_growth_below_limit": growth_ok,
        "no_drops": int(final.frames_dropped) == 0,
        "all_frames_published_and_received": published == cfg.frames
        and int(final.frames_received) == cfg.frames,
        "trajectory_complete": traj_lines == expected,
        "map_saved_within_cap": 0 < map_points <= cfg.max_points,
        "node_exit_clean": code == 0,
    }
    summary = {
        "config": asdict(cfg),
        "laps": round(cfg.drive_laps, 2),
        "backend": final.backend,
        "wall_s": round(rows[-1]["wall_s"], 1),
        "frames_published": published,
        "frames_received": int(final.frames_received),
        "frames_processed": int(final.frames_processed),
        "frames_dropped": int(final.frames_dropped),
        "chunks": int(final.chunks_processed),
        "loop_closures": int(final.loop_closures),
        "rss_after_warmup_mb": round(rss_base, 1),
        "rss_peak_after_warmup_mb": round(rss_peak, 1),
        "rss_growth_after_warmup": None if growth is None else round(growth, 4),
        "rss_growth_check": growth_text,
        "latency_ms_median": float(np.median(lat)) if lat else float("nan"),
        "latency_ms_max": float(max(lat)) if lat else float("nan"),
        "queue_max": int(max(r["queue_length"] for r in rows)),
        "trajectory_lines": traj_lines,
        "frames_placed_expected": expected,
        "map_points_saved": map_points,
        "save_message": saved.message,
        "node_exit_code": code,
        "checks": checks,
        "passed": all(v is not False for v in checks.values()),
        "files": [str(out / n) for n in ("soak.csv", "soak.png", "soak_summary.json")],
    }
    (out / "soak_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _frame_index(stamp) -> int:
    """Drive frame index of a synthetic stamp (the drive's clock: ``fps``, ``start``)."""
    c = SyntheticConfig()
    ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return int(round((ns - c.start_stamp_ns) * c.fps / 1e9)) if ns >= c.start_stamp_ns else -1


def estimate_latency(rows: list[dict], rate: float) -> None:
    """Pose latency [ms] per sample, in wall time: sample time minus the time the camera
    published the newest placed frame. The camera publishes frame i at ``t0 + i / rate``;
    ``t0`` is bounded from the samples (a frame counted as received was published before
    the sample). Resolution: the node's status period and the sampling period."""
    got = [r["wall_s"] - (r["frames_received"] - 1) / rate for r in rows if r["frames_received"]]
    if not got:
        return
    t0 = min(got)
    for r in rows:
        if r["newest_placed_frame"] >= 0:
            r["latency_ms"] = round(1e3 * (r["wall_s"] - t0 - r["newest_placed_frame"] / rate), 1)


def _row(st, pid: int, t0: float) -> dict:
    try:
        rss = rss_bytes(pid) / 2**20
    except (OSError, ValueError):  # the node is exiting
        rss = float("nan")
    return {
        "wall_s": round(time.monotonic() - t0, 2),
        "frames_received": int(st.frames_received),
        "frames_processed": int(st.frames_processed),
        "queue_length": int(st.queue_length),
        "frames_dropped": int(st.frames_dropped),
        "newest_placed_frame": _frame_index(st.header.stamp),
        "latency_ms": float("nan"),  # filled in by estimate_latency
        "node_rss_mb": round(rss, 1),
        "map_points": int(st.map_points),
        "chunks": int(st.chunks_processed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SoakConfig()
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--rate", type=float, default=d.rate, help="camera rate [frames/s]")
    p.add_argument("--max-points", type=int, default=d.max_points, help="map cap [points]")
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--tiny", action="store_true", help="tiny random network, not the oracle")
    p.add_argument("--chunk", type=int, default=d.window.chunk_size, help="frames per window")
    p.add_argument("--overlap", type=int, default=d.window.overlap, help="frames shared")
    p.add_argument("--period", type=float, default=d.period, help="sampling period [s]")
    p.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="fraction of frames before RSS growth is measured",
    )
    p.add_argument("--timeout", type=float, default=d.timeout, help="0: 3 x frames/rate + 300")
    p.add_argument(
        "--domain-id",
        type=int,
        default=None,
        help="ROS_DOMAIN_ID of node, camera, watcher (default: inherited)",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=d.stall_s,
        help="fail when no frame is processed for this long [s]",
    )
    p.add_argument(
        "--laps",
        type=float,
        default=d.laps,
        help="laps of the synthetic ~170 m loop over all frames; 0: road speed, "
        "~0.65 m a frame (the demo's)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter (repeatable)",
    )
    a = p.parse_args(argv)
    if problem := window_problem(a.chunk, a.overlap):
        p.error(problem)
    cfg = SoakConfig(
        frames=a.frames,
        rate=a.rate,
        max_points=a.max_points,
        out=a.out,
        tiny=a.tiny,
        window=replace(d.window, chunk_size=a.chunk, overlap=a.overlap),
        period=a.period,
        warmup=a.warmup,
        timeout=a.timeout,
        domain_id=a.domain_id,
        stall_s=a.stall,
        params=tuple(a.param),
        laps=a.laps,
    )
    try:
        s = run_soak(cfg)
    except (RuntimeError, TimeoutError) as exc:
        print(f"[soak] failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[soak] interrupted", file=sys.stderr)
        return 130
    print(
        f"[soak] {s['frames_processed']}/{cfg.frames} frames processed in {s['wall_s']} s, "
        f"{s['frames_dropped']} dropped, queue max {s['queue_max']}, latency median "
        f"{s['latency_ms_median']:.0f} ms; {s['laps']} laps, {s['loop_closures']} loop "
        f"closures"
    )
    growth = s["rss_growth_after_warmup"]
    print(
        f"[soak] node RSS level {s['rss_after_warmup_mb']} MiB after warm-up, growth to the "
        f"last 20 % {'-' if growth is None else f'{100 * growth:.1f}%'} (peak within a "
        f"window {s['rss_peak_after_warmup_mb']} MiB); trajectory {s['trajectory_lines']}/"
        f"{s['frames_placed_expected']} frames; "
        f"map {s['map_points_saved']} points (cap {cfg.max_points})"
    )
    for k, ok in s["checks"].items():
        verdict = "n/a " if ok is None else "PASS" if ok else "FAIL"
        why = f": {s['rss_growth_check']}" if k == "rss_growth_below_limit" else ""
        print(f"[soak] {verdict} {k}{why}")
    print(f"[soak] files: {', '.join(s['files'])}")
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
