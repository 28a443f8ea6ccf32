"""Known intrinsics (parameter ``intrinsics``): the camera's K instead of a wrong predicted
focal length puts the map on the true surfaces; the predicted / known focal ratio is
reported per window; windows without a K for every frame fall back (counted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.alignment import unproject_depth
from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.config import MapSection, WindowSection
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import FrameCloudsUpdate, MapUpdate, StatsUpdate
from scal3r_ros.mapping.intrinsics import choose_intrinsics, focal_ratio, scale_to_depth
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.trajectory import ate_sim3

FOCAL_ERROR = 1.2  # the network's focal length 20 % too long


@pytest.fixture(scope="module")
def drive() -> SyntheticDrive:
    return make_drive(n_frames=60)


def run(
    drive: SyntheticDrive, mode: str, frames=None, **oracle
) -> tuple[MappingEngine, list[MapUpdate]]:
    cfg = EngineConfig.low_latency(loop_closure=False, intrinsics=mode, frame_clouds=True)
    backend = OracleBackend(drive, OracleConfig(seed=1, focal_error=FOCAL_ERROR, **oracle))
    eng = MappingEngine(cfg, backend)
    return eng, push_and_collect(eng, drive if frames is None else frames)


def surface_distance(drive: SyntheticDrive, eng: MappingEngine) -> np.ndarray:
    """Map points' distances to the scene (map -> world by the trajectory's Sim(3))."""
    _, _, c2w = eng.poses()
    _, S = ate_sim3(c2w, drive.gt_poses())
    xyz, _, _ = eng.map_points()
    return drive.surface_distance(S.apply(xyz.astype(np.float64)))


@pytest.fixture(scope="module")
def runs(drive):
    return {mode: run(drive, mode) for mode in ("predicted", "camera_info")}


def test_known_k_puts_the_map_on_the_true_surfaces_a_wrong_focal_does_not(drive, runs):
    d_pred = surface_distance(drive, runs["predicted"][0])
    d_known = surface_distance(drive, runs["camera_info"][0])
    assert len(d_pred) > 10_000 and len(d_known) > 10_000
    assert d_known.mean() < 0.01  # metres: exact ground truth
    assert d_pred.mean() > 0.1  # measured 0.41 m with a 20 % focal error
    assert d_pred.mean() > 20 * d_known.mean()


@pytest.mark.parametrize("mode", ["predicted", "camera_info"])
def test_every_window_reports_the_focal_ratio_and_the_k_it_used(drive, runs, mode):
    eng, events = runs[mode]
    stats = [e for e in events if isinstance(e, StatsUpdate)]
    assert len(stats) == eng.n_chunks > 1
    for s in stats:
        assert s.intrinsics_source == mode and s.intrinsics_fallbacks == 0
        assert s.focal_ratio == pytest.approx(FOCAL_ERROR, rel=1e-9)
    # the per-frame depth events carry the K the points were made with
    clouds = [e for e in events if isinstance(e, FrameCloudsUpdate)]
    assert sum(len(c.frame_ids) for c in clouds) == drive.n_frames
    want = drive.K.copy()
    if mode == "predicted":
        want[0, 0] *= FOCAL_ERROR
        want[1, 1] *= FOCAL_ERROR
    for c in clouds:
        np.testing.assert_allclose(c.intrinsics, np.broadcast_to(want, c.intrinsics.shape))


def test_windows_without_a_known_k_for_every_frame_fall_back_and_are_counted(drive):
    frames = [drive.frame(i) for i in range(drive.n_frames)]
    frames[20].intrinsics = None  # in two windows (16 frames, 8 overlap)
    eng, events = run(drive, "camera_info", frames)
    stats = {e.chunk_id: e for e in events if isinstance(e, StatsUpdate)}
    fell_back = [c for c, s in stats.items() if s.intrinsics_source == "predicted"]
    assert fell_back == [c for c in stats if 20 in eng.chunk_frames(c)]
    assert len(fell_back) == 2
    assert all(stats[c].focal_ratio == 0.0 for c in fell_back)  # nothing to compare with
    assert max(s.intrinsics_fallbacks for s in stats.values()) == 2
    last = stats[max(stats)]
    assert last.intrinsics_source == "camera_info" and last.intrinsics_fallbacks == 2


def _half_resolution(chunk: ChunkInput, pred: ChunkPrediction) -> ChunkPrediction:
    """A network whose depth map is half the input's size (2x2 means), K predicted at it."""

    def pool(a: np.ndarray) -> np.ndarray:
        f, h, w = a.shape
        return a.reshape(f, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).astype(a.dtype)

    K = pred.intrinsics.copy()
    K[:, :2] /= 2.0
    return ChunkPrediction(
        c2w=pred.c2w,
        intrinsics=K,
        depth=pool(pred.depth),
        depth_conf=pool(pred.depth_conf),
        descriptors=pred.descriptors,
    )


