"""`scal3r_offline --distributed`: one rank of an exact-mode run launched by ``torchrun``.

    torchrun --nproc_per_node=4 -m scal3r_ros.tools.offline --distributed seq/ --out run

Rank 0 runs the usual offline pipeline (reads every frame, as its engine places the
windows, colours the map and verifies loops) with a backend that computes only its own
windows and receives the others' predictions (``mapping.backends.distributed``); every
other rank reads only the frames of its windows, takes part in the per-GCM-layer
collectives and sends its predictions to rank 0. Only rank 0 writes outputs, at the end
(trajectories, map, run.json, each replaced atomically), so a failed run leaves no new
outputs behind.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from scal3r_ros.mapping.backends.distributed import (
    REDUCE_MODES,
    DistributedExactBackend,
    RankFailure,
    RankGroup,
    WindowPlan,
    exact_window_specs,
    serve_windows,
)
from scal3r_ros.tools.offline import OfflineConfig, OfflineError, Source, make_offline_backend

__all__ = ["DistributedConfig", "RankFailure", "in_torchrun", "rank_of", "run_rank"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedConfig:
    reduce: str = "ordered"  # ordered (bitwise = one process) | allreduce (reassociated)
    timeout_s: float = 1800.0  # every collective; must cover rank 0 reading the input
    grace_s: float = 10.0  # after a failure: wait for the other ranks to report


def in_torchrun() -> bool:
    """Launched by torchrun (or with its variables set by hand)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_of() -> int:
    return int(os.environ.get("RANK", "0"))


def check(cfg: OfflineConfig, dcfg: DistributedConfig) -> None:
    """User mistakes, found before any rank waits for another."""
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise OfflineError(
            f"--distributed needs the torchrun variables ({', '.join(missing)} missing): "
            "launch with torchrun --nproc_per_node=N -m scal3r_ros.tools.offline ..."
        )
    if cfg.window.gcs_mode != "exact":
        raise OfflineError("--distributed runs the exact GCS schedule: use --gcs exact")
    if cfg.backend.backend == "oracle":
        raise OfflineError("--distributed needs the network (--backend scal3r or tiny)")
    if dcfg.reduce not in REDUCE_MODES:
        raise OfflineError(f"--dist-reduce must be one of {REDUCE_MODES}")
    if dcfg.timeout_s <= 0:
        raise OfflineError("--dist-timeout must be > 0 seconds")


def _rank_device(device: str) -> str:
    """``auto``/``cuda`` on a GPU machine: this rank's GPU (LOCAL_RANK)."""
    from scal3r_ros.mapping.backends.factory import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return str(dev)


def run_rank(source: Source, cfg: OfflineConfig, dcfg: DistributedConfig) -> dict | None:
    """This process's part of the run: rank 0 returns the run summary (outputs written
    but for run.json, as ``offline.run``), the others None. Raises `RankFailure` when a
    peer died or a collective timed out."""
    check(cfg, dcfg)
    device = _rank_device(cfg.backend.device)
    cfg = replace(cfg, backend=replace(cfg.backend, device=device))
    group = RankGroup.from_env(device, dcfg.reduce, dcfg.timeout_s, dcfg.grace_s)
    try:
        if group.rank == 0:
            summary = _rank0(source, cfg, group)
        else:
            summary = None
            _follower(source, cfg, group)
    except BaseException as exc:
        group.close(ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    group.close()
    return summary


def _rank0(source: Source, cfg: OfflineConfig, group: RankGroup) -> dict:
    from scal3r_ros.tools import offline

    summary = offline.run(source, cfg, wrap_backend=lambda b: DistributedExactBackend(b, group))
    plan = WindowPlan(summary["chunks"], group.world_size)
    summary["distributed"] = dict(
        world_size=group.world_size,
        reduce=group.reduce,
        windows_per_rank=[len(plan.owned(r)) for r in range(group.world_size)],
        gcm_sum_bytes_per_layer=group.layer_bytes,
        rank0_bytes_sent=group.bytes_sent,
        rank0_collective_seconds=group.comm_s,
    )
    return summary


def _follower(source: Source, cfg: OfflineConfig, group: RankGroup) -> None:
    import numpy as np

    from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
    from scal3r_ros.mapping.spill import process_spill_dir
    from scal3r_ros.mapping.windowing import WindowConfig

    built = make_offline_backend(cfg)
    backend: Any = built.backend
    win = cfg.window
    specs = exact_window_specs(source.n, WindowConfig(win.chunk_size, win.overlap))
    own = WindowPlan(len(specs), group.world_size).owned(group.rank)
    needed = sorted({f for w in own for f in specs[w].frame_ids})
    store = FrameStore(FrameStoreConfig(max_spill_bytes=None))  # RAM window + disk, all kept
    store.protect_from = lambda: 0
    if needed:
        # frame 0 fixes the network input size, as on rank 0 (its first frame)
        wanted = sorted({0, *needed})
        keep = set(needed)
        got = 0
        for pos, (stamp, rgb) in zip(wanted, source.frames(set(wanted)), strict=False):
            img, K = backend.prepare(rgb, None)  # the engine's Frame(stamp, "cam0", rgb)
            if pos in keep:
                store.put(pos, StoredFrame(np.ascontiguousarray(img), stamp, "cam0", K))
            got += 1
        if got != len(wanted):
            raise OfflineError(
                f"rank {group.rank}: {source.name} gave {got} of the {len(wanted)} frames "
                f"{wanted[0]}..{wanted[-1]} of its windows (input shorter than it said)"
            )
    first, last = (own.start, own.stop - 1) if own else (None, None)
    print(
        f"scal3r_offline: rank {group.rank}/{group.world_size}: windows {first}..{last}, "
        f"{len(needed)} frames read",
        flush=True,
    )
    spill = process_spill_dir(None) / f"dist_rank{group.rank}"
    t0 = time.perf_counter()
    serve_windows(backend, specs, store.get, group, spill)
    store.reset()
    print(
        f"scal3r_offline: rank {group.rank}: done in {time.perf_counter() - t0:.1f} s, "
        f"{group.comm_s:.1f} s of it in collectives, {group.bytes_sent} bytes sent",
        flush=True,
    )
