"""Atomic, symlink-safe writes (issue 16, items 1 and 2): planted links are never
followed, folders swapped for links after the check change nothing, a write that dies
half-way leaves the old file (or the old save folder) as it was."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from write_faults import kill_mid_write

from scal3r_ros.mapping import atomic_io
from scal3r_ros.mapping.atomic_io import SaveFolder, UnsafePathError, atomic_write
from scal3r_ros.mapping.map_store import write_ply
from scal3r_ros.mapping.planning.occupancy import OccupancyConfig, OccupancyGrid
from scal3r_ros.mapping.trajectory import write_poses

DEAD_PID = 4_194_305  # above Linux's PID_MAX_LIMIT (2**22): never a live process


def _victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    return victim


def _grid(seed: int) -> OccupancyGrid:
    grid = OccupancyGrid(OccupancyConfig(resolution=0.5))
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-20, 20, (4000, 3))
    pts[:, 2] = np.where(rng.random(4000) < 0.5, 0.0, 1.0)  # ground and obstacles

    class Flat:
        def height(self, p):
            return p[:, 2]

    grid.integrate(pts, Flat(), None)
    return grid


# --------------------------------------------------------------------------- one file
def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_write(target) as f:
        f.write(b"one")
    with atomic_write(target) as f:
        f.write(b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_a_symlink_planted_at_the_temp_name_is_refused_not_followed(tmp_path, monkeypatch):
    victim = _victim(tmp_path)
    folder = tmp_path / "maps"
    folder.mkdir()
    monkeypatch.setattr(atomic_io.secrets, "token_hex", lambda n: "0badc0de")
    planted = folder / f".map.ply.{os.getpid()}-0badc0de.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError), atomic_write(folder / "map.ply") as f:
        f.write(b"attacker-controlled path")
    assert victim.read_text() == "precious" and not (folder / "map.ply").exists()


def test_a_symlink_at_the_final_name_is_replaced_not_written_through(tmp_path):
    victim = _victim(tmp_path)
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "map.ply").symlink_to(victim)
    write_ply(folder / "map.ply", np.zeros((2, 3)), np.zeros((2, 3), np.uint8), np.ones(2))
    assert victim.read_text() == "precious"
    assert not (folder / "map.ply").is_symlink()
    assert (folder / "map.ply").read_bytes().startswith(b"ply")


def test_a_write_failing_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "trajectory_tum.txt"
    write_poses(target, np.array([1, 2]), np.stack([np.eye(4)] * 2), "tum")
    old = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half of a new file")
        raise RuntimeError("killed half-way (simulated)")
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["trajectory_tum.txt"]


def test_temp_files_of_dead_writers_are_cleaned_by_the_next_write(tmp_path):
    stale = tmp_path / f".grid.pgm.{DEAD_PID}-0123abcd.tmp"
    stale.write_bytes(b"left by a SIGKILL")
    live = tmp_path / f".grid.pgm.{os.getpid()}-0123abcd.tmp"  # a live writer's: kept
    live.write_bytes(b"in progress")
    _grid(0).save(tmp_path / "grid")
    assert not stale.exists() and live.exists()


def test_a_kill_during_grid_writing_leaves_the_old_grid_intact(tmp_path):
    """Issue 16: a kill during the write turned a 516,917-byte grid.pgm into 0 bytes."""
    pgm, yml = _grid(0).save(tmp_path / "grid")
    old_pgm, old_yml = pgm.read_bytes(), yml.read_bytes()
    assert len(old_pgm) > 8192
    kill_mid_write(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from test_atomic_io import _grid
        _grid(7).save({str(tmp_path / "grid")!r})
    """)
    assert pgm.read_bytes() == old_pgm and yml.read_bytes() == old_yml
    _grid(7).save(tmp_path / "grid")  # the next save works and cleans up the temp file
    assert pgm.read_bytes() != old_pgm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.pgm", "grid.yaml"]


