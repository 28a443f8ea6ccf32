"""Pose encoding decode/encode vs the official ``decode_camera_params`` (fixture) and itself."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import load_pt

from scal3r_ros.model.pose_encoding import (
    extri_intri_to_pose_encoding,
    extrinsics_to_c2w,
    mat_to_quat,
    pose_encoding_to_c2w_intri,
    pose_encoding_to_extri_intri,
    quat_to_mat,
)

FIXTURE = load_pt("heads_tiny.pt")


# The focal lengths go through torch.tan, whose result may differ by an ulp between CPU kernel
# sets and libm versions (SLEEF's vectorised tan and glibc's are within 1 ulp); one more rounding
# for the division: K agrees to a few fp32 ulps on any machine. w2c has no transcendental (only
# +, *, / and a 4-term sum) and is bit-identical under every kernel set of test_kernel_matrix.py.
K_RTOL = 4 * torch.finfo(torch.float32).eps


def _assert_intrinsics_close(K: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(K, expected, rtol=K_RTOL, atol=0.0)


def test_decode_matches_official() -> None:
    dec = FIXTURE["decode"]
    w2c, K = pose_encoding_to_extri_intri(dec["encoding"], dec["image_hw"])
    assert torch.equal(w2c, dec["w2c"])
    _assert_intrinsics_close(K, dec["K"])


def test_c2w_matches_official_inverse() -> None:
    dec = FIXTURE["decode"]
    c2w, _ = pose_encoding_to_c2w_intri(dec["encoding"], dec["image_hw"])
    assert c2w.shape == (64, 4, 4)
    assert torch.allclose(c2w[:, :3, :4], dec["c2w_3x4"], atol=2e-5)
    assert torch.equal(c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(64, 4))


@pytest.mark.parametrize("case_idx", [0, 1])
def test_decode_of_head_output_matches_official(case_idx: int) -> None:
    case = FIXTURE["cases"][case_idx]
    w2c, K = pose_encoding_to_extri_intri(case["camera"][-1], case["image_hw"])
    assert torch.equal(w2c, case["w2c"])
    _assert_intrinsics_close(K, case["K"])


def test_intrinsics_layout() -> None:
    enc = torch.tensor([0.0, 0, 0, 0, 0, 0, 1, 0.5, 1.5])
    _, K = pose_encoding_to_extri_intri(enc, (154, 518))
    assert K[0, 0] == pytest.approx(259 / math.tan(0.75))  # fx from fov_w and W
    assert K[1, 1] == pytest.approx(77 / math.tan(0.25))  # fy from fov_h and H
    assert (K[0, 2], K[1, 2], K[2, 2]) == (259.0, 77.0, 1.0)
    assert K[0, 1] == 0 and K[1, 0] == 0 and K[2, 0] == 0 and K[2, 1] == 0


def _random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return quat_to_mat(q)


def test_quat_to_mat_gives_rotations_and_is_scale_invariant() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(100, 4, generator=gen, dtype=torch.float64)
    R = quat_to_mat(q)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=torch.float64))
    assert torch.allclose(quat_to_mat(3.7 * q), R, atol=1e-12)
    # scalar-last: (0, 0, sin(a/2), cos(a/2)) is a rotation about z by a
    a = 0.3
    Rz = quat_to_mat(
        torch.tensor([0.0, 0.0, math.sin(a / 2), math.cos(a / 2)], dtype=torch.float64)
    )
    expected = torch.tensor(
        [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
        dtype=torch.float64,
    )
    assert torch.allclose(Rz, expected, atol=1e-12)


def test_mat_to_quat_round_trip_including_half_turns() -> None:
    gen = torch.Generator().manual_seed(1)
    R = _random_rotations(200, gen)
    # add exact 180-degree rotations about several axes (the ill-conditioned case)
    axes = torch.nn.functional.normalize(
        torch.randn(20, 3, generator=gen, dtype=torch.float64), dim=-1
    )
    half_turns = quat_to_mat(torch.cat([axes, torch.zeros(20, 1, dtype=torch.float64)], dim=-1))
    R = torch.cat([R, half_turns, torch.eye(3, dtype=torch.float64)[None]])
    q = mat_to_quat(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(R), dtype=torch.float64))
    assert (q[..., 3] >= 0).all()
    assert torch.allclose(quat_to_mat(q), R, atol=1e-10)


def test_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(2)
    n, hw = 50, (154, 518)
    w2c = torch.cat(
        [_random_rotations(n, gen), torch.randn(n, 3, 1, generator=gen, dtype=torch.float64)],
        dim=-1,
    )
    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 200 + 300 * torch.rand(n, generator=gen, dtype=torch.float64)
    K[:, 1, 1] = K[:, 0, 0] * (0.9 + 0.2 * torch.rand(n, generator=gen, dtype=torch.float64))
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = hw[1] / 2, hw[0] / 2, 1.0
    enc = extri_intri_to_pose_encoding(w2c, K, hw)
    assert enc.shape == (n, 9)
    w2c_back, K_back = pose_encoding_to_extri_intri(enc, hw)
    assert torch.allclose(w2c_back, w2c, atol=1e-10)
    assert torch.allclose(K_back, K, atol=1e-8)


def test_extrinsics_to_c2w_inverts() -> None:
    gen = torch.Generator().manual_seed(3)
    w2c = torch.cat(
        [_random_rotations(10, gen), torch.randn(10, 3, 1, generator=gen, dtype=torch.float64)],
        dim=-1,
    )
    c2w = extrinsics_to_c2w(w2c)
    w2c_h = torch.cat(
        [w2c, torch.tensor([[[0.0, 0, 0, 1]]], dtype=torch.float64).expand(10, 1, 4)], 1
    )
    assert torch.allclose(
        c2w @ w2c_h, torch.eye(4, dtype=torch.float64).expand(10, 4, 4), atol=1e-12
    )
    # a camera's centre in world coordinates maps to the camera origin
    centre = c2w[:, :3, 3:]
    assert torch.allclose(
        w2c[:, :, :3] @ centre + w2c[:, :, 3:],
        torch.zeros(10, 3, 1, dtype=torch.float64),
        atol=1e-12,
    )


def test_unsupported_encoding_raises() -> None:
    with pytest.raises(ValueError):
        pose_encoding_to_extri_intri(torch.zeros(14), (10, 10), "absT_matR_FoV")
