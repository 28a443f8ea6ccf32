"""The torch geometry of the package against the numpy it replaced (``reference_geometry``).

Sizes: a small window pair for every run and, marked slow, the real one -- two 60/30
windows of a KITTI-like drive at the network's 518x154 depth resolution, 30 overlap
frames = ~2.4 M points for the alignment.

Tolerances, and why:
- unprojection: the camera coordinates are computed exactly as numpy did (float64 with
  the float64 intrinsics, rounded to float32), the float32 rigid transform is a 3-term dot
  product whose rounding depends on the summation/FMA order of the kernel: at most a few
  float32 ulps of |R x| + |t| per point.
- gathering, the confidence mask, the voxel step, loop subsampling: selections, exact.
- alignment: numpy accumulated the weighted sums of each fit in float32 (naive running
  sums along the point axis over all N points), torch accumulates them in float64. Both
  approximate the same estimator evaluated exactly, which the test computes in float64
  (``irls_float64``). Torch agrees with it to ~1e-14; on the 2.4 M-point overlap numpy's
  float32 sums are off by 7e-5 in s (relative), 9e-5 in R (max element) and 1e-3 of the
  overlap's spread in t (t = mu_d - s R mu_s inherits the error of the means of points
  far from the origin); on 29 k points 1e-7, 1e-6, 2e-6. So torch is checked against the
  truth within 1e-9 and against numpy within 5x the observed float32 error: 5e-4 in s and
  R, 5e-3 of the spread in t. The fit is more exact than before; the most sensitive figure,
  the singular-value ratio of the last IRLS fit, was off by 2 % in float32.
- the map's confidence filter: the per-frame mean confidence is summed in float64 (numpy:
  float32), so a pixel within float32 rounding of the 0.75 x mean threshold may flip; the
  maps may differ by such pixels only.
- thumbnail descriptors: float32 pooling and normalisation, within 1e-6.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import reference_geometry as ref
import torch

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    align_points,
    gather_overlap,
    unproject_depth,
)
from scal3r_ros.mapping.backends.protocol import ChunkPrediction
from scal3r_ros.mapping.loop_closure import thumbnail_descriptor, thumbnail_descriptors
from scal3r_ros.mapping.loop_geometry import ChunkGeometryStore
from scal3r_ros.mapping.map_store import MapStore, voxel_downsample
from scal3r_ros.mapping.placement import WindowPoints
from scal3r_ros.mapping.sim.windows import kitti_like_windows
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.spill import SpillBudget

EPS32 = float(np.finfo(np.float32).eps)
SIZES = ["small", pytest.param("kitti", marks=pytest.mark.slow)]
_CACHE: dict[str, dict] = {}


def scene(size: str) -> dict:
    """Two consecutive windows in time order with numpy (reference) and torch points."""
    if size not in _CACHE:
        if size == "kitti":
            win = kitti_like_windows(2, 60, 30, (154, 518), seed=3)
            overlap = 30
        else:
            win = kitti_like_windows(2, 12, 6, (40, 120), seed=3)
            overlap = 6
        out: dict = {"overlap": overlap, "win": win}
        for key, spec, pred in zip("ab", win.specs, win.preds, strict=True):
            p = pred.take(np.argsort(np.asarray(spec.network_order)))  # time order
            pts = ref.unproject_depth(p.depth, p.intrinsics, p.c2w)
            valid = np.isfinite(p.depth) & (p.depth > 0) & np.isfinite(pts).all(-1)
            out[key] = (p, pts, valid)
            out["w" + key] = WindowPoints.from_prediction(spec, pred, False)
        _CACHE[size] = out
    return _CACHE[size]


def overlap_np(sc: dict):
    """The reference's overlap correspondences (a = previous window, b = this one)."""
    (pa, pts_a, va), (pb, pts_b, vb), n = sc["a"], sc["b"], sc["overlap"]
    return ref.gather_overlap(
        pts_a[-n:], pts_b[:n], pa.depth_conf[-n:], pb.depth_conf[:n], va[-n:], vb[:n]
    )


