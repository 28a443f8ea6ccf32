"""Metric scale sources on synthetic drives with known scale (oracle backend, engine)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import push_and_collect
from stereo_drive import StereoDrive

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import PosesUpdate
from scal3r_ros.mapping.planning.camera_height import CameraHeightScale
from scal3r_ros.mapping.planning.odometry import OdometryScale
from scal3r_ros.mapping.planning.scale import ChunkObservation, GroundPlane, NoScale
from scal3r_ros.mapping.planning.scale_sources import make_scale_source
from scal3r_ros.mapping.planning.stereo import StereoBaselineScale, baseline_from_projection
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.mapping.sim3 import Sim3, umeyama

N_FRAMES = 64
NOISY = OracleConfig(seed=1, depth_noise=0.05, rot_noise_deg=0.5)


def run_engine(drive: SyntheticDrive, oracle: OracleConfig, stereo: bool = False):
    """Engine over the drive; returns (per-chunk observations, true metres per map unit,
    per-frame (stamp, gt position)). The true scale: Umeyama of the engine's camera
    centres onto the ground truth. ``stereo``: each frame's camera, as the events of its
    first pose name it."""
    eng = MappingEngine(EngineConfig.low_latency(), OracleBackend(drive, oracle))
    pushes: list[list] = []  # each push's events (no flush: only whole windows)
    push_and_collect(eng, drive, flush=False, on_push=pushes.append)
    cameras: dict[int, str] = {}
    obs = []
    for ev in pushes:
        for e in ev:
            if isinstance(e, PosesUpdate):
                cameras.update(zip(e.frame_ids.tolist(), e.camera_ids, strict=False))
        if ev:
            obs.append(ChunkObservation.from_events(ev, cameras.__getitem__ if stereo else None))
    ids, _, c2w = eng.poses()
    true = umeyama(c2w[:, :3, 3], drive.gt_poses()[ids][:, :3, 3]).s
    return obs, true


DRIVE = dict(n_frames=N_FRAMES, seed=0)  # the conftest's ``drive`` fixture


@pytest.fixture(scope="module")
def exact(drive):
    return run_engine(drive, OracleConfig(seed=1))


@pytest.fixture(scope="module")
def noisy(drive):
    return run_engine(drive, NOISY)


# ---------------------------------------------------------------- camera height
def test_camera_height_recovers_true_scale(exact, noisy):
    for (obs, true), tol_each, tol_final in ((exact, 0.005, 0.002), (noisy, 0.05, 0.03)):
        src = CameraHeightScale(1.65)
        for o in obs:
            e = src.update(o)
            assert e.ok, e.status
            assert abs(e.measured / true - 1) < tol_each  # measured: exact ~2e-4, noisy ~1.5e-2
        assert abs(e.scale / true - 1) < tol_final  # measured: exact ~2e-4, noisy ~4e-3
        assert e.confidence > 0.5 and e.metric
        # the reported plane is the ground: the chunk's cameras sit 1.65 m above it
        h = e.plane.height(o.chunk_c2w[:, :3, 3]) * e.scale
        np.testing.assert_allclose(h, 1.65, rtol=0.05)


def _drop_ground(o: ChunkObservation, plane: GroundPlane, scale: float) -> ChunkObservation:
    """The same chunk with every point within 0.5 m of the ground removed."""
    keep = plane.height(o.points) * scale > 0.5
    return ChunkObservation(
        o.stamps_ns, o.camera_ids, o.c2w, o.points[keep], o.confidence[keep], o.chunk_c2w
    )


def test_camera_height_falls_back_without_ground(exact):
    obs, true = exact
    src = CameraHeightScale(1.65)
    for o in obs[:3]:
        good = src.update(o)
    # no points at all, then points with the ground cut out (walls only)
    empty = ChunkObservation(o.stamps_ns, o.camera_ids, o.c2w, chunk_c2w=o.chunk_c2w)
    for bad in (empty, _drop_ground(obs[3], good.plane, good.scale)):
        e = src.update(bad)
        assert not e.ok and "no ground visible" in e.status, e.status
        assert e.scale == good.scale  # last good estimate, no jump
        assert e.plane is good.plane
        assert e.confidence < good.confidence
    assert src.update(obs[4]).ok  # and it recovers


def test_camera_height_before_any_ground_says_so():
    src = CameraHeightScale(1.65)
    e = src.update(ChunkObservation(chunk_c2w=np.eye(4)[None]))
    assert not e.ok and not e.metric and e.scale == 1.0 and "no estimate yet" in e.status


def test_outliers_are_gated_and_changes_rate_limited(exact):
    obs, true = exact
    src = CameraHeightScale(1.65)
    for o in obs[:4]:
        good = src.update(o)
    # a chunk whose geometry is 3x too large: measured scale 1/3 -> rejected
    big = ChunkObservation(
        o.stamps_ns,
        o.camera_ids,
        o.c2w,
        obs[4].points * 3,
        obs[4].confidence,
        obs[4].chunk_c2w.copy(),
    )
    big.chunk_c2w[:, :3, 3] *= 3
    e = src.update(big)
    assert not e.ok and "outlier" in e.status and e.scale == good.scale
    assert e.measured == pytest.approx(good.scale / 3, rel=0.01)
    # a persistent change is re-admitted, but never faster than max_step per update
    prev = e.scale
    for _ in range(12):
        e = src.update(big)
        assert abs(np.log(e.scale / prev)) <= src.config.smoothing.max_step + 1e-12
        prev = e.scale
    assert e.scale < good.scale * 0.7  # moving towards the new level, 5 % per update


# ---------------------------------------------------------------- odometry
def test_odometry_recovers_true_scale_and_waits_when_standing_still(drive, noisy):
    obs, true = noisy
    rng = np.random.default_rng(0)
    src = OdometryScale(window_s=4.0)
    gt = drive.gt_poses()[:, :3, 3]
    k = 0
    for o in obs:
        # 50 Hz wheel odometry with 1 cm jitter, stamps not equal to the camera's
        while k < 5 * (drive.index_of_stamp(int(o.stamps_ns.max())) + 1):
            t = drive.stamp_ns(0) + k * 20_000_000 + 3_000_000
            x = k / 5 + 0.03
            i0 = min(int(x), drive.n_frames - 2)
            p = gt[i0] + (x - i0) * (gt[i0 + 1] - gt[i0])
            src.add_reference(t, p + rng.normal(scale=0.01, size=3))
            k += 1
        e = src.update(o)
    assert e.ok, e.status
    assert abs(e.scale / true - 1) < 0.02  # measured ~1e-3

    # standing still: 5 s of samples without motion (reference and map)
    t_last = int(obs[-1].stamps_ns.max())
    p_map = obs[-1].c2w[np.argmax(obs[-1].stamps_ns), :3, 3]
    held = None
    for j in range(1, 60):
        t = t_last + j * 100_000_000
        src.add_reference(t, gt[-1] + rng.normal(scale=0.005, size=3))
        still = ChunkObservation(np.array([t]), ("cam0",), np.eye(4)[None].copy())
        still.c2w[0, :3, 3] = p_map
        s = src.update(still)
        if s.ok:  # the window still holds the last metres of motion
            continue
        assert "standing still" in s.status, s.status
        held = held if held is not None else s.scale
        assert s.scale == held  # from the first fallback on, the estimate is frozen
    assert held is not None and abs(held / e.scale - 1) < 0.03  # no jump while stopping


def test_odometry_without_reference_reports_it():
    e = OdometryScale().update(ChunkObservation())
    assert not e.ok and "no reference odometry" in e.status and e.scale == 1.0


# ---------------------------------------------------------------- stereo
def test_stereo_recovers_true_scale():
    drive = StereoDrive(SyntheticConfig(n_frames=32, seed=0), baseline=0.54)
    obs, true = run_engine(drive, NOISY, stereo=True)
    src = StereoBaselineScale(0.54)
    for o in obs:
        e = src.update(o)
    assert e.ok, e.status
    assert abs(e.scale / true - 1) < 0.05  # measured ~1e-3
    # the same poses without a baseline, and a single camera: fallbacks with a reason
    nob = StereoBaselineScale(None)
    e2 = [nob.update(o) for o in obs][-1]
    assert not e2.ok and "missing stereo baseline" in e2.status and e2.scale == 1.0
    nob.set_baseline(
        baseline_from_projection([700.0, 0, 600, -700.0 * 0.54, 0, 700, 180, 0, 0, 0, 1, 0])
    )
    assert nob.config.baseline_m == pytest.approx(0.54)
    assert abs(nob.update().scale / true - 1) < 0.05
    mono = StereoBaselineScale(0.54)
    for o in obs:
        left = [k for k, c in enumerate(o.camera_ids) if c == "left"]
        e3 = mono.update(ChunkObservation(o.stamps_ns[left], ("left",) * len(left), o.c2w[left]))
    assert not e3.ok and "stereo pairs" in e3.status and e3.scale == 1.0


def test_baseline_from_projection():
    assert baseline_from_projection([718.9, 0, 607.2, -386.1, 0, 718.9, 185.2, 0, 0, 0, 1, 0]) == (
        pytest.approx(386.1 / 718.9)
    )
    assert baseline_from_projection([718.9, 0, 607.2, 0, 0, 718.9, 185.2, 0, 0, 0, 1, 0]) is None
    assert baseline_from_projection([1.0, 2.0]) is None


# ---------------------------------------------------------------- misc
def test_no_scale_and_factory():
    e = NoScale().update(ChunkObservation())
    assert e.scale == 1.0 and e.status == "arbitrary scale" and e.source == "none"
    assert isinstance(make_scale_source("camera_height", camera_height_m=2.0), CameraHeightScale)
    assert make_scale_source("camera_height", camera_height_m=2.0).config.height_m == 2.0
    with pytest.raises(ValueError):
        make_scale_source("lidar")


def test_ground_plane_transformed():
    rng = np.random.default_rng(0)
    plane = GroundPlane(np.array([0.0, -1.0, 0.0]), 1.5)  # y = 1.5, "up" = -y
    S = Sim3(
        2.5,
        Sim3.from_matrix(np.eye(4)).R @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]),
        np.array([1.0, 2.0, 3.0]),
    )
    p2 = plane.transformed(S.apply)
    x = rng.normal(size=(20, 3))
    np.testing.assert_allclose(p2.height(S.apply(x)), 2.5 * plane.height(x), atol=1e-9)
