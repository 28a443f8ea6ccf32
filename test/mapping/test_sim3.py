import numpy as np
import pytest

from scal3r_ros.mapping.sim3 import Sim3, umeyama


def random_sim3(rng: np.random.Generator) -> Sim3:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return Sim3(float(rng.uniform(0.2, 5.0)), R, rng.normal(size=3) * 3)


def test_compose_inverse_matrix_roundtrip():
    rng = np.random.default_rng(0)
    a, b = random_sim3(rng), random_sim3(rng)
    x = rng.normal(size=(10, 3))
    np.testing.assert_allclose((a @ b).apply(x), a.apply(b.apply(x)), atol=1e-10)
    np.testing.assert_allclose((a @ a.inverse()).matrix(), np.eye(4), atol=1e-10)
    np.testing.assert_allclose(Sim3.from_matrix(a.matrix()).matrix(), a.matrix(), atol=1e-10)


def test_apply_pose_keeps_rotation_rigid():
    rng = np.random.default_rng(1)
    a = random_sim3(rng)
    pose = random_sim3(rng)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = pose.R, pose.t
    out = a.apply_pose(c2w)
    np.testing.assert_allclose(out[:3, :3] @ out[:3, :3].T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(out[:3, 3], a.apply(c2w[:3, 3]), atol=1e-10)


def test_umeyama_recovers_similarity_with_weights():
    rng = np.random.default_rng(2)
    gt = random_sim3(rng)
    src = rng.normal(size=(200, 3))
    dst = gt.apply(src)
    w = rng.uniform(0.1, 1.0, size=200)
    # corrupt some points but give them zero weight
    dst[:20] += 50.0
    w[:20] = 0.0
    est = umeyama(src, dst, w)
    np.testing.assert_allclose(est.matrix(), gt.matrix(), atol=1e-8)


def test_umeyama_degenerate_raises():
    with pytest.raises(ValueError):
        umeyama(np.zeros((10, 3)), np.ones((10, 3)))
    with pytest.raises(ValueError):
        Sim3(0.0)