def irls_float64(src, dst, cs, cd, cfg: AlignmentConfig):
    """The official estimator with every step in float64: the truth both approximate."""
    thr = np.float32(min(float(np.median(cd)), float(np.median(cs))) * cfg.conf_threshold)
    m = (cd > thr) & (cs > thr)
    src, dst = src[m].astype(np.float64), dst[m].astype(np.float64)
    w0 = np.sqrt(cd[m] * cs[m]).astype(np.float64)

    def fit(w):
        wn = w / w.sum()
        mu_s, mu_d = wn @ src, wn @ dst
        xs, xd = src - mu_s, dst - mu_d
        s = np.sqrt(wn @ (xd * xd).sum(1)) / np.sqrt(wn @ (xs * xs).sum(1))
        U, sv, Vt = np.linalg.svd(s * (xs * wn[:, None]).T @ xd)
        if np.linalg.det(Vt.T @ U.T) < 0:
            Vt[2] *= -1
        R = Vt.T @ U.T
        return s, R, mu_d - s * R @ mu_s, sv[1] / sv[0]

    s, R, t, sv_ratio = fit(w0)
    prev, d = np.inf, cfg.huber_delta
    for _ in range(cfg.max_iters):
        res = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
        w = w0 * np.where(res > d, d / np.maximum(res, 1e-30), 1.0)
        s2, R2, t2, sv2 = fit(w / (w.sum() + 1e-12))
        err = np.sum(np.where(res <= d, 0.5 * res * res, d * (res - 0.5 * d)) * w0)
        moved = abs(s2 - s) + np.linalg.norm(t2 - t)
        turned = np.arccos(np.clip((np.trace(R2 @ R.T) - 1) / 2, -1, 1))
        if (moved < cfg.exit_thres and turned < np.radians(0.1)) or abs(
            prev - err
        ) < cfg.exit_thres * prev:
            break
        prev, s, R, t, sv_ratio = err, s2, R2, t2, sv2
    return s, R, t, sv_ratio


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("size", SIZES)
def test_unprojection_and_validity_match_numpy(size):
    sc = scene(size)
    p, pts, valid = sc["b"]
    w = sc["wb"]
    got = w.points.numpy()
    # a few float32 ulps of |R x| + |t| (3-term dot products, kernel-dependent rounding)
    bound = 4 * EPS32 * (np.abs(pts).sum(-1) + np.abs(p.c2w[:, None, None, :3, 3]).sum(-1))
    err = np.abs(got - pts).max(-1)
    assert (err <= bound).all(), float((err / bound).max())
    np.testing.assert_array_equal(w.valid.numpy(), valid)
    np.testing.assert_array_equal(w.conf.numpy(), p.depth_conf)
    np.testing.assert_array_equal(w.pred.c2w, p.c2w)  # small host copies for the trajectory


@pytest.mark.parametrize("size", SIZES)
def test_overlap_gathering_is_the_same_selection(size):
    sc = scene(size)
    (pa, pts_a, va), (pb, _, vb), n = sc["a"], sc["b"], sc["overlap"]
    wa, wb = sc["wa"], sc["wb"]
    # same inputs to both, so the selection itself is compared
    got = gather_overlap(
        wa.points[-n:], wb.points[:n], wa.conf[-n:], wb.conf[:n], wa.valid[-n:], wb.valid[:n]
    )
    want = ref.gather_overlap(
        wa.points[-n:].numpy(),
        wb.points[:n].numpy(),
        pa.depth_conf[-n:],
        pb.depth_conf[:n],
        va[-n:],
        vb[:n],
    )
    for g, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.numpy(), r)
    # per-frame cap: the same pixels (numpy's argpartition order is unspecified)
    k = 50
    args = (pts_a[-n:], wb.points[:n].numpy(), pa.depth_conf[-n:], pb.depth_conf[:n])
    got = gather_overlap(*args, va[-n:], vb[:n], max_points_per_frame=k)
    want = ref.gather_overlap(*args, va[-n:], vb[:n], max_points_per_frame=k)
    assert len(got[1]) == len(want[1]) == n * k
    for f in range(n):
        g, r = got[1].numpy()[f * k : (f + 1) * k], want[1][f * k : (f + 1) * k]
        np.testing.assert_array_equal(g[np.lexsort(g.T)], r[np.lexsort(r.T)])


