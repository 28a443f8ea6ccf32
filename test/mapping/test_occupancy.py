"""Occupancy grid from the engine's map of a synthetic drive (known buildings/road)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import PointsUpdate, PosesUpdate
from scal3r_ros.mapping.planning.camera_height import CameraHeightScale
from scal3r_ros.mapping.planning.occupancy import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    OccupancyConfig,
    OccupancyGrid,
    TrajectoryGround,
    read_map_server,
)
from scal3r_ros.mapping.planning.scale import ChunkObservation, GroundPlane
from scal3r_ros.mapping.sim3 import umeyama

N_FRAMES = 48


@pytest.fixture(scope="module")
def mapped():
    """Engine run; chunks as (points, cameras) already in a metric z-up frame (the
    world: what the node gets from FrameConverter), plus the camera-height plane."""
    drive = make_drive(n_frames=N_FRAMES, seed=0)
    eng = MappingEngine(
        EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(seed=2, depth_noise=0.02))
    )
    pushes: list[list] = []  # each push's events (no flush: only whole windows)
    push_and_collect(eng, drive, flush=False, on_push=pushes.append)
    chunks, scale = [], CameraHeightScale(1.65)
    for ev in pushes:
        if ev:
            est = scale.update(ChunkObservation.from_events(ev))
            pts = np.concatenate([e.xyz for e in ev if isinstance(e, PointsUpdate)])
            cams = np.concatenate([e.c2w[:, :3, 3] for e in ev if isinstance(e, PosesUpdate)])
            chunks.append((pts, cams))
    ids, _, c2w = eng.poses()
    S = umeyama(c2w[:, :3, 3], drive.gt_poses()[ids][:, :3, 3])  # engine map -> world (m)
    chunks = [(S.apply(p.astype(np.float64)), S.apply(c)) for p, c in chunks]
    return drive, chunks, est.plane.transformed(S.apply), S.apply(eng.map_points()[0] * 1.0)


def test_ground_plane_from_scale_source_is_the_world_ground(mapped):
    _, _, plane, _ = mapped
    assert plane.normal[2] > np.cos(np.radians(1.0))  # z up within 1 deg
    assert abs(plane.offset) < 0.05  # ground at z = 0 within 5 cm


@pytest.mark.parametrize("ground", ["plane", "trajectory"])
def test_grid_matches_the_scene(mapped, ground):
    drive, chunks, plane, _ = mapped
    grid = OccupancyGrid(OccupancyConfig(resolution=0.25))
    for pts, cams in chunks:
        model = plane if ground == "plane" else TrajectoryGround(cams, 1.65)
        grid.integrate(pts, model, cams)
    v = grid.values()
    assert set(np.unique(v)) <= {FREE, OCCUPIED, UNKNOWN}
    rows, cols = np.nonzero(v == OCCUPIED)
    assert len(rows) > 50
    ox, oy = grid.origin
    r = grid.config.resolution
    centres = np.stack([ox + (cols + 0.5) * r, oy + (rows + 0.5) * r, np.ones(len(rows))], 1)
    # occupied cells are building walls: 1 m above them a building face is close (2 %
    # depth noise spreads wall points by ~0.2-0.4 m at 10-20 m; road cells are >= 1.5 m
    # from the buildings)
    near = drive.surface_distance(centres) < 1.0
    assert near.mean() > 0.9, near.mean()  # measured 0.95
    # the road the car drove is free (camera positions -> cells)
    cams = np.concatenate([c for _, c in chunks])
    ci = np.floor((cams[:, 0] - ox) / r).astype(int)
    cj = np.floor((cams[:, 1] - oy) / r).astype(int)
    assert (v[cj, ci] == FREE).mean() > 0.9
    # far from everything: unknown
    assert v[0, 0] == UNKNOWN and v[-1, -1] == UNKNOWN


def test_rebuild_equals_fresh_grid(mapped):
    _, chunks, plane, map_pts = mapped
    cams = np.concatenate([c for _, c in chunks])
    grid = OccupancyGrid()
    for pts, c in chunks:
        grid.integrate(pts, plane, c)
    before = grid.values().copy()
    moved = map_pts + [5.0, -3.0, 0.0]  # a loop correction moved the whole map
    grid.rebuild(moved, plane, cams + [5.0, -3.0, 0.0])
    fresh = OccupancyGrid()
    fresh.integrate(moved, plane, cams + [5.0, -3.0, 0.0])
    np.testing.assert_array_equal(grid.values(), fresh.values())
    assert grid.origin == fresh.origin and grid.origin != (0.0, 0.0)
    assert (grid.values() == OCCUPIED).sum() > 0.5 * (before == OCCUPIED).sum()


def test_height_bands():
    ground = GroundPlane(np.array([0.0, 0.0, 1.0]), 0.0)
    # two points per 1 m cell along x: ground, low obstacle, tall obstacle, overhang,
    # below ground, one obstacle point + one ground point
    z = np.array([0.0, 0.1, 0.3, 0.3, 1.9, 1.9, 2.5, 2.5, -0.5, -0.5, 1.0, 0.05])
    pts = np.stack([np.arange(12) // 2 * 1.0 + 0.5, np.full(12, 0.5), z], 1)
    grid = OccupancyGrid(OccupancyConfig(resolution=1.0, raytrace=False, grow_margin=0))
    grid.integrate(pts, ground)
    want = [FREE, OCCUPIED, OCCUPIED, UNKNOWN, UNKNOWN, FREE]
    assert grid.values().ravel().tolist() == want
    assert grid.origin == (0.0, 0.0) and grid.shape == (1, 6)


def test_save_follows_map_server_format(mapped, tmp_path):
    _, chunks, plane, _ = mapped
    grid = OccupancyGrid()
    for pts, cams in chunks[:3]:
        grid.integrate(pts, plane, cams)
    pgm, yml = grid.save(tmp_path / "maps" / "grid")
    raw = pgm.read_bytes()
    rows, cols = grid.shape
    assert raw.startswith(b"P5\n") and f"\n{cols} {rows}\n255\n".encode() in raw
    assert set(np.unique(np.frombuffer(raw[-rows * cols :], np.uint8))) <= {0, 205, 254}
    meta = dict(line.split(": ", 1) for line in yml.read_text().splitlines())
    assert meta["image"] == "grid.pgm" and meta["mode"] == "trinary"
    assert meta["negate"] == "0" and float(meta["occupied_thresh"]) == 0.65
    assert float(meta["resolution"]) == grid.config.resolution
    values, res, origin = read_map_server(yml)
    np.testing.assert_array_equal(values, grid.values())  # unknown stays unknown
    assert res == grid.config.resolution and origin == (*grid.origin, 0.0)
    f = grid.msg_fields()
    assert f["data"].dtype == np.int8 and len(f["data"]) == f["width"] * f["height"]