# --------------------------------------------------------------------------- a save folder
def _save(root: Path, name: str, files: dict[str, bytes], **kw) -> list[Path]:
    with SaveFolder(root, name, **kw) as folder:
        for fname, data in files.items():
            folder.write_bytes(fname, data)
        return folder.commit()


def test_save_folder_creates_replaces_and_holds_exactly_one_save(tmp_path):
    root = tmp_path / "maps"
    paths = _save(root, "a/run", {"map.ply": b"1", "trajectory_tum.txt": b"1"})
    assert paths == [root / "a" / "run" / "map.ply", root / "a" / "run" / "trajectory_tum.txt"]
    replaceable = {"map.ply", "trajectory_tum.txt"}
    _save(root, "a/run", {"trajectory_tum.txt": b"2"}, replaceable=replaceable)
    run = root / "a" / "run"
    assert sorted(p.name for p in run.iterdir()) == ["trajectory_tum.txt"]
    assert (run / "trajectory_tum.txt").read_bytes() == b"2"
    assert sorted(p.name for p in (root / "a").iterdir()) == ["run"]  # no staging left


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename_aside"])
def test_replacing_works_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic_io, "_renameat2_exchange", lambda *a: False)
    _save(tmp_path, "run", {"map.ply": b"old"})
    _save(tmp_path, "run", {"map.ply": b"new"})
    assert (tmp_path / "run" / "map.ply").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_save_killed_between_the_two_renames_is_put_back(tmp_path):
    """Without RENAME_EXCHANGE the old folder is renamed aside first; if the process died
    there, the next save of the same name restores it before replacing it."""
    aside = tmp_path / f".run.old-{DEAD_PID}-0123abcd"
    aside.mkdir()
    (aside / "map.ply").write_bytes(b"old save")
    with SaveFolder(tmp_path, "run", replaceable={"map.ply"}) as folder:
        assert (tmp_path / "run" / "map.ply").read_bytes() == b"old save"  # restored
        folder.write_bytes("map.ply", b"new save")
        folder.commit()
    assert (tmp_path / "run" / "map.ply").read_bytes() == b"new save"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failing_save_leaves_the_old_folder_and_no_staging(tmp_path):
    _save(tmp_path, "run", {"map.ply": b"old", "grid.pgm": b"old"})
    with pytest.raises(RuntimeError), SaveFolder(tmp_path, "run") as folder:
        folder.write_bytes("map.ply", b"new")
        with folder.open("grid.pgm") as f:
            f.write(b"half")
            raise RuntimeError("killed half-way (simulated)")
    run = tmp_path / "run"
    assert (run / "map.ply").read_bytes() == b"old" and (run / "grid.pgm").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_with_other_files_is_never_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _save(tmp_path, "run", {"map.ply": b"x"}, replaceable={"map.ply"})
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/../../b", "", "a//b", "."])
def test_names_that_are_not_plain_relative_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafePathError, match="refused"):
        SaveFolder(tmp_path / "maps", name)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()


def test_a_symlinked_folder_in_the_name_is_refused(tmp_path):
    victim = _victim(tmp_path)
    root = tmp_path / "maps"
    root.mkdir()
    (root / "planted").symlink_to(victim.parent)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _save(root, "planted/run", {"map.ply": b"x"})
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _save(root, "planted", {"map.ply": b"x"})  # the save folder itself
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_a_folder_swapped_for_a_symlink_after_the_check_changes_nothing(tmp_path):
    """The node checked the path on the service thread and the worker wrote later: a
    folder swapped for a symlink in between put every file outside (6 of 6 tries)."""
    victim = _victim(tmp_path)
    root = tmp_path / "maps"
    (root / "a").mkdir(parents=True)
    with SaveFolder(root, "a/run") as folder:
        (root / "a").rename(root / "a_moved")  # the swap, after the folders were opened
        (root / "a").symlink_to(victim.parent)
        folder.write_bytes("map.ply", b"data")
        folder.commit()
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert (root / "a_moved" / "run" / "map.ply").read_bytes() == b"data"