@pytest.mark.parametrize("size", SIZES)
def test_alignment_matches_the_float64_estimator_and_numpy_within_float32(size):
    sc = scene(size)
    a, b, ca, cb = overlap_np(sc)
    cfg = AlignmentConfig()
    got = align_points(torch.from_numpy(b), torch.from_numpy(a), cb, ca, cfg)
    want = ref.align_points(b, a, cb, ca, cfg)
    s, R, t, sv_ratio = irls_float64(b, a, cb, ca, cfg)
    spread = got.extras["spread_dst"]
    assert got.ok and want.ok and got.n_points == want.n_points
    # torch (float64 sums) vs the float64 truth: summation order only
    assert abs(got.sim3.s / s - 1) < 1e-9
    assert np.abs(got.sim3.R - R).max() < 1e-9
    assert np.linalg.norm(got.sim3.t - t) < 1e-9 * spread
    assert abs(got.extras["singular_ratio"] / sv_ratio - 1) < 1e-9
    # numpy (float32 running sums) vs the truth, and so vs torch: float32 accumulation
    for res in (want, got):
        assert abs(res.sim3.s / s - 1) < 5e-4
        assert np.abs(res.sim3.R - R).max() < 5e-4
        assert np.linalg.norm(res.sim3.t - t) < 5e-3 * spread
    assert abs(got.inlier_ratio - want.inlier_ratio) < 1e-3
    assert abs(got.rmse / want.rmse - 1) < 1e-3
    for k in ("spread_src", "spread_dst"):  # initial weights: little float32 drift
        assert abs(got.extras[k] / want.extras[k] - 1) < 1e-5, k
    # the singular-value ratio of the last IRLS fit drifts most in float32 (2 % here:
    # numpy 0.385, truth and torch 0.377); it only feeds the collinearity test at 1e-4
    assert abs(got.extras["singular_ratio"] / want.extras["singular_ratio"] - 1) < 0.1


def _degenerate(case: str, rng: np.random.Generator):
    n = 400
    src = rng.normal(size=(n, 3)).astype(np.float32)
    dst = (2.0 * src + 1.0).astype(np.float32)
    cs = rng.uniform(1, 3, n).astype(np.float32)
    cd = rng.uniform(1, 3, n).astype(np.float32)
    if case == "too_few_points":
        src, dst, cs, cd = src[:20], dst[:20], cs[:20], cd[:20]
    elif case == "nan_points":
        src[: n - 30] = np.nan  # only 30 finite left
    elif case == "nan_confidence":
        cd[::2] = np.nan
    elif case == "collinear":
        line = rng.normal(size=(n, 1)).astype(np.float32)
        src = line * np.array([[1.0, 2.0, 3.0]], np.float32)
        dst = 2 * src + 1
    elif case == "no_spread":
        src[:] = src[0]
        dst[:] = dst[0]
    elif case == "implausible_scale":
        dst = (1e5 * src).astype(np.float32)
    elif case == "low_inlier_ratio":
        dst = rng.normal(size=(n, 3)).astype(np.float32) * 5
    return src, dst, cs, cd


@pytest.mark.parametrize(
    "case",
    [
        "too_few_points",
        "nan_points",
        "nan_confidence",
        "collinear",
        "no_spread",
        "implausible_scale",
        "low_inlier_ratio",
    ],
)
def test_degenerate_overlaps_get_the_same_verdict(case):
    src, dst, cs, cd = _degenerate(case, np.random.default_rng(7))
    got = align_points(torch.from_numpy(src), torch.from_numpy(dst), cs, cd)
    want = ref.align_points(src, dst, cs, cd)
    assert (got.ok, got.reason, got.n_points) == (want.ok, want.reason, want.n_points)
    if case == "nan_confidence":  # NaN confidences are dropped, the rest is a clean fit
        assert got.ok
        np.testing.assert_allclose(got.sim3.matrix(), want.sim3.matrix(), atol=1e-5)
    else:
        assert not got.ok


