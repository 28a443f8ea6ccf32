"""One rank of a distributed exact-mode test run (started by test_offline_distributed.py
with the torchrun variables RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).

    python dist_harness.py predict OUT.npz N_FRAMES REDUCE     # the backend layer alone
    python dist_harness.py cli [--kill N | --hang N] -- ARGS   # scal3r_offline ARGS

``predict``: the tiny network on random frames through ``DistributedExactBackend`` (rank 0)
and ``serve_windows`` (the others); rank 0 saves every window's prediction to OUT.npz.
``cli``: ``scal3r_offline`` itself; ``--kill N`` makes rank 1 SIGKILL itself at its N-th
collective (a rank dying mid-run), ``--hang N`` makes it sleep there (a stuck rank).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import torch.distributed as dist

CHUNK, OVERLAP, SIZE = 8, 4, 42  # windows of the tiny network on small random frames


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (SIZE, SIZE + 14, 3), dtype=np.uint8) for _ in range(n)]


def predict(out: str, n_frames: int, reduce: str) -> int:
    from scal3r_ros.mapping.backends.distributed import (
        DistributedExactBackend,
        RankGroup,
        exact_window_specs,
        serve_windows,
    )
    from scal3r_ros.mapping.backends.protocol import ChunkInput
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
    from scal3r_ros.mapping.frame_store import StoredFrame
    from scal3r_ros.mapping.windowing import WindowConfig

    backend = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cpu", max_size=SIZE))
    stored = {
        i: StoredFrame(backend.prepare(im, None)[0], i, "cam0", None)
        for i, im in enumerate(frames(n_frames))
    }
    specs = exact_window_specs(n_frames, WindowConfig(CHUNK, OVERLAP))
    group = RankGroup.from_env("cpu", reduce, timeout_s=60.0)
    if group.rank == 0:
        wrapped = DistributedExactBackend(backend, group)
        loaders = [lambda s=s: ChunkInput.from_stored(s, stored.get) for s in specs]
        preds = list(wrapped.infer_exact(loaders))
        arrays = {}
        for w, p in enumerate(preds):
            for name in ("c2w", "intrinsics", "depth", "depth_conf"):
                arrays[f"{w}_{name}"] = np.asarray(getattr(p, name))
        np.savez(out, **arrays)
    else:
        from pathlib import Path

        serve_windows(backend, specs, stored.get, group, Path(out).with_suffix(f".r{group.rank}"))
    group.close()
    return 0


def cli(argv: list[str]) -> int:
    fault, at = None, 0
    while argv and argv[0] in ("--kill", "--hang"):
        fault, at, argv = argv[0], int(argv[1]), argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if fault is not None and int(os.environ["RANK"]) == 1:
        calls = {"n": 0}

        def faulty(name):
            real = getattr(dist, name)

            def wrapper(*a, **kw):
                calls["n"] += 1
                if calls["n"] == at:
                    print(f"harness: rank 1 {fault} at collective {at}", flush=True)
                    if fault == "--kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(3600)
                return real(*a, **kw)

            return wrapper

        for name in ("all_reduce", "send", "recv", "broadcast"):
            setattr(dist, name, faulty(name))
    from scal3r_ros.tools import offline

    return offline.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "predict":
        sys.exit(predict(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    sys.exit(cli(sys.argv[2:]))
