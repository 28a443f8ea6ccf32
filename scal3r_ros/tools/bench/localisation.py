"""Localisation mode over a long run: does memory stay flat? (issue 17)

``python -m scal3r_ros.tools.bench.localisation`` maps lap 1 of the synthetic loop (oracle
backend with in-window drift, loop closure on), saves it as a session, reads it back, then
drives many more laps from a third of the way round lap 2 twice, from the same session:
in ``localisation`` mode (the map and graph stay as loaded) and, as the baseline measured
in the same run, in ``mapping`` mode (the map grows with the drive). Every ``--sample``
frames it records the process's RSS (after handing freed heap pages back), the map's
points and the engine's stores (``MappingEngine.state_sizes``). Prints a table per mode
and the growth of each figure from the end of the warm-up (``--warmup-laps``) to the
end; ``--json PATH`` writes the samples (docs/bench/localisation_cpu_oracle.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import RelocalisationUpdate
from scal3r_ros.mapping.loop_closure import LoopClosure, LoopClosureConfig, LoopDetectorConfig
from scal3r_ros.mapping.memory import host_rss_bytes, release_freed_memory
from scal3r_ros.mapping.session import SessionData, read_session, write_session
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.tools.bench.report import machine_info

MODES = ("localisation", "mapping")


@dataclass
class LocalisationBenchConfig:
    lap: int = 110  # frames per lap of the loop (the relocalisation tests' drive)
    laps: int = 20  # laps driven after the load (the first from a third of the way round)
    warmup_laps: int = 2  # growth is measured from here to the end
    sample: int = 100  # frames between samples
    drift_deg: float = 0.15  # oracle in-window yaw drift per frame


@dataclass
class Sample:
    frames: int  # frames pushed since the load
    rss_mb: float
    map_points: int
    stored_entries: int  # sum of the engine's store sizes, map points excepted
    state: str  # relocalisation state


def make_engine(drive: SyntheticDrive, cfg: LocalisationBenchConfig) -> MappingEngine:
    loops = LoopClosure(LoopClosureConfig(detector=LoopDetectorConfig(use_nms=False)))
    oracle = OracleConfig(drift_yaw_deg_per_frame=cfg.drift_deg, seed=3)
    return MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, oracle), loops)


def lap_one(drive: SyntheticDrive, cfg: LocalisationBenchConfig, folder: Path) -> SessionData:
    engine = make_engine(drive, cfg)
    for i in range(cfg.lap):
        engine.push(drive.frame(i))
    engine.flush()
    return read_session(write_session(engine.export_session(), folder))


def rss_mb() -> float:
    gc.collect()
    release_freed_memory()
    return host_rss_bytes() / 2**20


def run_mode(
    drive: SyntheticDrive, session: SessionData, mode: str, cfg: LocalisationBenchConfig
) -> tuple[list[Sample], float]:
    """The samples of one mode and its seconds per frame."""
    engine = make_engine(drive, cfg)
    engine.load_session(session, mode=mode)
    start = cfg.lap + cfg.lap // 3
    state = "relocalising"
    samples: list[Sample] = []
    t0 = time.perf_counter()
    for n, i in enumerate(range(start, start + cfg.laps * cfg.lap), 1):
        for ev in engine.push(drive.frame(i)):
            if isinstance(ev, RelocalisationUpdate):
                state = ev.state
        if n % cfg.sample == 0:
            sizes = engine.state_sizes()
            points = sizes.pop("map_points")
            samples.append(Sample(n, rss_mb(), points, sum(sizes.values()), state))
    seconds = time.perf_counter() - t0
    return samples, seconds / (cfg.laps * cfg.lap)


def growth(samples: list[Sample], after_frames: int) -> dict[str, float]:
    """Relative growth of each figure from the first sample after the warm-up to the last."""
    first = next(s for s in samples if s.frames >= after_frames)
    last = samples[-1]

    def rel(a: float, b: float) -> float:
        return (b - a) / a if a else float("inf") if b else 0.0

    return {
        "rss": rel(first.rss_mb, last.rss_mb),
        "map_points": rel(first.map_points, last.map_points),
        "stored_entries": rel(first.stored_entries, last.stored_entries),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scal3r_ros.tools.bench.localisation")
    defaults = LocalisationBenchConfig()
    parser.add_argument("--laps", type=int, default=defaults.laps)
    parser.add_argument("--warmup-laps", type=int, default=defaults.warmup_laps)
    parser.add_argument("--sample", type=int, default=defaults.sample)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args(argv)
    if args.laps < 1 or args.sample < 1 or not 0 <= args.warmup_laps < args.laps:
        print("need laps >= 1, sample >= 1 and 0 <= warmup-laps < laps", file=sys.stderr)
        return 2
    cfg = LocalisationBenchConfig(laps=args.laps, warmup_laps=args.warmup_laps, sample=args.sample)
    total_laps = cfg.laps + 2  # lap 1, the third of lap 2 skipped, the laps driven
    drive = SyntheticDrive(
        SyntheticConfig(n_frames=total_laps * cfg.lap, extra_laps=total_laps - 1.0, seed=0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        session = lap_one(drive, cfg, Path(tmp) / "lap1")
    results = {}
    warm = cfg.warmup_laps * cfg.lap
    for mode in args.modes:
        samples, per_frame = run_mode(drive, session, mode, cfg)
        results[mode] = {
            "samples": [asdict(s) for s in samples],
            "seconds_per_frame": per_frame,
            "growth_after_warmup": growth(samples, warm),
        }
        print(
            f"\n{mode}: {cfg.laps} laps ({cfg.laps * cfg.lap} frames), "
            f"{per_frame * 1e3:.1f} ms/frame"
        )
        print(f"{'frames':>7} {'RSS MB':>8} {'map points':>11} {'entries':>8}  state")
        for s in samples:
            print(
                f"{s.frames:7d} {s.rss_mb:8.1f} {s.map_points:11d} {s.stored_entries:8d}  {s.state}"
            )
    print(f"\ngrowth from frame {warm} to the end:")
    print(f"{'mode':<13} {'RSS':>8} {'map points':>11} {'entries':>8}")
    for mode, r in results.items():
        g = r["growth_after_warmup"]
        print(f"{mode:<13} {g['rss']:+8.1%} {g['map_points']:+11.1%} {g['stored_entries']:+8.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine_info("cpu"), "config": asdict(cfg), "modes": results}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
