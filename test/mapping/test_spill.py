"""Disk spill: one folder per process, folders of dead processes removed at the next start
(also across real processes killed with SIGKILL), and a byte cap the frame store and the
engine's loop geometry stay under, with loops to deleted frames rejected, not crashing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping import spill
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
from scal3r_ros.mapping.loop_closure import (
    LoopClosure,
    LoopClosureConfig,
    LoopDetectorConfig,
    OracleDescriptor,
)

needs_proc = pytest.mark.skipif(
    spill.process_start_time(os.getpid()) is None, reason="needs /proc start times (Linux)"
)


def _disk_bytes(root: Path) -> int:
    """What the spill really occupies: the files under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _frame(i: int, shape=(24, 32, 3)) -> StoredFrame:
    return StoredFrame(np.full(shape, i % 251, np.uint8), 1000 + i, f"cam{i % 2}", np.eye(3))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return p.pid
    pytest.skip("the pid of an exited child was reused at once")


def _folder(root: Path, name: str) -> Path:
    d = root / name
    (d / "frames-x").mkdir(parents=True)
    (d / "frames-x" / "0.npy").write_bytes(b"x" * 100)
    return d


@needs_proc
def test_stale_folders_removed_at_start_live_ones_kept(tmp_path):
    root = spill.spill_root(tmp_path)
    host = spill._host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = spill.process_start_time(live.pid)
        dead = _folder(root, f"{host}.{_dead_pid()}.{start}")
        parent = os.getppid()  # alive, but not the process that made this folder
        reused = _folder(root, f"{host}.{parent}.{spill.process_start_time(parent) + 1}")
        alive = _folder(root, f"{host}.{live.pid}.{start}")
        other_host = _folder(root, f"other-machine.{_dead_pid()}.1")
        unrelated = _folder(root, "notes")
        FrameStore(FrameStoreConfig(spill_dir=str(tmp_path)))  # a start: claims its folder
        assert not dead.exists() and not reused.exists()
        assert alive.exists() and other_host.exists() and unrelated.exists()
        assert (root / spill._tag(os.getpid())).is_dir()
    finally:
        live.kill()
        live.wait()
    # the sleeper is gone now: the next start removes its folder too
    assert spill.remove_stale_spill_dirs(root) == [alive]


def test_unsafe_shared_root_is_not_used(tmp_path):
    """Another user's (or a planted) folder at the shared name is never trusted: the
    process spills into a private folder of its own instead."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("keep")
    (tmp_path / f"scal3r_ros-{os.getuid()}").symlink_to(target)
    with pytest.raises(OSError, match="not a private folder"):
        spill.spill_root(tmp_path)
    fs = FrameStore(FrameStoreConfig(ram_frames=1, spill_dir=str(tmp_path)))
    for i in range(3):
        fs.put(i, _frame(i))
    assert fs.disk_frames() == 2 and fs.get(0).stamp_ns == 1000
    assert sorted(p.name for p in target.iterdir()) == ["precious"]


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from scal3r_ros.mapping.frame_store import FrameStore, FrameStoreConfig, StoredFrame
    fs = FrameStore(FrameStoreConfig(ram_frames=1, spill_dir=sys.argv[1]))
    for i in range(5):
        fs.put(i, StoredFrame(np.zeros((8, 8, 3), np.uint8), i, "c", None))
    print(fs._spill.path(0).parents[1], flush=True)
    if sys.argv[2] == "hang":
        time.sleep(120)
    """
)


def _child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
    )
    folder = Path(proc.stdout.readline().strip())
    assert folder.parent == tmp_path / f"scal3r_ros-{os.getuid()}", folder
    return proc, folder


def test_sigkilled_process_folder_removed_by_next_start(tmp_path):
    """Across processes: a SIGKILL leaves the spill behind; the next start removes it.
    A normal exit removes its own folder."""
    proc, folder = _child(tmp_path, "hang")
    try:
        assert _disk_bytes(folder) > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _disk_bytes(folder) > 0  # nothing could clean up
    second, second_folder = _child(tmp_path, "exit")  # the next start
    assert second.wait(timeout=60) == 0
    assert not folder.exists()
    assert not second_folder.exists()  # normal exit: removed its own
    assert list((tmp_path / f"scal3r_ros-{os.getuid()}").iterdir()) == []