def test_a_depth_map_of_another_resolution_gets_the_known_k_scaled_to_it(drive):
    eng, events = run(drive, "camera_info", corrupt=_half_resolution)
    stats = [e for e in events if isinstance(e, StatsUpdate)]
    assert stats and all(s.focal_ratio == pytest.approx(FOCAL_ERROR) for s in stats)
    d = surface_distance(drive, eng)
    # 2x2 depth means blur box edges only: most points still lie on the surfaces
    assert np.median(d) < 0.01 and d.mean() < 0.1


def test_scale_to_depth_matches_a_pooled_depth_map():
    """A fronto-parallel plane at half resolution: its points (K scaled) are the means of
    the full-resolution points (pixel-edge convention, as the preprocessing's resize)."""
    K = np.array([[[100.0, 0, 80], [0, 90.0, 24], [0, 0, 1]]])
    depth = np.full((1, 48, 160), 7.0, np.float32)
    full = unproject_depth(depth, K, np.eye(4)[None]).numpy()
    half_K = scale_to_depth(K, (48, 160), (24, 80))
    half = unproject_depth(depth[:, ::2, ::2], half_K, np.eye(4)[None]).numpy()
    pooled = full.reshape(1, 24, 2, 80, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(half, pooled, atol=1e-5)
    np.testing.assert_array_equal(scale_to_depth(K, (48, 160), (48, 160)), K)


def test_choose_intrinsics_keeps_the_prediction_on_its_device_and_checks_the_mode():
    K = np.array([[[100.0, 0, 80], [0, 90.0, 24], [0, 0, 1]]] * 2)
    pred = ChunkPrediction(
        c2w=torch.eye(4, dtype=torch.float64).repeat(2, 1, 1),
        intrinsics=torch.from_numpy(K * np.array([[[1.1], [1.3], [1.0]]])),
        depth=torch.ones(2, 48, 160),
        depth_conf=torch.ones(2, 48, 160),
    )
    assert focal_ratio(pred.intrinsics.numpy(), K) == pytest.approx(1.2)
    out, choice = choose_intrinsics(pred, K, (48, 160), "camera_info")
    assert (choice.source, choice.fallback) == ("camera_info", False)
    assert choice.focal_ratio == pytest.approx(1.2)
    np.testing.assert_array_equal(out.intrinsics, K)
    assert out.depth is pred.depth  # nothing else copied or moved
    out, choice = choose_intrinsics(pred, None, (48, 160), "camera_info")
    assert out is pred and choice.fallback and choice.focal_ratio == 0.0
    out, choice = choose_intrinsics(pred, K, (48, 160), "predicted")
    assert out is pred and choice.source == "predicted" and not choice.fallback
    with pytest.raises(ValueError, match="intrinsics must be one of"):
        choose_intrinsics(pred, K, (48, 160), "calibrated")


def test_loop_chunks_use_the_known_k_too(drive):
    eng = MappingEngine(
        EngineConfig.low_latency(intrinsics="camera_info"),
        OracleBackend(drive, OracleConfig(focal_error=FOCAL_ERROR)),
    )
    for i in range(16):
        eng.push(drive.frame(i))
    pred = eng.infer(eng.chunk_input([0, 1, 2], chunk_id=99))
    np.testing.assert_allclose(pred.intrinsics, np.broadcast_to(drive.K, (3, 3, 3)))


def test_the_engine_config_reads_the_map_section():
    cfg = EngineConfig.from_sections(WindowSection(), MapSection(intrinsics="camera_info"))
    assert cfg.intrinsics == "camera_info"
    assert EngineConfig.from_sections(WindowSection()).intrinsics == "predicted"
    with pytest.raises(ValueError, match="intrinsics must be one of"):
        EngineConfig(intrinsics="calibrated")


@pytest.mark.parametrize("source_hw", [(376, 1241), (480, 640), (720, 540)])
def test_a_camera_info_k_maps_to_the_network_input_as_the_preprocessing_does(source_hw):
    """A blob where a CameraInfo K (pixel centres at integers) projects a point, through
    the official resize/crop (`preprocess_image_reference`), is where the K of
    ``to_pixel_edges`` + ``ResizeCrop.intrinsics_to_network`` (`Scal3RBackend.prepare`)
    projects it in the network input: the prepared K follows the image to a small
    fraction of a pixel (measured < 0.01 px; 0.3-0.7 px without the half-pixel
    conversion), on a plain resize and on a resize with a crop."""
    from scal3r_ros.mapping.undistort import to_pixel_edges
    from scal3r_ros.model.preprocess import compute_target_size, preprocess_image_reference

    H, W = source_hw
    K_ros = np.array([[0.9 * W, 0, W / 2 - 3.7], [0, 0.92 * W, H / 2 + 2.1], [0, 0, 1.0]])
    target = compute_target_size(H, W)
    rays = np.array([[x, y, 1.0] for x in (-0.2, 0.0, 0.17) for y in (-0.1, 0.06)])
    uv = (K_ros @ rays.T).T[:, :2]  # OpenCV pixel coordinates in the source
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for u, v in uv:
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 6.0**2))
    rgb = np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    net, plan = preprocess_image_reference(rgb, target)
    K_net = plan.intrinsics_to_network(to_pixel_edges(K_ros))
    want = (K_net @ rays.T).T[:, :2]  # pixel-edge coordinates in the network input
    g = net[..., 0].astype(np.float64)
    r = int(4 * 6.0 / min(plan.scale_xy)) + 1  # the blob's 4 sigma at network resolution
    for x, y in want:
        x0, y0 = int(x), int(y)
        win = g[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
        ys, xs = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1] + 0.5  # pixel centres
        got = ((xs * win).sum() / win.sum(), (ys * win).sum() / win.sum())
        assert np.hypot(got[0] - x, got[1] - y) < 0.05, (got, (x, y))  # measured < 0.01


