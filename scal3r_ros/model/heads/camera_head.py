"""Camera head: iterative refinement of a 9-d pose encoding from the per-frame camera tokens.

Same design and attribute names as the official (VGGT) ``CameraHead`` so that ``cam_decoder.*``
keys load strictly. Per iteration (reference §2.5):

    cond  = embed_pose(empty_pose_tokens)            first iteration
          = embed_pose(previous raw encoding)        later (detached)
    shift, scale, gate = Linear(SiLU(cond)).chunk(3)
    y     = gate * (LN_noaffine(tok) * (1 + scale) + shift) + tok        (AdaLN)
    y     = trunk(y)                                 4 Blocks, attention across the S frames
    raw  += pose_branch(trunk_norm(y))               (raw = delta the first time)
    out   = activate_pose(raw)                       T linear, quat linear, FoV ReLU

The trunk attends over frames (sequence = S camera tokens), with no qk-norm and no RoPE.
Only the last iteration's output is used by the pipeline. Run it in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scal3r_ros.model.heads.activations import POSE_ENCODING_DIMS, activate_pose
from scal3r_ros.model.layers.block import Block
from scal3r_ros.model.layers.mlp import Mlp


class CameraHead(nn.Module):
    """Predicts a pose encoding per frame from the camera token of the last trunk layer.

    Args:
        dim_in: token width (2 x trunk width: frame and global halves concatenated).
        trunk_depth: number of transformer blocks in the refinement trunk.
        pose_encoding_type: ``"absT_quaR_FoV"`` (9 values, used by Scal3R) or ``"absT_matR_FoV"``.
        num_heads, mlp_ratio, init_values: trunk block settings (init_values = LayerScale init).
        trans_act, quat_act, fl_act: activations of translation, rotation and field of view.
        use_scale, scale_act: optional extra scale output (off in Scal3R).
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        pose_encoding_type: str = "absT_quaR_FoV",
        num_heads: int = 16,
        mlp_ratio: int = 4,
        init_values: float = 0.01,
        trans_act: str = "linear",
        quat_act: str = "linear",
        fl_act: str = "relu",
        use_scale: bool = False,
        scale_act: str = "exp",
    ) -> None:
        super().__init__()
        if pose_encoding_type not in POSE_ENCODING_DIMS:
            raise ValueError(f"Unsupported camera encoding type: {pose_encoding_type}")
        self.target_dim = POSE_ENCODING_DIMS[pose_encoding_type]
        self.pose_encoding_type = pose_encoding_type
        self.trans_act = trans_act
        self.quat_act = quat_act
        self.fl_act = fl_act
        self.trunk_depth = trunk_depth

        self.trunk = nn.Sequential(
            *[
                Block(dim=dim_in, num_heads=num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)

        self.use_scale = use_scale
        self.scale_act = scale_act
        if use_scale:
            self.target_dim += 1

        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in, bias=True))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(
            in_features=dim_in, hidden_features=dim_in // 2, out_features=self.target_dim, drop=0
        )

    def forward(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor] | dict[int, torch.Tensor],
        num_iterations: int = 4,
    ) -> list[torch.Tensor]:
        """Return the activated pose encoding [B, S, target_dim] after each iteration.

        Args:
            aggregated_tokens_list: its entry ``[-1]`` (last layer; a dict keyed -1 works) is
                [B, S, P, dim_in]; token 0 of every frame is the camera token.
            num_iterations: refinement steps (4 in the release).
        """
        tokens = aggregated_tokens_list[-1]
        pose_tokens = tokens[:, :, 0].to(self.token_norm.weight.dtype)  # [B, S, C]
        pose_tokens = self.token_norm(pose_tokens)
        return self.trunk_fn(pose_tokens, num_iterations)

    def trunk_fn(self, pose_tokens: torch.Tensor, num_iterations: int) -> list[torch.Tensor]:
        """Iterative refinement; ``pose_tokens`` is the normalised [B, S, C] camera tokens."""
        B, S, _ = pose_tokens.shape
        pred_pose_enc: torch.Tensor | None = None
        outputs: list[torch.Tensor] = []
        normed_tokens = self.adaln_norm(pose_tokens)  # same every iteration

        for _ in range(num_iterations):
            if pred_pose_enc is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                cond = self.embed_pose(pred_pose_enc.detach())  # [B, S, C]

            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            modulated = gate * (normed_tokens * (1 + scale) + shift) + pose_tokens
            modulated = self.trunk(modulated)  # attention across the S frames
            delta = self.pose_branch(self.trunk_norm(modulated))  # [B, S, target_dim]
            pred_pose_enc = delta if pred_pose_enc is None else pred_pose_enc + delta

            activated = activate_pose(
                pred_pose_enc,
                trans_act=self.trans_act,
                quat_act=self.quat_act,
                fl_act=self.fl_act,
                pose_encoding_type=self.pose_encoding_type,
            )
            if self.use_scale and self.scale_act == "exp":
                activated[..., -1:] = torch.exp(pred_pose_enc[..., -1:])
            elif self.use_scale and self.scale_act == "relu":
                activated[..., -1:] = torch.relu(pred_pose_enc[..., -1:])
            outputs.append(activated)
        return outputs