def test_frame_store_stays_under_its_disk_cap(tmp_path):
    per_file = _disk_bytes_of_one(tmp_path)
    cap = 20 * per_file + per_file // 2
    fs = FrameStore(FrameStoreConfig(ram_frames=4, max_spill_bytes=cap, spill_dir=str(tmp_path)))
    n = 300
    for i in range(n):
        fs.put(i, _frame(i))
        assert fs.budget.used <= cap and _disk_bytes(tmp_path) == fs.budget.used
    assert fs.disk_frames() == 20 and len(fs) == 24
    assert fs.evicted == n - 24
    kept = range(n - 24, n)
    assert all(fs.get(i).image[0, 0, 0] == i % 251 for i in kept)
    with pytest.raises(KeyError, match="deleted to bound the store"):
        fs.get(n - 25)
    # a deleted frame's stamp and camera stay known (scale estimation, stereo)
    assert fs.info(3) == (1003, "cam1") and fs.camera_id(0) == "cam0"
    fs.reset()
    assert _disk_bytes(tmp_path) == 0


def _disk_bytes_of_one(tmp_path: Path) -> int:
    probe = FrameStore(FrameStoreConfig(ram_frames=0, spill_dir=str(tmp_path / "probe")))
    probe.put(0, _frame(0))
    size = probe.disk_nbytes()
    probe.reset()
    return size


def test_protected_frames_are_never_deleted(tmp_path):
    """Frames a window still needs stay even when that breaks the cap."""
    fs = FrameStore(FrameStoreConfig(ram_frames=2, max_spill_bytes=0, spill_dir=str(tmp_path)))
    needed_from = 5
    fs.protect_from = lambda: needed_from
    for i in range(40):
        fs.put(i, _frame(i))
    assert all(i in fs for i in range(5, 40)) and not any(i in fs for i in range(5))
    needed_from = 30  # the windows ran: the older ones may go now
    fs.put(40, _frame(40))
    assert [i for i in range(41) if i in fs] == list(range(30, 41))


def _loop_run(tmp_path: Path, cap: int | None, gcs_mode: str = "causal"):
    drive = make_drive(n_frames=120, seed=0)
    od = OracleDescriptor(length_scale=3.0)
    lc = LoopClosure(
        LoopClosureConfig(
            detector=LoopDetectorConfig(use_nms=False),
            descriptor_fn=lambda f: od(drive.gt_pose(f)[:3, 3]),
        )
    )
    frames = FrameStoreConfig(ram_frames=16, max_spill_bytes=cap, spill_dir=str(tmp_path))
    cfg = EngineConfig.low_latency(frames=frames, gcs_mode=gcs_mode)
    eng = MappingEngine(cfg, OracleBackend(drive, OracleConfig(drift_yaw_deg_per_frame=0.15)), lc)
    spilled = [0]  # bytes on disk after each push

    def on_disk(_events) -> None:
        spilled.append(_disk_bytes(tmp_path))
        assert spilled[-1] == eng.frames.budget.used

    push_and_collect(eng, drive, on_push=on_disk)
    return eng, lc, max(spilled)


def test_engine_spill_under_cap_and_loops_to_deleted_frames_rejected(tmp_path):
    """Frames and loop geometry share the cap; a loop back to the deleted start of the
    drive is rejected as "evicted" (it used to be accepted with everything on disk)."""
    eng, lc, peak = _loop_run(tmp_path / "unbounded", None)
    assert lc.accepted and all(later > 90 for later, _ in lc.accepted)
    unbounded = peak
    cap = unbounded // 3
    eng, lc, peak = _loop_run(tmp_path / "capped", cap)
    assert peak <= cap < unbounded
    assert not lc.accepted and any(why == "evicted" for *_, why in lc.rejected)
    assert eng.frames.evicted > 0 and len(eng.poses()[0]) == 120  # every frame placed
    assert 0 not in eng.frames and eng.frames.camera_id(0) == "cam0"


def test_exact_mode_keeps_every_frame_until_flush(tmp_path):
    """Offline ``exact`` GCS runs every window at flush: none of its frames may go."""
    eng, _, _ = _loop_run(tmp_path, 0, gcs_mode="exact")
    assert len(eng.poses()[0]) == 120
