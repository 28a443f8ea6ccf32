"""The 9-d camera encoding predicted by the camera head, and its conversion to matrices.

Encoding ``absT_quaR_FoV`` = ``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]``.

Convention (checked against the official pipeline): the release sets ``use_world_coord=True``,
so ``decode_camera_params(..., inverse=False)`` is called and ``[R | t]`` is **world-to-camera**
(OpenCV axes: x right, y down, z forward). The world frame is the camera of frame 0 of the chunk
(the reordered middle frame), in the network's arbitrary scale. Camera-to-world is its inverse
(``extrinsics_to_c2w``). The quaternion is scalar-last (x, y, z, w) and decoded with a
``2/|q|^2`` factor, so it need not be unit-norm. Intrinsics use the network image size:
``fx = (W/2)/tan(fov_w/2)``, ``fy = (H/2)/tan(fov_h/2)``, ``cx = W/2``, ``cy = H/2``, in pixel-edge
coordinates (pixel ``i`` spans ``[i, i+1]``; the official unprojection uses centres ``i + 0.5``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """(x, y, z, w) quaternions [..., 4] -> rotation matrices [..., 3, 3] (scale-invariant)."""
    i, j, k, r = torch.unbind(quaternions, dim=-1)
    two_s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    matrix = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        dim=-1,
    )
    return matrix.reshape(quaternions.shape[:-1] + (3, 3))


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit (x, y, z, w) quaternions [..., 4] with w >= 0.

    Picks, per matrix, the best-conditioned of the four candidate formulas (stable near 180 deg).
    """
    batch_shape = matrix.shape[:-2]
    m = matrix.reshape(batch_shape + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(m, dim=-1)
    # 4 * component^2 for (w, x, y, z)
    q_abs = (
        torch.stack(
            [
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ],
            dim=-1,
        )
        .clamp(min=0.0)
        .sqrt()
    )
    # candidate (w, x, y, z) quaternions, each scaled by 2 * its largest component
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    candidates = candidates / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(dim=-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(batch_shape + (1, 4)))[
        ..., 0, :
    ]
    wxyz = F.normalize(wxyz, dim=-1)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor,
    image_size_hw: tuple[int, int],
    pose_encoding_type: str = "absT_quaR_FoV",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode [..., 9] encodings to world-to-camera [..., 3, 4] and intrinsics [..., 3, 3].

    ``image_size_hw`` is the network input size (e.g. (154, 518)). Bit-identical to the official
    ``decode_camera_params(cam, H, W, "abs_quat_fov", inverse=False)``.
    """
    if pose_encoding_type != "absT_quaR_FoV":
        raise ValueError(f"Unsupported pose encoding type: {pose_encoding_type}")
    height, width = image_size_hw
    cam = pose_encoding
    height_t = torch.as_tensor(height, dtype=cam.dtype, device=cam.device)
    width_t = torch.as_tensor(width, dtype=cam.dtype, device=cam.device)

    translation = cam[..., 0:3]
    rotation = quat_to_mat(cam[..., 3:7])
    fov = cam[..., 7:9]  # (fov_h, fov_w)
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)

    intrinsics = torch.zeros(cam.shape[:-1] + (3, 3), dtype=cam.dtype, device=cam.device)
    intrinsics[..., 0, 0] = width_t / 2 / torch.tan(fov[..., 1] / 2)
    intrinsics[..., 1, 1] = height_t / 2 / torch.tan(fov[..., 0] / 2)
    intrinsics[..., 0, 2] = width_t / 2
    intrinsics[..., 1, 2] = height_t / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size_hw: tuple[int, int],
    pose_encoding_type: str = "absT_quaR_FoV",
) -> torch.Tensor:
    """Inverse of :func:`pose_encoding_to_extri_intri` (w2c [..., 3, 4] + K -> [..., 9]).

    The principal point is not encoded (the decoder puts it at the image centre).
    """
    if pose_encoding_type != "absT_quaR_FoV":
        raise ValueError(f"Unsupported pose encoding type: {pose_encoding_type}")
    height, width = image_size_hw
    translation = extrinsics[..., :3, 3]
    quat = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([translation, quat, fov_h[..., None], fov_w[..., None]], dim=-1)


def extrinsics_to_c2w(extrinsics: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 3, 4] (or 4x4) rigid transforms -> camera-to-world [..., 4, 4].

    Uses ``R^T`` (exact for the rotations decoded from a quaternion, up to float rounding).
    """
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3:]
    rot_t = rotation.transpose(-1, -2)
    c2w = torch.zeros(
        extrinsics.shape[:-2] + (4, 4), dtype=extrinsics.dtype, device=extrinsics.device
    )
    c2w[..., :3, :3] = rot_t
    c2w[..., :3, 3:] = -rot_t @ translation
    c2w[..., 3, 3] = 1.0
    return c2w


def pose_encoding_to_c2w_intri(
    pose_encoding: torch.Tensor, image_size_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode [..., 9] encodings to camera-to-world [..., 4, 4] and intrinsics [..., 3, 3]."""
    extrinsics, intrinsics = pose_encoding_to_extri_intri(pose_encoding, image_size_hw)
    return extrinsics_to_c2w(extrinsics), intrinsics
