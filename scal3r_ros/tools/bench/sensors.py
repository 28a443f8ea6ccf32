"""What the robot's other sensors buy: drift with odometry and GNSS factors, map tilt with gravity.

``python -m scal3r_ros.tools.bench.sensors`` maps the synthetic loop with the oracle
backend bending every window (yaw drift) and adding depth noise, loop closure off, so only
the other sensors can pull the drift back; each run feeds the engine's ``SensorFusion``
with the sensors ``mapping.sim.sensors`` simulates from the ground truth (the same maths as
``scal3r_synthetic_camera``'s topics):

- ATE [m]: RMSE of the camera centres after a Sim(3) fit to the ground truth;
- ENU error [m]: with GNSS, the centres through the graph's own map -> ENU frame against the
  true ENU positions, no fit (what a georeferenced map is worth);
- ENU rotation error [deg]: the graph's map -> ENU rotation against the true one;
- scale error [%]: the graph's metres per map unit times the mapped path length against
  the driven length (odometry or GNSS give the scale);
- map tilt [deg]: the drive on a ``--tilt-deg`` slope, the node's ``map`` (the first
  base_link) against gravity's up, without and with levelling from still accelerometer
  samples (``GravityLevel``, ``level_from_up``: what the node applies to its anchor).

Prints a table; ``--json PATH`` writes the figures (docs/bench/sensors_cpu_oracle.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scal3r_ros.mapping.backends.factory import build_engine
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.metrics import ate, rotation_angle
from scal3r_ros.mapping.sensor_fusion import ENU, SensorFusion, SensorFusionConfig
from scal3r_ros.mapping.sensors.gravity import GravityLevel
from scal3r_ros.mapping.sim import sensors as sim
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive, road_speed_laps
from scal3r_ros.mapping.windowing import WindowConfig, window_problem
from scal3r_ros.ros.frames import camera_mount
from scal3r_ros.tools.bench.report import machine_info


@dataclass
class SensorBenchConfig:
    frames: int = 600  # ~390 m at road speed (2.3 laps of the loop)
    chunk_size: int = 16
    overlap: int = 8
    drift_deg: float = 0.3  # oracle in-window yaw drift per frame
    depth_noise: float = 0.02  # oracle relative depth noise
    odometry_noise: float = 0.01  # m per m driven (random walk), 0.1x in rad
    gnss_sigmas: tuple[float, ...] = (1.0, 2.0, 3.0)
    jumps: float = 0.05  # fraction of fixes 20-40 m off
    tilt_deg: float = 5.0
    heading_deg: float = 30.0
    imu_noise: float = 0.02  # accelerometer sigma [m/s^2]
    still_samples: int = 100  # 1 s at 100 Hz before the first image
    seed: int = 0


@dataclass
class SensorRun:
    """One row: which sources fed the graph and what came out."""

    name: str
    odometry: bool = False
    gnss_sigma: float | None = None
    jumps: float = 0.0
    ate_m: float = math.nan
    enu_m: float = math.nan
    enu_rot_deg: float = math.nan
    scale_error_pct: float = math.nan
    factors: dict[str, int] = field(default_factory=dict)
    seconds: float = math.nan


def runs(cfg: SensorBenchConfig) -> list[SensorRun]:
    """The rows: nothing, each source alone, GNSS with jumps, everything together."""
    mid = cfg.gnss_sigmas[len(cfg.gnss_sigmas) // 2]
    jumps = f"{100 * cfg.jumps:g} % jumps"
    return [
        SensorRun("no sensors"),
        SensorRun("odometry", odometry=True),
        *(SensorRun(f"GNSS {s:g} m", gnss_sigma=s) for s in cfg.gnss_sigmas),
        SensorRun(f"GNSS {mid:g} m + {jumps}", gnss_sigma=mid, jumps=cfg.jumps),
        SensorRun(f"odometry + GNSS {mid:g} m + {jumps}", True, mid, cfg.jumps),
    ]


def make_drive(cfg: SensorBenchConfig) -> SyntheticDrive:
    laps = road_speed_laps(cfg.frames)
    return SyntheticDrive(SyntheticConfig(n_frames=cfg.frames, extra_laps=laps - 1.0))


def path_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def run_one(cfg: SensorBenchConfig, drive: SyntheticDrive, run: SensorRun) -> SensorRun:
    """Map the drive with ``run``'s sources; fills its figures."""
    t0 = time.perf_counter()
    mount = camera_mount()
    world = sim.SensorWorld(cfg.tilt_deg, cfg.heading_deg)
    backend = OracleBackend(
        drive,
        OracleConfig(
            depth_noise=cfg.depth_noise, drift_yaw_deg_per_frame=cfg.drift_deg, seed=cfg.seed
        ),
    )
    engine_cfg = EngineConfig(window=WindowConfig(cfg.chunk_size, cfg.overlap), loop_closure=False)
    gnss = run.gnss_sigma is not None
    fusion = None
    if run.odometry or gnss:
        fusion = SensorFusion(
            SensorFusionConfig(odometry=run.odometry, gnss=gnss, T_base_cam=mount)
        )
    engine = build_engine(engine_cfg, backend, sensor_fusion=fusion)
    odom = sim.odometry_poses(drive, mount, cfg.odometry_noise, cfg.seed) if run.odometry else None
    rng = np.random.default_rng(cfg.seed + 1)
    for i in range(drive.n_frames):
        if fusion is not None and odom is not None:
            fusion.add_odometry(drive.stamp_ns(i), odom[i])
        if fusion is not None and gnss:
            fix = sim.gnss_fix(drive, i, world, mount, run.gnss_sigma, rng, run.jumps)
            fusion.add_gnss(fix)
        engine.push(drive.frame(i))
    engine.flush()
    ids, _, c2w = engine.poses()
    gt = drive.gt_poses()[ids]
    result = ate(c2w, gt)
    run.ate_m = float(result.rmse)
    if fusion is not None and engine.has_external_frame(ENU):
        F = engine.external_frame(ENU)
        run.scale_error_pct = 100.0 * (
            F.s * path_length(c2w[:, :3, 3]) / path_length(gt[:, :3, 3]) - 1.0
        )
        if gnss and fusion.gnss.anchor is not None:
            true_enu = sim.reanchor_enu(
                gt[:, :3, 3] @ world.R_enu_world().T, world.anchor, fusion.gnss.anchor
            )
            err = F.apply(c2w[:, :3, 3]) - true_enu
            run.enu_m = float(np.sqrt((err**2).sum(1).mean()))
            # the fit's rotation maps engine axes to world axes: the true engine -> ENU
            R_true = world.R_enu_world() @ result.alignment.R
            run.enu_rot_deg = float(np.degrees(rotation_angle(R_true.T @ F.R)))
        run.factors = {"odometry": fusion.stats.odometry_used, "gnss": fusion.stats.gnss_used}
    run.seconds = time.perf_counter() - t0
    return run


