"""Distributed exact mode (issue 19): CPU ranks on gloo, the tiny network, synthetic frames.

Ranks are separate processes started the way torchrun starts them (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT; ``dist_harness.py``), once through torchrun itself. Equality
with one process: ``--dist-reduce ordered`` (the default) repeats the single-process fp32
additions in order, so it must be bitwise equal. ``allreduce`` reassociates the sums: on
the tiny network ~16 % of the sum elements differ in the last bits, and the update's
bf16 cast sometimes turns that into a bf16 step (measured with reordered sums at 140 px:
depth 7.8e-6 relative, poses 4.1e-4; 0.0 on the 42 px frames used here), so its
tolerance is ten times that. Faults: a rank killed mid-run and a rank that hangs past
``--dist-timeout`` end every other rank with an error naming it, and leave no outputs;
the waits below only guard against a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import dist_harness as harness
import numpy as np
import pytest

from scal3r_ros.mapping.backends.distributed import WindowPlan, exact_window_specs
from scal3r_ros.mapping.backends.protocol import ChunkInput
from scal3r_ros.mapping.windowing import WindowConfig, official_chunks
from scal3r_ros.tools import offline

HARNESS = str(Path(harness.__file__).resolve())
HANG_GUARD_S = 300  # a run that takes longer is reported as hung (never expected)
# the random tiny network on CPU, small inputs, 8/4 windows (its poses are meaningless)
TINY = ["--backend", "tiny", "--device", "cpu", "--max-size", "70", "--chunk-size", "8"]
TINY += ["--overlap", "4", "--no-loop-closure", "--no-progress", "--no-plots"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, args: list[str]) -> list[subprocess.Popen]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        # one thread a rank, as the reference below: float results depend on the split
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        env["OMP_NUM_THREADS"] = "1"
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(
            subprocess.Popen(
                [sys.executable, HARNESS, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=HANG_GUARD_S)
            out.append((p.returncode, stdout + stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


# ---------------------------------------------------------------- the split
def test_window_plan_is_contiguous_balanced_and_may_leave_ranks_idle():
    for n, world in [(5, 2), (5, 3), (7, 3), (2, 3), (1, 4), (6, 3), (0, 2)]:
        plan = WindowPlan(n, world)
        ranges = [plan.owned(r) for r in range(world)]
        assert [w for r in ranges for w in r] == list(range(n))  # contiguous, in order
        sizes = [len(r) for r in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert all(plan.owner(w) == r for r in range(world) for w in ranges[r])
        assert plan.idle_ranks == [r for r in range(world) if not ranges[r]]
    assert WindowPlan(2, 3).idle_ranks == [2]


@pytest.mark.parametrize("n", [0, 5, 8, 9, 12, 24, 31])
def test_rank_window_specs_are_the_engines(n):
    """Ranks other than 0 plan their windows without an engine: the same windows."""
    specs = exact_window_specs(n, WindowConfig(8, 4))
    assert [(s.frame_ids[0], s.frame_ids[-1] + 1) for s in specs] == official_chunks(n, 8, 4)
    assert [s.chunk_id for s in specs] == list(range(len(specs)))
    if n:
        assert len(specs) == offline.n_chunks(n, 8, 4)


def test_chunk_input_puts_the_reference_frame_first():
    from scal3r_ros.mapping.frame_store import StoredFrame

    frames = {
        i: StoredFrame(np.full((2, 3, 3), i, np.uint8), 100 + i, "cam0", None) for i in range(8)
    }
    spec = exact_window_specs(8, WindowConfig(8, 4))[0]
    ci = ChunkInput.from_stored(spec, frames.__getitem__)
    assert ci.frame_ids.tolist() == [3, 0, 1, 2, 4, 5, 6, 7]  # official reorder, middle first
    assert ci.stamps_ns.tolist() == [100 + f for f in ci.frame_ids]
    assert ci.images[:, 0, 0, 0].tolist() == ci.frame_ids.tolist() and ci.intrinsics is None


def _write_bag(path: Path, images: list[np.ndarray]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Img, Header = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/cam", Img.__msgtype__, typestore=ts)
        for i, rgb in enumerate(images):
            h, wd = rgb.shape[:2]
            msg = Img(
                header=Header(stamp=Time(sec=1 + i, nanosec=0), frame_id="cam"),
                height=h,
                width=wd,
                encoding="rgb8",
                is_bigendian=0,
                step=wd * 3,
                data=rgb.ravel(),
            )
            w.write(conn, (1 + i) * 10**9, ts.serialize_cdr(msg, Img.__msgtype__))


def test_sources_read_only_the_frames_a_rank_asks_for(tmp_path):
    """A rank reads just its windows' frames: ``frames(only)`` yields those positions of
    the (subsampled) sequence, equal to the full read's, for folders, KITTI and bags."""
    from kitti_fixture import make_kitti_dataset
    from PIL import Image

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (16, 20, 3), dtype=np.uint8) for _ in range(9)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    _write_bag(tmp_path / "bag", images)
    sel = (2, None)  # every 2nd frame: positions 0..4 are frames 0, 2, 4, 6, 8
    sources = [
        offline.image_folder_source(folder, None, 10.0, 0, sel),
        offline.bag_source(tmp_path / "bag", None, sel),
        offline.kitti_source(make_kitti_dataset(tmp_path / "k", n_frames=9), sel),
    ]
    for src in sources:
        full = list(src.frames())
        assert len(full) == src.n == 5
        part = list(src.frames({1, 4}))
        assert len(part) == 2 and [p[0] for p in part] == [full[1][0], full[4][0]], src.name
        assert np.array_equal(part[0][1], full[1][1]) and np.array_equal(part[1][1], full[4][1])
        assert list(src.frames(set())) == []
    assert np.array_equal(next(iter(sources[1].frames({2})))[1], images[4])  # bag: frame 4


