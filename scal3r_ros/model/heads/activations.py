"""Output activations of the Scal3R heads (same names and behaviour as VGGT's ``head_act.py``).

The release checkpoint uses: camera ``trans_act="linear"``, ``quat_act="linear"``,
``fl_act="relu"``; point head ``activation="inv_log"``; depth head ``activation="exp"``; both
dense heads ``conf_activation="expp1"``. There are no clamps before ``exp`` (the official clamps
are commented out), so very large logits overflow to ``inf`` exactly like the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9, "absT_matR_FoV": 14}


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp(|y|) - 1)``: undoes the symmetric log used to train the point head."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def svd_orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (det +1) to each 3x3 matrix, rows normalised first (official recipe)."""
    shape = matrix.shape
    matrix = matrix.reshape(-1, 3, 3)
    matrix = F.normalize(matrix, p=2, dim=-1).transpose(-1, -2)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    v = vh.transpose(-1, -2)
    det = torch.det(v @ u.transpose(-1, -2)).view(-1, 1, 1)
    rotation = torch.cat([v[:, :, :-1], v[:, :, -1:] * det], dim=-1) @ u.transpose(-1, -2)
    return rotation.reshape(shape)


def base_pose_act(pose_enc: torch.Tensor, act_type: str = "linear") -> torch.Tensor:
    """Activation of one slice (translation, rotation or field of view) of a pose encoding."""
    if act_type == "linear":
        return pose_enc
    if act_type == "inv_log":
        return inverse_log_transform(pose_enc)
    if act_type == "exp":
        return torch.exp(pose_enc)
    if act_type == "relu":
        return F.relu(pose_enc)
    if act_type == "svd_orthogonalize":
        if pose_enc.shape[-1] != 9:
            raise ValueError(f"svd_orthogonalize needs 9 values, got {pose_enc.shape[-1]}")
        rot = svd_orthogonalize(pose_enc.reshape(*pose_enc.shape[:-1], 3, 3))
        return rot.reshape(*pose_enc.shape[:-1], 9)
    raise ValueError(f"Unknown act_type: {act_type}")


def activate_pose(
    pred_pose_enc: torch.Tensor,
    trans_act: str = "linear",
    quat_act: str = "linear",
    fl_act: str = "linear",
    pose_encoding_type: str = "absT_quaR_FoV",
) -> torch.Tensor:
    """Activate a raw pose encoding ``[..., T(3) | R(4 or 9) | FoV(2)]`` slice by slice."""
    if pose_encoding_type == "absT_quaR_FoV":
        rot_end = 7
    elif pose_encoding_type == "absT_matR_FoV":
        rot_end = 12
    else:
        raise ValueError(f"Unsupported camera encoding type: {pose_encoding_type}")
    trans = base_pose_act(pred_pose_enc[..., :3], trans_act)
    rot = base_pose_act(pred_pose_enc[..., 3:rot_end], quat_act)
    fov = base_pose_act(pred_pose_enc[..., rot_end:], fl_act)
    return torch.cat([trans, rot, fov], dim=-1)


def activate_head(
    out: torch.Tensor,
    activation: str = "norm_exp",
    conf_activation: str = "expp1",
    conf_relu_max: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a dense head output into activated values and confidence.

    Args:
        out: [N, C, H, W] raw output; the last channel is the confidence logit.

    Returns:
        values [N, H, W, C-1] and confidence [N, H, W].
    """
    fmap = out.permute(0, 2, 3, 1)  # [N, H, W, C]
    xyz = fmap[..., :-1]
    conf = fmap[..., -1]

    if activation == "norm_exp":
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        pts = xyz / d * torch.expm1(d)
    elif activation == "norm":
        pts = xyz / xyz.norm(dim=-1, keepdim=True)
    elif activation == "exp":
        pts = torch.exp(xyz)
    elif activation == "relu":
        pts = F.relu(xyz)
    elif activation == "leaky_relu":
        pts = F.leaky_relu(xyz)
    elif activation == "inv_log":
        pts = inverse_log_transform(xyz)
    elif activation == "xy_inv_log":
        xy, z = xyz.split([2, 1], dim=-1)
        z = inverse_log_transform(z)
        pts = torch.cat([xy * z, z], dim=-1)
    elif activation == "xy_exp":
        xy, z = xyz.split([2, 1], dim=-1)
        z = torch.exp(z)
        pts = torch.cat([xy * z, z], dim=-1)
    elif activation == "sigmoid":
        pts = torch.sigmoid(xyz)
    elif activation == "linear":
        pts = xyz
    else:
        raise ValueError(f"Unknown activation: {activation}")

    if conf_activation == "expp1":
        conf_out = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf_out = conf.exp()
    elif conf_activation == "sigmoid":
        conf_out = torch.sigmoid(conf)
    elif conf_activation == "elup2":
        conf_out = F.elu(conf) + 2
    elif conf_activation == "symelup2":
        # elu below conf_relu_max, mirrored elu above it (bounded growth), then +2
        upper = conf_relu_max - F.elu(conf_relu_max - conf)
        conf_out = torch.where(conf > conf_relu_max, upper, F.elu(conf)) + 2
    else:
        raise ValueError(f"Unknown conf_activation: {conf_activation}")
    return pts, conf_out
