"""The node's side of sessions (issue 17), in process: the placement of ``map`` saved in a
session's ``node`` block and restored, the save that writes ``session/``, the gate that
keeps new frames out of ``map`` until relocalised, odometry across the fix."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from helpers import make_drive, push_and_collect
from scal3r_ros_msgs.srv import SaveMap

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import (
    MapCorrected,
    PointsUpdate,
    PosesUpdate,
    RelocalisationUpdate,
    StatsUpdate,
)
from scal3r_ros.mapping.planning.occupancy import OccupancyConfig, OccupancyGrid
from scal3r_ros.mapping.session import SessionError, read_session
from scal3r_ros.ros.frames import FrameConverter, camera_mount, rigid_inverse
from scal3r_ros.ros.outputs.poses import PoseFrames, PoseOutputs
from scal3r_ros.ros.saving import MapSaver
from scal3r_ros.ros.session import (
    RelocalisationGate,
    decode_grid,
    encode_grid,
    node_block,
    parse_node_block,
    session_path,
)

pytestmark = pytest.mark.ros
N_FRAMES = 24


class _Flat:
    def height(self, p):
        return p[:, 2]


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    drive = make_drive(n_frames=N_FRAMES)
    eng = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(seed=0)))
    push_and_collect(eng, drive)
    return eng


def _converter(engine, xyz=(0.2, 0.0, 1.5), rpy=(0.0, 0.05, 0.0), scale=2.5) -> FrameConverter:
    conv = FrameConverter(camera_mount(xyz, rpy))
    conv.set_anchor(engine.poses()[2][0])
    c, s = np.cos(0.03), np.sin(0.03)
    conv.set_level(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]))
    conv.scale = scale
    return conv


def _block(conv: FrameConverter, grid: dict | None = None) -> dict:
    return node_block(
        conv.placement(),
        levelled=True,
        tilt_deg=1.7,
        scale_source="camera_height",
        scale_metric=True,
        map_frame="map",
        grid=grid,
    )


def test_a_restored_placement_is_the_saved_map_frame_whatever_this_runs_mount(engine):
    saved = _converter(engine)
    block = json.loads(json.dumps(_block(saved)))  # as it goes through session.json
    here = FrameConverter(camera_mount((0.0, 0.3, 1.2), (0.0, 0.0, 0.1)))  # another mount
    here.restore(parse_node_block(block).placement)
    np.testing.assert_allclose(here.engine_to_map(), saved.engine_to_map(), atol=1e-12)
    _, _, c2w = engine.poses()
    # the camera is where the saved run put it; base_link follows this run's mount
    cam_saved = saved.base_poses(c2w) @ saved.T_base_cam
    cam_here = here.base_poses(c2w) @ here.T_base_cam
    np.testing.assert_allclose(cam_here, cam_saved, atol=1e-9)
    np.testing.assert_allclose(here.points(c2w[:, :3, 3]), saved.points(c2w[:, :3, 3]), atol=1e-5)
    here.forget_placement()  # a reset: this run's own map again
    assert here.anchor is None and here.origin is None


def test_the_grid_goes_through_the_node_block_count_for_count():
    grid = OccupancyGrid(OccupancyConfig(resolution=0.25))
    rng = np.random.default_rng(0)
    grid.integrate(rng.uniform(-10, 10, (5000, 3)), _Flat(), np.zeros((1, 3)))
    i0, j0, counts = decode_grid(json.loads(json.dumps(encode_grid(*grid.state(), 0.25))))[:3]
    again = OccupancyGrid(OccupancyConfig(resolution=0.25))
    again.restore(i0, j0, counts)
    np.testing.assert_array_equal(again.values(), grid.values())
    assert again.origin == grid.origin
    # and it goes on integrating where the saved one stood
    more = rng.uniform(-12, 12, (2000, 3))
    grid.integrate(more, _Flat(), None)
    again.integrate(more, _Flat(), None)
    np.testing.assert_array_equal(again.values(), grid.values())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda b: b.update(version=99), "version"),
        (lambda b: b.update(scale=-1.0), "node.scale"),
        (lambda b: b.update(origin=[[1, 2], [3, 4]]), "node.origin"),
        (lambda b: b["level"][0].__setitem__(0, float("nan")), "node.level"),
        (lambda b: b.update(grid={"resolution": 0.25}), "node.grid"),
        (lambda b: b["grid"].update(shape=[3, 5, 5]), "node.grid"),
        (lambda b: b["grid"].update(counts_zlib_b64="not base64!"), "node.grid"),
    ],
)
def test_a_malformed_node_block_is_refused_naming_the_field(engine, change, named):
    grid = encode_grid(0, 0, np.ones((3, 2, 2), np.int32), 0.25)
    block = _block(_converter(engine), grid)
    change(block)
    with pytest.raises(SessionError, match=named):
        parse_node_block(block)


def test_a_session_without_a_node_block_parses_to_none():
    assert parse_node_block(None) is None


def _saver(root, engine, conv, refuse=lambda: ""):
    grid = OccupancyGrid(OccupancyConfig(resolution=0.25))
    grid.integrate(conv.points(engine.map_points(voxelize=False)[0]), _Flat(), None)

    def session(eng):
        data = eng.export_session()
        data.node = _block(conv, encode_grid(*grid.state(), 0.25))
        return data

    planner = types.SimpleNamespace(save=lambda folder: None)
    return MapSaver(conv, root, planner.save, session=session, refuse=refuse)


def _request(saver, engine, name):
    req = SaveMap.Request(name=name, save_map=True, save_trajectory=True)
    return saver.on_request(req, SaveMap.Response(), lambda fn, flush=False: fn(engine))


def test_a_save_writes_its_session_inside_and_replaces_it_as_a_whole(tmp_path, engine):
    conv = _converter(engine)
    saver = _saver(tmp_path / "maps", engine, conv)
    for _ in range(2):  # the second save of the name replaces the first, session and all
        res = _request(saver, engine, "run")
        assert res.success, res.message
    run = tmp_path / "maps" / "run"
    assert str(run / "session") in res.files
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["run"]  # no leftovers
    data = read_session(
        session_path("run", tmp_path / "maps"), expected=engine.session_parameters()
    )
    assert data.n_frames == N_FRAMES
    placed = parse_node_block(data.node)
    here = FrameConverter(conv.T_base_cam)  # this run: the same mount
    here.restore(placed.placement)
    np.testing.assert_allclose(here.engine_to_map(), conv.engine_to_map(), atol=1e-12)
    # the saved trajectory and the session's map frame are the same frame
    tum = np.loadtxt(run / "trajectory_tum.txt")
    _, _, c2w = engine.poses()
    np.testing.assert_allclose(tum[:, 1:4], here.base_poses(c2w)[:, :3, 3], atol=1e-4)


def test_a_failing_session_never_costs_the_save_and_one_window_makes_a_session(tmp_path):
    drive = make_drive(n_frames=16)  # one window: a graph without edges
    eng = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, OracleConfig()))
    push_and_collect(eng, drive)
    res = _request(_saver(tmp_path / "maps", eng, _converter(eng)), eng, "one")
    assert res.success and read_session(tmp_path / "maps" / "one" / "session").n_frames == 16
    warned = []

    def broken(engine):
        raise RuntimeError("disk on fire")

    conv = _converter(eng)
    saver = MapSaver(conv, tmp_path / "maps", lambda f: None, session=broken, warn=warned.append)
    res = _request(saver, eng, "two")
    assert res.success and "no session folder: RuntimeError: disk on fire" in res.message
    assert (tmp_path / "maps" / "two" / "map.ply").is_file()
    assert not (tmp_path / "maps" / "two" / "session").exists() and warned


def test_a_save_while_relocalising_is_refused_with_the_reason(tmp_path, engine):
    saver = _saver(tmp_path / "maps", engine, _converter(engine), refuse=lambda: "relocalising")
    res = _request(saver, engine, "run")
    assert not res.success and "relocalising" in res.message
    assert not (tmp_path / "maps" / "run").exists()


def _poses(ids, c2w, corrected=False, reason="new") -> PosesUpdate:
    ids = np.asarray(ids, np.int64)
    return PosesUpdate(0, ids, 1_000 + ids * 100, c2w[: len(ids)], corrected, reason)


def test_the_gate_keeps_new_frames_out_of_map_until_localised():
    gate = RelocalisationGate()
    c2w = np.tile(np.eye(4), (8, 1, 1))
    everything = [
        _poses([0, 1], c2w),
        PointsUpdate(0, np.zeros((1, 3)), np.zeros((1, 3)), np.ones(1)),
    ]
    assert gate.split(everything).events == everything  # nothing loaded: all passes
    gate.start("s", "mapping", first_new=10)
    stats = StatsUpdate(3, {}, {})
    reloc = RelocalisationUpdate(3, "relocalising", 1, 8, reason="no candidate")
    out = gate.split(
        [
            _poses(range(10, 18), c2w),
            PointsUpdate(3, np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2)),
            MapCorrected(3, {}),
            stats,
            reloc,
        ]
    )
    assert [list(e.frame_ids) for e in out.odometry] == [list(range(10, 18))]
    assert out.events == [] and out.status == [stats, reloc] and gate.relocalising
    # the batch that localises: the window's own poses (new chain) before the fix, then
    # the corrected poses in the loaded map and the correction; a loaded frame's pose
    # is not the node's to publish
    fixed = RelocalisationUpdate(4, "localised", 2, 16, matched_chunk_id=3, inlier_ratio=0.9)
    batch = [
        _poses(range(16, 24), c2w),
        fixed,
        _poses([5, *range(10, 24)], np.tile(np.eye(4), (15, 1, 1)), True, "relocalised"),
        MapCorrected(4, {}),
    ]
    out = gate.split(batch)
    assert [list(e.frame_ids) for e in out.odometry] == [list(range(16, 24))]
    assert [type(e) for e in out.events] == [PosesUpdate, MapCorrected]
    assert list(out.events[0].frame_ids) == list(range(10, 24))
    assert out.localised is fixed and not gate.relocalising and gate.state == "localised"
    later = [_poses([24], c2w), PointsUpdate(5, np.zeros((1, 3)), np.zeros((1, 3)), np.ones(1))]
    assert gate.split(later).events == later


def test_odometry_goes_on_across_the_fix_and_map_odom_places_it():
    drive = make_drive(n_frames=40)
    tf, odom = [], []
    conv = FrameConverter(camera_mount())
    conv.set_anchor(drive.gt_pose(0))
    out = PoseOutputs(conv, PoseFrames(), tf.append, odom.append, lambda m: None)
    gt = np.stack([drive.gt_pose(i) for i in range(40)])
    # before the fix: poses in another gauge (shifted, turned), odom only
    G = np.eye(4)
    G[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    G[:3, 3] = (5, -3, 1)
    ids = np.arange(20, 32)
    odom_conv = FrameConverter(camera_mount())
    odom_conv.set_anchor(G @ gt[20])
    ev = _poses(ids, G @ gt[ids])
    out.on_odometry_only(ev, odom_conv.base_poses(ev.c2w))
    out.on_odometry_only(ev, odom_conv.base_poses(ev.c2w))  # seen: not again
    assert len(odom) == len(ids)
    assert all(t.child_frame_id == "base_link" for m in tf for t in m.transforms)
    # the fix: the same frames in the map, corrected: no odometry again; map -> odom
    out.on_poses(_poses(ids, gt[ids], True, "relocalised"))
    assert len(odom) == len(ids)
    map_odom = [t for t in tf[-1].transforms if t.child_frame_id == "odom"]
    assert len(map_odom) == 1
    T_map_odom = out.T_map_odom
    T_odom_base = odom_conv.base_poses(G @ gt[ids])
    np.testing.assert_allclose(T_map_odom @ T_odom_base, conv.base_poses(gt[ids]), atol=1e-9)
    # the next frames come in map: odometry continues from the fix
    out.on_poses(_poses([32], gt[[32]]))
    assert len(odom) == len(ids) + 1
    T = odom[-1].pose.pose.position
    want = rigid_inverse(T_map_odom) @ conv.base_poses(gt[[32]])[0]
    np.testing.assert_allclose([T.x, T.y, T.z], want[:3, 3], atol=1e-9)