# ---------------------------------------------------------------- equality
def _single_process(n_frames: int):
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
    from scal3r_ros.mapping.frame_store import StoredFrame

    cfg = Scal3RBackendConfig(device="cpu", max_size=harness.SIZE)
    backend = Scal3RBackend.from_config("tiny", cfg)
    stored = {
        i: StoredFrame(backend.prepare(im, None)[0], i, "cam0", None)
        for i, im in enumerate(harness.frames(n_frames))
    }
    specs = exact_window_specs(n_frames, WindowConfig(harness.CHUNK, harness.OVERLAP))
    loaders = [lambda s=s: ChunkInput.from_stored(s, stored.get) for s in specs]
    return list(backend.infer_exact(loaders))


@pytest.mark.parametrize(
    "world, n_frames, reduce",
    [
        (3, 24, "ordered"),  # 5 windows on 3 ranks: 2/2/1
        (3, 10, "ordered"),  # 2 windows on 3 ranks: rank 2 idle (passes the prefix on)
        (2, 24, "allreduce"),  # 5 windows on 2 ranks: 3/2
    ],
)
def test_distributed_predictions_equal_single_process(
    tmp_path, world, n_frames, reduce, one_torch_thread
):
    out = tmp_path / "preds.npz"
    procs = _launch(world, ["predict", str(out), str(n_frames), reduce])
    ref = _single_process(n_frames)  # meanwhile, in this process
    results = _finish(procs)
    assert all(rc == 0 for rc, _ in results), results
    got = np.load(out)
    assert len({k.split("_")[0] for k in got.files}) == len(ref) >= 2
    for w, pred in enumerate(ref):
        for name in ("c2w", "intrinsics", "depth", "depth_conf"):
            a, b = got[f"{w}_{name}"], np.asarray(getattr(pred, name))
            assert a.shape == b.shape and a.dtype == b.dtype
            if reduce == "ordered":
                assert np.array_equal(a, b), (w, name)  # bitwise
            else:  # relative to the field's scale: depth 1e-4, poses and intrinsics 5e-3
                tol = 1e-4 if name.startswith("depth") else 5e-3
                scale = max(1.0, float(np.abs(b[np.isfinite(b)]).max(initial=0.0)))
                assert np.allclose(a, b, rtol=0, atol=tol * scale, equal_nan=True), (w, name)