def test_the_scal3r_backend_unprojects_with_the_prepared_camera_k(drive):
    """The real backend (tiny random network): its prediction's intrinsics are tensors; the
    window's events carry the camera's K as ``Backend.prepare`` mapped it to the network
    input, and the focal ratio compares the network's guess with it."""
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
    from scal3r_ros.mapping.windowing import WindowConfig

    backend = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cpu", max_size=56))
    cfg = EngineConfig(
        window=WindowConfig(chunk_size=4, overlap=2),
        loop_closure=False,
        intrinsics="camera_info",
        frame_clouds=True,
    )
    eng = MappingEngine(cfg, backend)
    events = push_and_collect(eng, [drive.frame(i) for i in range(6)])
    _, K_net = backend.prepare(drive.frame(0).image, drive.K)
    stats = [e for e in events if isinstance(e, StatsUpdate)]
    clouds = [e for e in events if isinstance(e, FrameCloudsUpdate)]
    assert stats and all(s.intrinsics_source == "camera_info" for s in stats)
    assert all(s.focal_ratio > 0 for s in stats)  # random weights: inf focal lengths, too
    assert clouds and clouds[0].depth.shape[1:] == backend.target_hw
    for c in clouds:
        np.testing.assert_allclose(c.intrinsics, np.broadcast_to(K_net, c.intrinsics.shape))