@pytest.mark.parametrize("size", SIZES)
def test_voxel_selection_is_exact_including_confidence_ties(size):
    (p, pts, valid) = scene(size)["b"]
    xyz = pts[valid]
    conf = np.round(p.depth_conf[valid], 1)  # many equal confidences: ties by index
    for voxel in (0.05, 0.5):
        got = voxel_downsample(torch.from_numpy(xyz), torch.from_numpy(conf), voxel)
        np.testing.assert_array_equal(got.numpy(), ref.voxel_downsample(xyz, conf, voxel))


@pytest.mark.parametrize("size", SIZES)
def test_map_insert_matches_numpy_but_threshold_rounding(size):
    """The same points into both stores (the unprojection is checked above): the filter,
    the voxel step and the merge with a chunk's stored points give the same map."""
    sc = scene(size)
    win, n = sc["win"], sc["overlap"]
    stores = {"torch": MapStore(), "numpy": ref.ReferenceMapStore()}
    out: dict[str, list] = {k: [] for k in stores}
    for key, inp, spec in zip("ab", win.inputs, win.specs, strict=True):
        p, pts, valid = sc[key]
        own = list(range(len(p.depth))) if key == "a" else list(range(n // 2, len(p.depth)))
        rgb = inp.images[np.argsort(np.asarray(spec.network_order))][own]
        fids = np.asarray(spec.frame_ids)[own]
        g = Sim3(1.5 if key == "a" else 1.2, np.eye(3), np.full(3, float(key == "b")))
        conf = np.where(valid[own], p.depth_conf[own], np.nan)
        args = (pts[own], rgb, conf, fids, p.depth[own])
        # the same chunk twice: the second insert merges with the stored points
        out["numpy"].append(stores["numpy"].insert(1, g, *args))
        t_args = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
        out["torch"].append(stores["torch"].insert(1, g, *t_args[:3], fids, t_args[4]))
    assert stores["torch"].voxel_size == stores["numpy"].voxel_size
    for (xt, rt, ct), (xn, rn, cn) in zip(out["torch"], out["numpy"], strict=True):
        assert (xt.dtype, rt.dtype, ct.dtype) == (xn.dtype, rn.dtype, cn.dtype)
        rows_t = {(*x, *r, c) for x, r, c in zip(xt, rt, ct, strict=True)}
        rows_n = {(*x, *r, c) for x, r, c in zip(xn, rn, cn, strict=True)}
        differ = len(rows_t ^ rows_n)
        assert len(xn) > 100 and differ <= max(4, 1e-4 * len(xn)), (differ, len(xn))
    assert len(stores["torch"]) == pytest.approx(len(stores["numpy"]), abs=4, rel=1e-4)


def test_map_filter_flips_only_pixels_at_the_threshold():
    (p, _, valid) = scene("small")["b"]
    conf = np.where(valid, p.depth_conf, np.nan).astype(np.float32)
    mean = np.array([c[v].mean() for c, v in zip(conf, valid, strict=True)], np.float32)
    want = valid & (conf > 0.75 * mean[:, None, None])
    from scal3r_ros.mapping.map_store import _frame_means

    c_t, v_t = torch.from_numpy(conf), torch.from_numpy(valid)
    got = (v_t & (c_t > _frame_means(c_t, v_t)[:, None, None] * 0.75)).numpy()
    flips = got != want
    near = np.abs(conf - 0.75 * mean[:, None, None]) <= 4 * EPS32 * np.abs(conf)
    assert not (flips & ~near).any()


def test_loop_geometry_store_keeps_the_same_subsample_from_tensors(tmp_path):
    sc = scene("small")
    p, _, valid = sc["b"]
    w = sc["wb"]
    stores = [ChunkGeometryStore(2, 4, str(tmp_path), SpillBudget(1 << 30)) for _ in range(2)]
    stores[0].put(1, w.frame_ids, w.points, w.conf, w.valid, p.c2w, p.descriptors)
    stores[1].put(1, w.frame_ids, w.points.numpy(), p.depth_conf, valid, p.c2w, p.descriptors)
    a, b = stores[0].get(1), stores[1].get(1)
    for x, y in ((a.points, b.points), (a.conf, b.conf), (a.valid, b.valid), (a.c2w, b.c2w)):
        assert isinstance(x, np.ndarray) and x.flags.c_contiguous
        np.testing.assert_array_equal(x, y)
    assert not np.shares_memory(a.points, w.points.numpy())  # a copy, not a view


def test_thumbnail_descriptors_match_numpy():
    sc = scene("small")
    images = sc["win"].inputs[0].images
    got = thumbnail_descriptors(torch.from_numpy(images))
    want = ref.thumbnail_descriptors(images)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(thumbnail_descriptor(images[0]), want[0], atol=1e-6)
    grey = images[..., 0]
    want_grey = ref.thumbnail_descriptor(grey[1])
    np.testing.assert_allclose(thumbnail_descriptor(grey[1]), want_grey, atol=1e-6)


def test_prediction_as_tensors_or_numpy_gives_the_same_window():
    sc = scene("small")
    spec, pred = sc["win"].specs[1], sc["win"].preds[1]
    as_t = ChunkPrediction(
        **{
            k: (torch.from_numpy(v) if k in ("c2w", "intrinsics", "depth", "depth_conf") else v)
            for k, v in vars(pred).items()
        }
    )
    wt = WindowPoints.from_prediction(spec, as_t, False)
    wn = sc["wb"]
    for x, y in ((wt.points, wn.points), (wt.conf, wn.conf), (wt.valid, wn.valid)):
        assert isinstance(x, torch.Tensor)
        assert torch.equal(x, y)
    np.testing.assert_array_equal(wt.pred.c2w, wn.pred.c2w)
    # take() keeps tensors tensors (the network's order back to time order)
    back = as_t.take([2, 0, 1])
    assert isinstance(back.depth, torch.Tensor) and torch.equal(
        back.depth, torch.from_numpy(pred.depth[[2, 0, 1]])
    )


def test_unprojection_of_a_pixel_centre_round_trips():
    K = np.array([[[50.0, 0, 8.0], [0, 40.0, 6.0], [0, 0, 1]]])
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = [1.0, -2.0, 3.0]
    depth = np.full((1, 12, 16), 4.0, np.float32)
    pts = unproject_depth(torch.from_numpy(depth), K, c2w)
    assert pts.dtype == torch.float32 and pts.shape == (1, 12, 16, 3)
    x, y, z = (pts[0, 6, 8] - torch.tensor([1.0, -2.0, 3.0])).tolist()
    assert (
        z == pytest.approx(4.0)
        and x == pytest.approx(0.5 / 50 * 4)
        and y == pytest.approx(0.5 / 40 * 4)
    )


def test_an_open_autocast_region_does_not_lower_the_geometry():
    """The network may run under bf16 autocast; the geometry after it stays float32."""
    sc = scene("small")
    p, _, _ = sc["b"]
    depth = torch.from_numpy(p.depth)
    want = unproject_depth(depth, p.intrinsics, p.c2w)
    images = sc["win"].inputs[0].images
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = unproject_depth(depth, p.intrinsics, p.c2w)
        desc = thumbnail_descriptors(torch.from_numpy(images))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    np.testing.assert_array_equal(desc, thumbnail_descriptors(images))


class _TensorOracle:
    """The oracle backend handing over CPU tensors instead of numpy arrays."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def infer(self, chunk, gcs_state):
        pred = self.inner.infer(chunk, gcs_state)
        maps = ("c2w", "intrinsics", "depth", "depth_conf", "points", "points_conf")
        return ChunkPrediction(
            **{k: torch.from_numpy(v) if k in maps else v for k, v in vars(pred).items()}
        )

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_engine_maps_the_same_from_tensor_and_numpy_predictions():
    from helpers import make_drive, push_and_collect

    from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
    from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
    from scal3r_ros.mapping.events import PointsUpdate
    from scal3r_ros.mapping.windowing import WindowConfig

    drive = make_drive(24)
    runs = []
    for wrap in (lambda b: b, _TensorOracle):
        backend = wrap(OracleBackend(drive, OracleConfig(depth_noise=0.02)))
        cfg = EngineConfig(window=WindowConfig(8, 4), frame_clouds=True)
        eng = MappingEngine(cfg, backend)
        events = push_and_collect(eng, drive)
        pts = [e for e in events if isinstance(e, PointsUpdate)]
        runs.append((eng.poses()[2], eng.map_points(voxelize=False), pts))
    (c2w_n, map_n, pts_n), (c2w_t, map_t, pts_t) = runs
    np.testing.assert_array_equal(c2w_t, c2w_n)
    for a, b in zip(map_t, map_n, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(pts_t) == len(pts_n) > 0
    assert all(isinstance(e.xyz, np.ndarray) for e in pts_t)  # events stay numpy


def test_scal3r_backend_prediction_stays_a_tensor_on_its_device():
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig

    backend = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(max_size=70, device="cpu"))
    win = scene("small")["win"]
    images = np.stack([backend.prepare(img, None)[0] for img in win.inputs[0].images[:4]])
    chunk = replace(win.inputs[0], images=images, frame_ids=win.inputs[0].frame_ids[:4])
    pred = backend.infer(chunk, backend.new_gcs_state("causal"))
    for k in ("c2w", "intrinsics", "depth", "depth_conf"):
        x = getattr(pred, k)
        assert isinstance(x, torch.Tensor) and x.device.type == "cpu", k
    assert pred.c2w.dtype == torch.float64 and pred.depth.dtype == torch.float32
    assert isinstance(pred.descriptors, np.ndarray) and pred.descriptors.shape[0] == 4
    # c2w is the inverse of the head's world-to-camera: rigid up to the head's float32
    eye = pred.c2w[:, :3, :3] @ pred.c2w[:, :3, :3].transpose(1, 2)
    torch.testing.assert_close(
        eye, torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-5, rtol=0
    )
    assert torch.equal(pred.c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(4, 4).double())


@pytest.mark.gpu
def test_cuda_geometry_matches_the_cpu():
    """The same torch code on the GPU: selections exact, points and fits within rounding."""
    sc = scene("small")
    spec, pred = sc["win"].specs[1], sc["win"].preds[1]
    on_gpu = ChunkPrediction(
        **{
            k: (
                torch.from_numpy(v).cuda()
                if k in ("c2w", "intrinsics", "depth", "depth_conf")
                else v
            )
            for k, v in vars(pred).items()
        }
    )
    wg = WindowPoints.from_prediction(spec, on_gpu, False)
    wc = sc["wb"]
    assert wg.points.device.type == "cuda"
    torch.testing.assert_close(wg.points.cpu(), wc.points, rtol=1e-6, atol=1e-5)
    assert torch.equal(wg.valid.cpu(), wc.valid)
    n = sc["overlap"]
    wa = sc["wa"]
    fits = []
    for dev in ("cpu", "cuda"):
        a, b, ca, cb = gather_overlap(
            wa.points[-n:].to(dev),
            wc.points[:n].to(dev),
            wa.conf[-n:].to(dev),
            wc.conf[:n].to(dev),
            wa.valid[-n:].to(dev),
            wc.valid[:n].to(dev),
        )
        fits.append(align_points(b, a, cb, ca))
    np.testing.assert_allclose(fits[1].sim3.matrix(), fits[0].sim3.matrix(), atol=1e-9)
    xyz = wc.points[wc.valid]
    conf = wc.conf[wc.valid]
    sel_c = voxel_downsample(xyz, conf, 0.2)
    sel_g = voxel_downsample(xyz.cuda(), conf.cuda(), 0.2)
    assert torch.equal(sel_g.cpu(), sel_c)
