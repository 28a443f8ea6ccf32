import numpy as np
import pytest
import torch

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    align_points,
    gather_overlap,
    unproject_depth,
)
from scal3r_ros.mapping.sim3 import Sim3


def _rot(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _cloud(rng: np.random.Generator, n: int = 2000) -> np.ndarray:
    return rng.uniform(-3, 3, size=(n, 3)) + np.array([0, 0, 8.0])


def test_exact_sim3_recovered():
    rng = np.random.default_rng(0)
    gt = Sim3(2.7, _rot(rng), rng.normal(size=3))
    src = _cloud(rng)
    dst = gt.apply(src)
    res = align_points(src, dst, rng.uniform(2, 5, len(src)), rng.uniform(2, 5, len(src)))
    assert res.ok, res.reason
    np.testing.assert_allclose(res.sim3.matrix(), gt.matrix(), atol=2e-4)
    assert res.inlier_ratio > 0.99 and res.rmse < 1e-3


def test_outliers_are_downweighted_by_huber():
    rng = np.random.default_rng(1)
    gt = Sim3(0.5, _rot(rng), rng.normal(size=3))
    src = _cloud(rng)
    dst = gt.apply(src) + rng.normal(scale=0.005, size=src.shape)
    dst[:300] += rng.normal(scale=3.0, size=(300, 3))  # 15 % gross outliers
    robust = align_points(src, dst)
    plain = align_points(src, dst, config=AlignmentConfig(max_iters=1, huber_delta=1e9))
    err_r = np.linalg.norm(robust.sim3.apply(src[300:]) - gt.apply(src[300:]), axis=1).mean()
    err_p = np.linalg.norm(plain.sim3.apply(src[300:]) - gt.apply(src[300:]), axis=1).mean()
    assert robust.ok
    assert err_r < 0.5 * err_p


def test_low_confidence_points_are_ignored():
    rng = np.random.default_rng(2)
    gt = Sim3(1.3, _rot(rng), rng.normal(size=3))
    src = _cloud(rng)
    dst = gt.apply(src)
    conf = np.full(len(src), 5.0)
    dst[:500] += 10.0  # corrupt, but with confidence below 0.1 x median
    conf[:500] = 0.1
    res = align_points(src, dst, conf, conf)
    assert res.ok and res.n_points == len(src) - 500
    np.testing.assert_allclose(res.sim3.matrix(), gt.matrix(), atol=2e-4)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("nan", "too_few_points"),
        ("few", "too_few_points"),
        ("point", "no_spread"),
        ("line", "collinear"),
        ("scale", "implausible_scale"),
        ("garbage", "low_inlier_ratio"),
    ],
)
def test_degenerate_overlaps_are_flagged(case: str, reason: str):
    rng = np.random.default_rng(3)
    src = _cloud(rng)
    dst = src.copy()
    if case == "nan":
        src[:] = np.nan
    elif case == "few":
        src, dst = src[:10], dst[:10]
    elif case == "point":
        src[:] = 1.0
    elif case == "line":
        tt = rng.uniform(-1, 1, size=(len(src), 1))
        src = tt * np.array([[1.0, 2.0, 3.0]])
        dst = src * 2
    elif case == "scale":
        dst = src * 1e5
    elif case == "garbage":
        dst = rng.permutation(src)
    res = align_points(src, dst)
    assert not res.ok
    assert res.reason == reason


def test_gather_and_unproject_roundtrip():
    rng = np.random.default_rng(4)
    F, H, W = 3, 12, 16
    K = np.tile(np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]), (F, 1, 1))
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, :3, 3] = rng.normal(size=(F, 3))
    depth = rng.uniform(2, 5, size=(F, H, W)).astype(np.float32)
    pts = unproject_depth(depth, K, c2w).numpy()  # a CPU tensor for numpy input
    # re-project the centre pixel of frame 0
    p = pts[0, 5, 7] - c2w[0, :3, 3]
    np.testing.assert_allclose(p[2], depth[0, 5, 7], rtol=1e-6)
    np.testing.assert_allclose(p[0] / p[2] * 20 + W / 2, 7.5, atol=1e-4)
    gt = Sim3(3.0, _rot(rng), rng.normal(size=3))
    other = gt.apply(pts.reshape(-1, 3)).reshape(pts.shape)
    other[1, :4] = np.nan
    conf = np.ones((F, H, W), np.float32)
    a, b, ca, cb = gather_overlap(other, pts, conf, conf, max_points_per_frame=100)
    assert len(a) == 300 and torch.isfinite(a).all()
    res = align_points(b, a, cb, ca, AlignmentConfig(min_points=20))
    np.testing.assert_allclose(res.sim3.matrix(), gt.matrix(), atol=1e-3)