def test_torchrun_two_ranks_reproduce_the_single_process_run(tmp_path):
    """The documented launch: torchrun alone switches the tool to distributed mode; 30
    frames = 7 windows on 2 ranks (4/3); trajectory and map are the single-process ones,
    byte for byte (ordered sums)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = ["--synthetic", "30", *TINY]
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "scal3r_ros.tools.offline"]
    proc = subprocess.Popen(
        [*cmd, *args, "--out", str(tmp_path / "dist")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks (OMP_NUM_THREADS=1): the map's
    try:  # reductions depend on the thread count, not on the ranks
        assert offline.main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    log = proc.communicate(timeout=HANG_GUARD_S)[0]
    assert proc.returncode == 0, log
    for name in ("trajectory_tum.txt", "trajectory_kitti.txt", "map.ply"):
        one, two = (tmp_path / d / name for d in ("one", "dist"))
        assert one.read_bytes() == two.read_bytes(), name
    assert np.loadtxt(tmp_path / "dist" / "trajectory_tum.txt").shape == (30, 8)
    run = json.loads((tmp_path / "dist" / "run.json").read_text())
    assert run["chunks"] == 7 and run["frames_placed"] == 30
    d = run["distributed"]
    assert d["world_size"] == 2 and d["windows_per_rank"] == [4, 3] and d["reduce"] == "ordered"
    # tiny: 2 GCM layers, fast weights 32x64, 64x32, 32x64 (fp32) per layer
    assert d["gcm_sum_bytes_per_layer"] == {"1": 3 * 32 * 64 * 4, "3": 3 * 32 * 64 * 4}
    assert "rank 1/2: windows 4..6" in log


# ---------------------------------------------------------------- faults
def _no_outputs(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not {"run.json", "trajectory_tum.txt", "map.ply"} & set(left), left


def test_a_killed_rank_ends_the_run_with_an_error_naming_it(tmp_path):
    """Rank 1 SIGKILLs itself at its 2nd collective (the first GCM layer's all-reduce):
    ranks 0 and 2 end with exit 1 and name rank 1; no outputs look complete."""
    out = tmp_path / "run"
    args = ["cli", "--kill", "2", "--", "--synthetic", "24", *TINY, "--out", str(out)]
    results = _finish(_launch(3, args))
    assert results[1][0] == -9, results[1]  # the killed one
    for rank in (0, 2):
        rc, log = results[rank]
        assert rc == 1, log
        assert "scal3r_offline: error:" in log and "rank 1 stopped answering" in log, log
        assert "Traceback" not in log, log
    _no_outputs(out)


@pytest.mark.slow
def test_a_hanging_rank_times_out_with_an_error_naming_it(tmp_path):
    """Rank 1 sleeps at its 2nd collective: rank 0 gives up after --dist-timeout and
    names it (the test then kills the sleeper)."""
    out = tmp_path / "run"
    args = ["cli", "--hang", "2", "--", "--synthetic", "16", *TINY, "--out", str(out)]
    procs = _launch(2, [*args, "--dist-timeout", "20"])
    try:
        log0 = procs[0].communicate(timeout=HANG_GUARD_S)
    finally:
        procs[1].kill()
        procs[1].communicate()
        if procs[0].poll() is None:
            procs[0].kill()
    log = log0[0] + log0[1]
    assert procs[0].returncode == 1, log
    assert "rank 1 stopped answering" in log and "Traceback" not in log, log
    _no_outputs(out)


def test_bad_distributed_settings_exit_2(tmp_path, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    base = ["--synthetic", "12", *TINY, "--out", str(tmp_path / "x"), "--distributed"]
    assert offline.main(base) == 2
    assert "torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    assert offline.main([*base, "--gcs", "causal"]) == 2
    assert "--gcs exact" in capsys.readouterr().err
    assert offline.main(["--synthetic", "12", "--out", str(tmp_path / "y"), "--distributed"]) == 2
    assert "--backend scal3r or tiny" in capsys.readouterr().err
    _no_outputs(tmp_path / "x")
