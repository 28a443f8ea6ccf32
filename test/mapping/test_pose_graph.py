import time

import gtsam
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping.pose_graph import (
    PoseGraphConfig,
    Sim3PoseGraph,
    from_gtsam,
    position_prior_factor,
    to_gtsam,
)
from scal3r_ros.mapping.sim3 import Sim3, umeyama


def random_sim3(rng: np.random.Generator) -> Sim3:
    R = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    return Sim3(float(rng.uniform(0.3, 3.0)), R, rng.normal(size=3) * 3)


def drifted_circle(n: int, seed: int = 0, drift: float = 1.0, noise: float = 0.002):
    """Ground-truth chunk->map poses on a circle (random per-chunk scale) and
    sequential measurements T(k+1 -> k) corrupted by a constant Sim(3) bias (drift)."""
    rng = np.random.default_rng(seed)
    gt = []
    for k in range(n):
        a = 2 * np.pi * k / n
        R = Rotation.from_euler("y", -a).as_matrix()
        s = float(np.exp(rng.normal(0, 0.3)))
        gt.append(Sim3(s, R, np.array([10 * np.cos(a), 0.0, 10 * np.sin(a)])))
    bias = Sim3(
        np.exp(0.01 * drift),
        Rotation.from_rotvec([0, 0.01 * drift, 0.005 * drift]).as_matrix(),
        np.array([0.02 * drift, 0, 0]),
    )
    meas = []
    for k in range(n - 1):
        nz = Sim3(
            np.exp(rng.normal(0, noise)),
            Rotation.from_rotvec(rng.normal(0, noise, 3)).as_matrix(),
            rng.normal(0, noise, 3),
        )
        meas.append(gt[k].inverse() @ gt[k + 1] @ bias @ nz)
    return gt, meas


def chain_graph(gt, meas, **cfg) -> Sim3PoseGraph:
    pg = Sim3PoseGraph(PoseGraphConfig(**cfg))
    pg.add_node(0, gt[0])
    for k, T in enumerate(meas):
        pg.add_sequential(k, k + 1, T)
    return pg


def position_rmse(est: dict[int, Sim3], gt: list[Sim3]) -> float:
    p = np.array([est[k].t for k in range(len(gt))])
    q = np.array([g.t for g in gt])
    return float(np.sqrt(((p - q) ** 2).sum(1).mean()))


def log_scale_rmse(est: dict[int, Sim3], gt: list[Sim3]) -> float:
    return float(np.sqrt(np.mean([np.log(est[k].s / g.s) ** 2 for k, g in enumerate(gt)])))


def test_gtsam_conversion_matches_sim3_action_and_composition():
    rng = np.random.default_rng(0)
    a, b = random_sim3(rng), random_sim3(rng)
    x = rng.normal(size=3)
    ga, gb = to_gtsam(a), to_gtsam(b)
    # gtsam acts as x -> s (R x + t'); ours as x -> s R x + t
    np.testing.assert_allclose(ga.transformFrom(x), a.apply(x), atol=1e-10)
    np.testing.assert_allclose(ga.compose(gb).transformFrom(x), (a @ b).apply(x), atol=1e-10)
    np.testing.assert_allclose(from_gtsam(ga.inverse()).matrix(), a.inverse().matrix(), atol=1e-10)
    np.testing.assert_allclose(from_gtsam(ga).matrix(), a.matrix(), atol=1e-10)
    # BetweenFactor measures X1^-1 X2: between(G_dst, G_src) == G_dst^-1 G_src
    np.testing.assert_allclose(
        from_gtsam(ga.between(gb)).matrix(), (a.inverse() @ b).matrix(), atol=1e-10
    )
    # gtsam's homogeneous matrix is [[R, t'], [0, 1/s]]: the naive reading would be wrong
    assert not np.allclose(ga.matrix(), a.matrix())
    assert isinstance(ga, gtsam.Similarity3)


