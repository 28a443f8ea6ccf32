#!/usr/bin/env python3
"""Distributed exact mode on this machine: 1 vs N processes (issue 19).

    python scripts/bench_distributed.py --frames 200 --procs 1,2 --json out.json

Runs ``scal3r_offline`` on the synthetic drive with the tiny network on CPU once as a
plain single process and once per N as N ranks (gloo, started with the torchrun
variables, like ``torchrun --nproc_per_node=N``), and reports the wall time from launch
to the last exit, each process's peak RSS and CPU seconds (``wait4`` rusage; CPU time
shows the split of the work, which a loaded machine blurs less than wall time), the
trajectory's largest difference to the single process, the bytes each rank exchanges
per GCM layer (from run.json) and, computed from the model's shapes, the same for
``scal3r-1b``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, args: list[str], out: Path, threads: int) -> dict:
    """Start ``world`` ranks (or one plain process for 0); wall time and peak RSS each."""
    base = [sys.executable, "-m", "scal3r_ros.tools.offline", *args, "--out", str(out)]
    port = str(_port())
    procs = []
    t0 = time.perf_counter()
    for rank in range(max(world, 1)):
        env = dict(os.environ)
        if threads:  # torch intra-op threads per process (torchrun's default is 1)
            env.update(OMP_NUM_THREADS=str(threads))
        cmd = base
        if world:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            cmd = [*base, "--distributed"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    rss, cpu = {}, {}
    for rank, p in enumerate(procs):
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"rank {rank} exited with {p.returncode}")
        rss[rank] = usage.ru_maxrss * 1024  # kB on Linux
        cpu[rank] = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - t0
    run = json.loads((out / "run.json").read_text())
    return dict(wall_s=wall, run_s=run["seconds"]["total"], peak_rss=rss, cpu_s=cpu, run=run)


def _worker(a: argparse.Namespace) -> int:
    """One rank of ``--network-only``: the exact schedule alone (random frames, no
    reading, no placement), timed from after the rendezvous; one JSON line out."""
    import resource

    from scal3r_ros.mapping.backends.distributed import (
        DistributedExactBackend,
        RankGroup,
        chunk_input,
        exact_window_specs,
        serve_windows,
    )
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
    from scal3r_ros.mapping.frame_store import StoredFrame
    from scal3r_ros.mapping.windowing import WindowConfig

    cfg = Scal3RBackendConfig(device="cpu", max_size=a.max_size)
    backend = Scal3RBackend.from_config("tiny", cfg)
    specs = exact_window_specs(a.frames, WindowConfig(a.chunk_size, a.overlap))
    group = RankGroup.from_env("cpu", a.reduce)
    rng = np.random.default_rng(0)
    stored = {}
    for i in range(a.frames):  # every rank makes all (cheap); the timing starts after
        im = rng.integers(0, 256, (a.height, a.width, 3), dtype=np.uint8)
        stored[i] = StoredFrame(backend.prepare(im, None)[0], i, "cam0", None)
    group.agree_windows(len(specs))  # all ranks ready: start the clock together
    t0, c0 = time.perf_counter(), time.process_time()
    if group.rank == 0:
        wrapped = DistributedExactBackend(backend, group)
        loaders = [lambda s=s: chunk_input(s, stored.get) for s in specs]
        for _ in wrapped.infer_exact(loaders):  # its own windows, then the others'
            pass
        n = wrapped.own_windows(len(specs))
    else:
        spill = Path(tempfile.mkdtemp(prefix="bench_dist_"))
        n = serve_windows(backend, specs, stored.get, group, spill)
    res = dict(
        rank=group.rank,
        windows=n,
        seconds=time.perf_counter() - t0,
        cpu_s=time.process_time() - c0,
        collective_s=group.comm_s,
        bytes_sent=group.bytes_sent,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    group.close()
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def _network_only(a: argparse.Namespace, world: int) -> list[dict]:
    port = str(_port())
    cmd = [sys.executable, __file__, "--worker", "--frames", str(a.frames)]
    cmd += ["--max-size", str(a.max_size), "--width", str(a.width), "--height", str(a.height)]
    cmd += ["--chunk-size", str(a.chunk_size), "--overlap", str(a.overlap), "--reduce", a.reduce]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        if a.threads:
            env.update(OMP_NUM_THREADS=str(a.threads))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout = p.communicate()[0]
        if p.returncode != 0:
            raise SystemExit(f"worker exited with {p.returncode}")
        line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
        out.append(json.loads(line[len("RESULT ") :]))
    return out


def gcm_sum_bytes(preset: str) -> dict[int, int]:
    """Bytes of one GCM layer's gradient sum (the per-layer collective), from the shapes
    of the model (built on the meta device: no memory, no weights)."""
    import torch

    from scal3r_ros.model.scal3r import Scal3R

    with torch.device("meta"):
        agg = Scal3R(preset).agg_regator
    out = {}
    for j in agg.gcm_layers:
        g = agg.gcm(j)
        out[j] = sum(w.numel() * 4 for w in (g.w0, g.w1, g.w2))  # fp32 sums
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--procs", default="1,2", help="process counts (1: the plain tool)")
    p.add_argument("--max-size", type=int, default=70)
    p.add_argument("--width", type=int, default=320, help="synthetic frame width")
    p.add_argument("--height", type=int, default=240, help="synthetic frame height")
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--reduce", default="ordered", choices=("ordered", "allreduce"))
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (0: leave)")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--network-only",
        action="store_true",
        help="time the exact schedule alone on random frames (no reading, no placement)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(a)
    if a.network_only:
        results = {}
        for n in [int(x) for x in a.procs.split(",")]:
            ranks = _network_only(a, n)
            results[n] = ranks
            slowest = max(r["seconds"] for r in ranks)
            per = ", ".join(
                f"r{r['rank']} {r['windows']} win {r['seconds']:.1f} s "
                f"(CPU {r['cpu_s']:.1f}, coll {r['collective_s']:.1f}, "
                f"{r['peak_rss'] / 2**20:.0f} MiB, sent {r['bytes_sent']} B)"
                for r in ranks
            )
            print(f"{n} rank(s): exact schedule {slowest:.1f} s; {per}", flush=True)
        if a.json:
            setup = dict(vars(a), cpus=os.cpu_count(), load=os.getloadavg())
            Path(a.json).write_text(json.dumps({"network_only": results, "setup": setup}) + "\n")
        return 0
    args = ["--synthetic", str(a.frames), "--backend", "tiny", "--device", "cpu"]
    args += ["--max-size", str(a.max_size), "--chunk-size", str(a.chunk_size)]
    args += ["--width", str(a.width), "--height", str(a.height)]
    args += ["--overlap", str(a.overlap), "--no-loop-closure", "--no-progress", "--no-plots"]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for n in [int(x) for x in a.procs.split(",")]:
            out = Path(tmp) / f"p{n}"
            extra = ["--dist-reduce", a.reduce] if n > 1 else []
            r = _run(0 if n == 1 else n, [*args, *extra], out, a.threads)
            tum = np.loadtxt(out / "trajectory_tum.txt")
            if ref is None:
                ref = tum
            run = r.pop("run")
            r["max_trajectory_diff"] = float(np.abs(tum - ref).max())
            r["chunks"] = run["chunks"]
            if "distributed" in run:
                r["distributed"] = run["distributed"]
            results[n] = r
            rss = ", ".join(f"r{k} {v / 2**20:.0f}" for k, v in r["peak_rss"].items())
            cpu = ", ".join(f"r{k} {v:.1f}" for k, v in r["cpu_s"].items())
            print(
                f"{n} proc: wall {r['wall_s']:.1f} s (rank 0 run {r['run_s']:.1f} s), "
                f"CPU s {cpu}, peak RSS MiB {rss}, "
                f"max traj diff {r['max_trajectory_diff']:.3g}",
                flush=True,
            )
    b1 = gcm_sum_bytes("scal3r-1b")
    tiny = gcm_sum_bytes("tiny")
    print(f"GCM sum per layer: tiny {tiny} bytes; scal3r-1b {b1} bytes")
    results["gcm_sum_bytes_per_layer"] = {"tiny": tiny, "scal3r-1b": b1}
    results["setup"] = dict(vars(a), cpus=os.cpu_count(), load=os.getloadavg())
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
