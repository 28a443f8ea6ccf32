"""The node's saves (issue 16, items 1 and 2): never outside output_dir, never through a
symlink, and one save's files replace the previous save's as a set or not at all.

``MapSaver.save`` and ``MapSaver.on_request`` (the ``~/save_map`` service) run with the
node's pieces (converter, the planner's grid writer, output_dir) and a worker ``call``
that runs at once, on an engine that mapped the synthetic drive (oracle backend).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from helpers import make_drive, push_and_collect
from scal3r_ros_msgs.srv import SaveMap
from write_faults import kill_mid_write

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.planning.occupancy import OccupancyConfig, OccupancyGrid
from scal3r_ros.ros.frames import FrameConverter, camera_mount
from scal3r_ros.ros.outputs.planner import PlannerOutputs
from scal3r_ros.ros.saving import SAVE_FILES, MapSaver

pytestmark = pytest.mark.ros
N_FRAMES = 24


class _Flat:
    def height(self, p):
        return p[:, 2]


def make_engine(seed: int = 0) -> MappingEngine:
    drive = make_drive(n_frames=N_FRAMES)
    eng = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(seed=seed)))
    push_and_collect(eng, drive)
    return eng


def stand_in(root: Path, engine: MappingEngine, scale: float = 1.0, on_call=None):
    """The node's `MapSaver` and its worker's ``call``, without ROS."""
    conv = FrameConverter(camera_mount((0.0, 0.0, 1.5), (0.0, 0.0, 0.0)))
    conv.set_anchor(engine.poses()[2][0])
    conv.scale = scale
    grid = OccupancyGrid(OccupancyConfig(resolution=0.25))
    grid.integrate(conv.points(engine.map_points(voxelize=False)[0]), _Flat(), None)
    planner = types.SimpleNamespace(grid=grid)
    planner.save = lambda folder: PlannerOutputs.save(planner, folder)

    def call(fn, timeout=60.0, flush=False):
        if on_call is not None:
            on_call()  # what happens between the service's check and the worker's write
        return fn(engine)

    return MapSaver(conv, root, planner.save), call


def srv_save(node, name: str) -> SaveMap.Response:
    saver, call = node
    request = SaveMap.Request(name=name, save_map=True, save_trajectory=True)
    return saver.on_request(request, SaveMap.Response(), call)


def _victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "map.pcd"
    victim.write_bytes(b"precious")
    return victim


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return make_engine()


def test_a_save_writes_every_file_once_and_nothing_else(tmp_path, engine):
    node = stand_in(tmp_path / "maps", engine)
    res = srv_save(node, "run1")
    assert res.success, res.message
    run = tmp_path / "maps" / "run1"
    assert sorted(Path(f).name for f in res.files) == sorted(SAVE_FILES)
    assert sorted(p.name for p in run.iterdir()) == sorted(SAVE_FILES)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["run1"]  # no staging
    assert np.loadtxt(run / "trajectory_tum.txt").shape == (N_FRAMES, 8)


def test_a_symlink_planted_at_a_temp_name_is_never_followed(tmp_path, engine):
    """Issue 16: ``maps/planted/.map.pcd.tmp -> ../outside/...`` made a save overwrite a
    file outside output_dir."""
    victim = _victim(tmp_path)
    run = tmp_path / "maps" / "planted"
    run.mkdir(parents=True)
    for name in SAVE_FILES:  # the temp names of the earlier writer
        (run / f".{name}.tmp").symlink_to(victim)
    res = srv_save(stand_in(tmp_path / "maps", engine), "planted")
    assert res.success, res.message
    assert victim.read_bytes() == b"precious"
    assert (run / "map.pcd").read_bytes().startswith(b"# .PCD")


def test_a_folder_swapped_for_a_symlink_after_the_check_gets_nothing(tmp_path, engine):
    """Issue 16: the service thread checked the path, the worker wrote later; a folder
    swapped for a symlink in between put every file outside (6 of 6 tries)."""
    victim = _victim(tmp_path)
    root = tmp_path / "maps"
    (root / "site").mkdir(parents=True)

    def swap() -> None:
        (root / "site").rename(root / "site_old")
        (root / "site").symlink_to(victim.parent, target_is_directory=True)

    res = srv_save(stand_in(root, engine, on_call=swap), "site/run")
    assert not res.success and "refused" in res.message and "symbolic link" in res.message
    assert sorted(p.name for p in victim.parent.iterdir()) == ["map.pcd"]
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/../../b"])
def test_names_outside_output_dir_are_refused(tmp_path, engine, name):
    res = srv_save(stand_in(tmp_path / "maps", engine), name)
    assert not res.success and "refused" in res.message
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()


def test_a_save_replaces_the_previous_one_as_a_set(tmp_path, engine):
    root = tmp_path / "maps"
    assert srv_save(stand_in(root, engine), "run").success
    saver, _ = stand_in(root, engine)
    files = saver.save(engine, "run", save_map=False, root=root)
    assert sorted(f.name for f in files) == sorted(n for n in SAVE_FILES if "trajectory" in n)
    assert sorted(p.name for p in (root / "run").iterdir()) == sorted(f.name for f in files)


def test_a_kill_during_a_save_leaves_the_previous_save_whole(tmp_path, engine):
    """The grid was written in place: a kill during a save left a truncated grid.pgm
    beside a map of the new save. Now the folder holds the old save, byte for byte."""
    root = tmp_path / "maps"
    assert srv_save(stand_in(root, engine), "run").success
    before = _tree(root / "run")
    kill_mid_write(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from pathlib import Path
        from test_save_safety import make_engine, stand_in, srv_save
        engine = make_engine(seed=5)
        srv_save(stand_in(Path({str(root)!r}), engine, scale=2.0), "run")
    """)
    assert _tree(root / "run") == before
    res = srv_save(stand_in(root, engine, scale=2.0), "run")  # and the next save is clean
    assert res.success, res.message
    assert _tree(root / "run") != before
    assert sorted(p.name for p in root.iterdir()) == ["run"]


def test_a_folder_of_the_users_is_never_replaced(tmp_path, engine):
    run = tmp_path / "maps" / "notes"
    run.mkdir(parents=True)
    (run / "todo.txt").write_text("the user's")
    res = srv_save(stand_in(tmp_path / "maps", engine), "notes")
    assert not res.success and "todo.txt" in res.message
    assert _tree(run) == {"todo.txt": b"the user's"}