def test_no_loop_chain_is_unchanged_and_degenerate_graphs_work():
    gt, meas = drifted_circle(10)
    pg = chain_graph(gt, meas)
    before = pg.estimates()
    after = pg.optimize()
    for k in before:
        np.testing.assert_allclose(after[k].matrix(), before[k].matrix(), atol=1e-6)
    assert Sim3PoseGraph().optimize() == {}
    single = Sim3PoseGraph()
    single.add_node(7, gt[3])
    out = single.optimize()
    assert list(out) == [7]
    np.testing.assert_allclose(out[7].matrix(), gt[3].matrix(), atol=1e-9)
    with pytest.raises(KeyError):
        single.add_loop(7, 8, Sim3())


@pytest.mark.parametrize("solver", ["lm", "isam2"])
def test_true_loop_removes_drift(solver):
    gt, meas = drifted_circle(40, seed=1)
    pg = chain_graph(gt, meas, solver=solver)
    drift_pos, drift_scale = position_rmse(pg.estimates(), gt), log_scale_rmse(pg.estimates(), gt)
    pg.add_loop(39, 0, gt[0].inverse() @ gt[39])
    est = pg.optimize()
    opt_pos, opt_scale = position_rmse(est, gt), log_scale_rmse(est, gt)
    # measured: position RMSE drops from ~4.4 to ~0.3 (radius-10 circle), factor ~15
    assert drift_pos > 2.0
    assert opt_pos < 0.15 * drift_pos
    assert opt_scale < 0.5 * drift_scale
    # the anchor stays put
    np.testing.assert_allclose(est[0].matrix(), gt[0].matrix(), atol=1e-5)


def test_outlier_loop_does_limited_damage_with_robust_kernel():
    gt, meas = drifted_circle(40, seed=2, drift=0.3)
    # wrong loop: claims chunk 26 sits exactly on chunk 13 (a third of the circle away)
    wrong = Sim3(gt[26].s / gt[13].s)
    errs = {}
    for kernel in ("cauchy", "none"):
        pg = chain_graph(gt, meas, loop_robust=kernel)
        before = position_rmse(pg.estimates(), gt)
        pg.add_loop(26, 13, wrong)
        errs[kernel] = position_rmse(pg.optimize(), gt) / before
    assert errs["none"] > 3.0  # a plain least-squares loop edge wrecks the map
    assert errs["cauchy"] < 1.2


def test_true_loop_still_corrects_next_to_an_outlier():
    gt, meas = drifted_circle(40, seed=3)
    pg = chain_graph(gt, meas)
    before = position_rmse(pg.estimates(), gt)
    pg.add_loop(26, 13, Sim3(gt[26].s / gt[13].s))
    pg.add_loop(39, 0, gt[0].inverse() @ gt[39])
    assert position_rmse(pg.optimize(), gt) < 0.2 * before


def test_incremental_nodes_chain_on_corrected_estimate():
    gt, meas = drifted_circle(30, seed=4)
    pg = chain_graph(gt[:20], meas[:19])
    pg.add_loop(19, 0, gt[0].inverse() @ gt[19])
    est = pg.optimize()
    for k in range(19, 29):
        init = pg.add_sequential(k, k + 1, meas[k])
        np.testing.assert_allclose(init.matrix(), (pg.estimate(k) @ meas[k]).matrix())
    np.testing.assert_allclose(pg.estimate(20).matrix(), (est[19] @ meas[19]).matrix())
    assert len(pg) == 30 and pg.num_loops == 1
    assert pg.hops(29, 0) == 29
    out = pg.optimize()
    assert set(out) == set(range(30))


def test_weak_sequential_edge_absorbs_the_loop_correction():
    gt, meas = drifted_circle(20, seed=6, drift=0.0)
    meas[9] = meas[9] @ Sim3(1.0, np.eye(3), [3.0, 0.0, 0.0])  # one bad alignment
    errs = {}
    for scale in (1.0, 100.0):
        pg = Sim3PoseGraph()
        pg.add_node(0, gt[0])
        for k, T in enumerate(meas):
            pg.add_sequential(k, k + 1, T, sigma_scale=scale if k == 9 else 1.0)
        pg.add_loop(19, 0, gt[0].inverse() @ gt[19])
        errs[scale] = position_rmse(pg.optimize(), gt)
    # flagged as unreliable, the bad edge takes the correction instead of the whole chain
    assert errs[100.0] < 0.3 * errs[1.0]