def map_tilt(cfg: SensorBenchConfig, drive: SyntheticDrive) -> dict[str, float]:
    """The node's ``map`` (the first base_link, levelled or not) against gravity's up on a
    ``tilt_deg`` slope; levelling from ``still_samples`` noisy accelerometer samples."""
    mount = camera_mount()
    world = sim.SensorWorld(cfg.tilt_deg, cfg.heading_deg)
    R_enu_base = sim.base_orientation_enu(drive, 0, world, mount)
    level = GravityLevel()
    rng = np.random.default_rng(cfg.seed + 2)
    for _ in range(cfg.still_samples):
        level.add(sim.imu_accel(drive, 0, world, mount, True, cfg.imu_noise, rng))
    levelled = math.nan
    if level.level is not None:  # map axes = level @ base axes: R_enu_map = R_enu_base @ L^T
        levelled = sim.tilt_deg(R_enu_base @ level.level.T)
    return {
        "slope_deg": cfg.tilt_deg,
        "without_levelling_deg": sim.tilt_deg(R_enu_base),
        "with_gravity_levelling_deg": levelled,
    }


def _cell(v: float, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or not math.isfinite(v) else fmt.format(v)


def table(rows: list[SensorRun], tilt: dict[str, float]) -> str:
    head = ["run", "ATE [m]", "ENU error [m]", "ENU rotation [deg]", "scale error [%]", "factors"]
    body = [
        [
            r.name,
            _cell(r.ate_m),
            _cell(r.enu_m),
            _cell(r.enu_rot_deg),
            _cell(r.scale_error_pct, "{:+.1f}"),
            ", ".join(f"{k} {v}" for k, v in r.factors.items() if v) or "-",
        ]
        for r in rows
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(b) + " |" for b in body]
    out += [
        "",
        "| map tilt on a {:g} deg slope | deg |".format(tilt["slope_deg"]),
        "|---|---|",
        f"| without levelling | {_cell(tilt['without_levelling_deg'])} |",
        f"| with gravity levelling | {_cell(tilt['with_gravity_levelling_deg'])} |",
    ]
    return "\n".join(out)


def problem(cfg: SensorBenchConfig) -> str | None:
    p = window_problem(cfg.chunk_size, cfg.overlap)
    if p:
        return p
    if cfg.frames < 2 * cfg.chunk_size:
        return f"--frames must be at least two windows ({2 * cfg.chunk_size}), got {cfg.frames}"
    values = [cfg.drift_deg, cfg.depth_noise, cfg.odometry_noise, cfg.imu_noise, cfg.jumps]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return "--drift-deg, --depth-noise, --odometry-noise, --imu-noise, --jumps must be >= 0"
    if cfg.jumps > 1:
        return f"--jumps is a fraction in [0, 1], got {cfg.jumps}"
    if not cfg.gnss_sigmas or not all(math.isfinite(s) and s > 0 for s in cfg.gnss_sigmas):
        return "--gnss-sigmas must be one or more numbers > 0"
    if not (math.isfinite(cfg.tilt_deg) and abs(cfg.tilt_deg) < 90):
        return f"--tilt-deg must be within (-90, 90), got {cfg.tilt_deg}"
    return None


def _json_safe(value):
    """NaN (a figure that does not apply) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SensorBenchConfig()
    p.add_argument("--frames", type=int, default=d.frames, help="frames of the loop drive")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size)
    p.add_argument("--overlap", type=int, default=d.overlap)
    p.add_argument("--drift-deg", type=float, default=d.drift_deg, help="oracle yaw drift/frame")
    p.add_argument("--depth-noise", type=float, default=d.depth_noise, help="oracle depth sigma")
    p.add_argument("--odometry-noise", type=float, default=d.odometry_noise)
    p.add_argument("--gnss-sigmas", type=float, nargs="+", default=list(d.gnss_sigmas), help="[m]")
    p.add_argument("--jumps", type=float, default=d.jumps, help="fraction of GNSS jumps")
    p.add_argument("--tilt-deg", type=float, default=d.tilt_deg, help="slope of the drive")
    p.add_argument("--imu-noise", type=float, default=d.imu_noise, help="[m/s^2]")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    cfg = SensorBenchConfig(
        frames=args.frames,
        chunk_size=args.chunk_size,
        overlap=args.overlap,
        drift_deg=args.drift_deg,
        depth_noise=args.depth_noise,
        odometry_noise=args.odometry_noise,
        gnss_sigmas=tuple(args.gnss_sigmas),
        jumps=args.jumps,
        tilt_deg=args.tilt_deg,
        imu_noise=args.imu_noise,
        seed=args.seed,
    )
    bad = problem(cfg)
    if bad:
        print(f"scal3r_bench.sensors: {bad}", file=sys.stderr)
        return 2
    drive = make_drive(cfg)
    print(
        f"{cfg.frames} frames ({drive.path_length():.0f} m), {cfg.chunk_size}/{cfg.overlap} "
        f"windows, oracle drift {cfg.drift_deg:g} deg/frame, depth noise {cfg.depth_noise:g}, "
        "loop closure off",
        flush=True,
    )
    rows = []
    for run in runs(cfg):
        rows.append(run_one(cfg, drive, run))
        print(f"  {run.name}: ATE {run.ate_m:.2f} m ({run.seconds:.0f} s)", flush=True)
    tilt = map_tilt(cfg, drive)
    print(table(rows, tilt))
    if args.json is not None:
        doc = {
            "config": asdict(cfg),
            "path_length_m": drive.path_length(),
            "machine": {
                **machine_info("cpu"),
                "command": " ".join(["python -m scal3r_ros.tools.bench.sensors", *(argv or [])]),
            },
            "runs": [asdict(r) for r in rows],
            "map_tilt": tilt,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