def test_optimize_time_100_chunks():
    gt, meas = drifted_circle(100, seed=5, drift=0.3)
    pg = chain_graph(gt, meas)
    pg.add_loop(99, 0, gt[0].inverse() @ gt[99])
    t0 = time.perf_counter()
    pg.optimize()
    # measured ~0.01 s on 2 CPU cores; generous bound
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------ external frame + GNSS priors
ENU_TRUE = Sim3(
    5.0, Rotation.from_euler("xz", [90, 30], degrees=True).as_matrix(), np.r_[100, 200, 3]
)
CAMERA_POINTS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]])  # per chunk


def gnss_graph(gt, meas, sigma_m: float, seed: int, jumps: float = 0.0, robust_k=2.0):
    """A drifted chain plus noisy ENU fixes of three points per chunk; the map -> ENU frame
    starts at the Umeyama fit of the (drifted) chain to the fixes, as a node would."""
    rng = np.random.default_rng(seed)
    pg = chain_graph(gt, meas)
    fixes = []
    for k, g in enumerate(gt):
        for p in CAMERA_POINTS:
            z = ENU_TRUE.apply(g.apply(p[None]))[0] + rng.normal(0, sigma_m, 3)
            if jumps and rng.uniform() < jumps:
                z = z + np.r_[40.0, -30.0, 0.0]  # multipath: tens of metres off
            fixes.append((k, p, z))
    est = pg.estimates()
    src = np.array([est[k].apply(p[None])[0] for k, p, _ in fixes])
    pg.add_frame("enu", umeyama(src, np.array([z for *_, z in fixes])))
    for k, p, z in fixes:
        pg.add_position_prior(k, p, z, sigma_m, "enu", robust_k=robust_k)
    return pg


def enu_rmse(pg: Sim3PoseGraph, gt) -> float:
    """Camera-centre error in metres, each side in ENU by its own frame estimate."""
    est, F = pg.estimates(), pg.frame("enu")
    e = [
        F.apply(est[k].apply(CAMERA_POINTS))[0] - ENU_TRUE.apply(g.apply(CAMERA_POINTS))[0]
        for k, g in enumerate(gt)
    ]
    return float(np.sqrt((np.array(e) ** 2).sum(1).mean()))


def test_position_prior_jacobians_match_numeric_differences():
    gt, meas = drifted_circle(4, seed=3)
    pg = chain_graph(gt, meas)  # a chunk pose as the graph holds one
    noise = gtsam.noiseModel.Diagonal.Sigmas(np.ones(3))
    factor = position_prior_factor(0, 1, np.r_[0.3, -0.2, 1.0], np.r_[120.0, 190, 5], noise)
    values = gtsam.Values()
    values.insert(0, to_gtsam(ENU_TRUE))
    values.insert(1, to_gtsam(pg.estimates()[2]))
    A, b = factor.linearize(values).jacobian()
    keys = factor.keys()
    e0 = factor.unwhitenedError(values)
    num = []
    for key in keys:
        for i in range(7):
            d = np.zeros(7)
            d[i] = 1e-6
            v = gtsam.Values(values)
            v.update(key, values.atSimilarity3(key).retract(d))
            num.append((factor.unwhitenedError(v) - e0) / 1e-6)
    np.testing.assert_allclose(A, np.array(num).T, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(-b, e0, atol=1e-9)


def test_gnss_priors_bound_the_drift_near_the_fix_noise():
    gt, meas = drifted_circle(30, seed=5, drift=3.0)
    pg = gnss_graph(gt, meas, sigma_m=2.0, seed=1)
    before = enu_rmse(pg, gt)
    pg.optimize()
    after = enu_rmse(pg, gt)
    assert before > 10.0  # the drifted chain, best global fit: tens of metres off
    assert after < 2.5, (before, after)  # near the fix noise (2 m per axis: 3.5 m per fix)
    r = np.array([np.linalg.norm(pg.position_residual(i)) for i in range(len(pg.position_priors))])
    assert np.median(r) < 2.0 * np.sqrt(3)


def test_gnss_jumps_are_down_weighted_by_the_kernel():
    gt, meas = drifted_circle(30, seed=5, drift=3.0)
    clean = gnss_graph(gt, meas, sigma_m=2.0, seed=1)
    robust = gnss_graph(gt, meas, sigma_m=2.0, seed=1, jumps=0.1)
    plain = gnss_graph(gt, meas, sigma_m=2.0, seed=1, jumps=0.1, robust_k=None)
    for pg in (clean, robust, plain):
        pg.optimize()
    assert enu_rmse(robust, gt) < 1.5 * enu_rmse(clean, gt) + 0.5
    assert enu_rmse(plain, gt) > 1.5 * enu_rmse(robust, gt)  # without the kernel: pulled


def test_a_position_prior_needs_a_known_frame_and_finite_values():
    gt, meas = drifted_circle(3)
    pg = chain_graph(gt, meas)
    with pytest.raises(KeyError, match="add_frame"):
        pg.add_position_prior(0, np.zeros(3), np.zeros(3), 1.0, "enu")
    pg.add_frame("enu", Sim3.identity())
    with pytest.raises(ValueError, match="finite"):
        pg.add_position_prior(0, np.zeros(3), np.r_[np.nan, 0, 0], 1.0, "enu")
    with pytest.raises(KeyError, match="node 7"):
        pg.add_position_prior(7, np.zeros(3), np.zeros(3), 1.0, "enu")


# ------------------------------------------------------------ odometry (relative motion)
METRES_PER_UNIT = 5.0


def odometry_graph(gt, meas, seed: int, sigma_t: float = 0.05, sigma_r: float = 0.005):
    """The drifted chain plus metric odometry between consecutive chunks' reference
    cameras (noisy), with one metric frame whose scale starts 20% off."""
    rng = np.random.default_rng(seed)
    pg = chain_graph(gt, meas)
    only_scale = np.r_[[1e-6] * 6, 10.0]  # prior sigmas: rotation/translation held, scale free
    pg.add_frame("enu", Sim3(1.2 * METRES_PER_UNIT, np.eye(3), np.zeros(3)), only_scale)
    for k in range(len(gt) - 1):
        a, b = gt[k], gt[k + 1]
        R = a.R.T @ b.R
        t = METRES_PER_UNIT * a.R.T @ (b.t - a.t)
        noise = Rotation.from_rotvec(rng.normal(0, sigma_r, 3)).as_matrix()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R @ noise, t + rng.normal(0, sigma_t, 3)
        sig = np.r_[[sigma_r] * 3, [sigma_t] * 3]
        pg.add_relative_motion(k, np.eye(4), k + 1, np.eye(4), T, sig, "enu")
    return pg


def aligned_rmse(est: dict[int, Sim3], gt) -> float:
    """Chunk-origin RMSE after the best Sim(3) (the map's gauge is free)."""
    p = np.array([est[k].t for k in range(len(gt))])
    q = np.array([g.t for g in gt])
    return float(np.sqrt(((umeyama(p, q).apply(p) - q) ** 2).sum(1).mean()))


def test_odometry_factors_undo_chain_drift_and_find_the_metric_scale():
    gt, meas = drifted_circle(30, seed=5, drift=3.0)
    without = aligned_rmse(chain_graph(gt, meas).estimates(), gt)
    pg = odometry_graph(gt, meas, seed=2)
    pg.optimize()
    with_odom = aligned_rmse(pg.estimates(), gt)
    assert with_odom < 0.2 * without, (without, with_odom)
    assert abs(pg.frame("enu").s / METRES_PER_UNIT - 1) < 0.02  # one metric scale, in the graph


def test_relative_motion_needs_known_nodes_and_a_frame():
    gt, meas = drifted_circle(3)
    pg = chain_graph(gt, meas)
    with pytest.raises(KeyError, match="add_frame"):
        pg.add_relative_motion(0, np.eye(4), 1, np.eye(4), np.eye(4), np.ones(6), "enu")
    pg.add_frame("enu", Sim3.identity())
    with pytest.raises(KeyError, match="node 9"):
        pg.add_relative_motion(0, np.eye(4), 9, np.eye(4), np.eye(4), np.ones(6), "enu")
