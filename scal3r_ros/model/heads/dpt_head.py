"""DPT dense head (depth + confidence, or point map + confidence), as in VGGT/Scal3R.

Attribute names follow the official ``DPTHead`` so that ``dpt_decoder.*`` / ``xyz_decoder.*``
checkpoint keys load strictly. Numerical quirks kept on purpose (reference §2.6):

- The residual conv units use an *in-place* ReLU in the official code, so the skip connection
  adds ``relu(x)`` rather than ``x``. We write that explicitly.
- Every upsampling is bilinear with ``align_corners=True``.
- A sinusoidal UV position embedding (ratio 0.1) is added after each projection and again
  before the last convolutions; it is computed in float64 and cast to float32.
- No clamp before the output activations.

Run it in fp32 (the official pipeline disables autocast for the heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scal3r_ros.model.heads.activations import activate_head

# Above this many output elements, F.interpolate may overflow int32 indexing (official value).
_INTERP_MAX_ELEMENTS = 1610612736


class DPTHead(nn.Module):
    """Fuses four intermediate token maps into a per-pixel prediction and confidence.

    Args:
        dim_in: token width of the intermediate features (2 x trunk width).
        patch_size: patch size of the trunk.
        output_dim: output channels including the confidence channel (4: xyz+conf, 2: depth+conf).
        activation: activation of the value channels (see ``activate_head``).
        conf_activation: activation of the confidence channel.
        features: width of the fusion (RefineNet) stage.
        out_channels: per-level widths after the 1x1 projections.
        intermediate_layer_idx: which entries of ``aggregated_tokens_list`` are read.
        pos_embed: add the UV sinusoidal embedding.
        feature_only: return the 256-channel feature map instead of predictions.
        down_ratio: output resolution divisor.
        use_checkpoint: accepted for config compatibility (training only, ignored here).
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = list(out_channels)
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.use_checkpoint = use_checkpoint
        self._pos_embed_cache: dict[tuple, torch.Tensor] = {}

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )

        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(
                self.scratch,
                f"layer{i}_rn",
                nn.Conv2d(oc, features, kernel_size=3, padding=1, bias=False),
            )
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)

        head_features_2 = 32
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, head_features_2, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_features_2, output_dim, kernel_size=1),
            )

    def forward(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor] | dict[int, torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: int | None = 8,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict a dense map for every frame.

        Args:
            aggregated_tokens_list: indexable by ``intermediate_layer_idx``; entries are
                [B, S, P, dim_in] (a dict keyed by layer index works too).
            images: [B, S, 3, H, W]; only its shape and device are used.
            patch_start_idx: number of special tokens before the patch tokens.
            frames_chunk_size: frames decoded at a time (memory bound); None = all at once.

        Returns:
            (values [B, S, H, W, C-1], confidence [B, S, H, W]), or features
            [B, S, features, H, W] when ``feature_only``.
        """
        num_frames = images.shape[1]
        if frames_chunk_size is None or frames_chunk_size >= num_frames:
            return self._forward_impl(aggregated_tokens_list, images, patch_start_idx)
        if frames_chunk_size <= 0:
            raise ValueError(f"frames_chunk_size must be positive, got {frames_chunk_size}")

        preds, confs = [], []
        for start in range(0, num_frames, frames_chunk_size):
            end = min(start + frames_chunk_size, num_frames)
            result = self._forward_impl(aggregated_tokens_list, images, patch_start_idx, start, end)
            if self.feature_only:
                preds.append(result)
            else:
                preds.append(result[0])
                confs.append(result[1])
        if self.feature_only:
            return torch.cat(preds, dim=1)
        return torch.cat(preds, dim=1), torch.cat(confs, dim=1)

    def _forward_impl(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor] | dict[int, torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_start_idx: int | None = None,
        frames_end_idx: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, S_all, _, H, W = images.shape
        start = 0 if frames_start_idx is None else frames_start_idx
        end = S_all if frames_end_idx is None else frames_end_idx
        S = end - start
        patch_h, patch_w = H // self.patch_size, W // self.patch_size
        param_dtype = self.norm.weight.dtype

        levels = []
        for level, layer_idx in enumerate(self.intermediate_layer_idx):
            x = aggregated_tokens_list[layer_idx][:, start:end, patch_start_idx:]  # [B, S, hw, C]
            x = x.to(device=images.device, dtype=param_dtype)
            x = self.norm(x.reshape(B * S, -1, x.shape[-1]))  # [B*S, hw, C]
            x = x.permute(0, 2, 1).reshape(B * S, x.shape[-1], patch_h, patch_w)
            x = self.projects[level](x)  # [B*S, oc, h, w]
            if self.pos_embed:
                x = self._apply_pos_embed(x, W, H)
            levels.append(self.resize_layers[level](x))  # strides 1/4, 1/2, 1, 2 of the grid

        out = self.scratch_forward(*levels)  # [B*S, features/2, 8h, 8w]
        del levels
        out_hw = (
            int(patch_h * self.patch_size / self.down_ratio),
            int(patch_w * self.patch_size / self.down_ratio),
        )
        out = _interpolate(out, size=out_hw)  # [B*S, features/2, H, W]
        if self.pos_embed:
            out = self._apply_pos_embed(out, W, H)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])

        out = self.scratch.output_conv2(out)  # [B*S, output_dim, H, W]
        preds, conf = activate_head(
            out, activation=self.activation, conf_activation=self.conf_activation
        )
        return preds.reshape(B, S, *preds.shape[1:]), conf.reshape(B, S, *conf.shape[1:])

    def scratch_forward(
        self,
        layer_1: torch.Tensor,
        layer_2: torch.Tensor,
        layer_3: torch.Tensor,
        layer_4: torch.Tensor,
    ) -> torch.Tensor:
        """RefineNet fusion from the coarsest level (4) to the finest (1)."""
        layer_1_rn = self.scratch.layer1_rn(layer_1)
        layer_2_rn = self.scratch.layer2_rn(layer_2)
        layer_3_rn = self.scratch.layer3_rn(layer_3)
        layer_4_rn = self.scratch.layer4_rn(layer_4)

        out = self.scratch.refinenet4(layer_4_rn, size=layer_3_rn.shape[2:])
        out = self.scratch.refinenet3(out, layer_3_rn, size=layer_2_rn.shape[2:])
        out = self.scratch.refinenet2(out, layer_2_rn, size=layer_1_rn.shape[2:])
        out = self.scratch.refinenet1(out, layer_1_rn)
        return self.scratch.output_conv1(out)

    def _apply_pos_embed(self, x: torch.Tensor, W: int, H: int, ratio: float = 0.1) -> torch.Tensor:
        """Add the UV sinusoidal embedding of the feature grid (aspect from the image)."""
        _, C, h, w = x.shape
        key = (h, w, C, W, H, ratio, x.dtype, x.device)
        pos = self._pos_embed_cache.get(key)
        if pos is None:
            uv = create_uv_grid(w, h, aspect_ratio=W / H, dtype=x.dtype, device=x.device)
            pos = (position_grid_to_embed(uv, C) * ratio).permute(2, 0, 1)[None].to(x.dtype)
            if len(self._pos_embed_cache) > 32:
                self._pos_embed_cache.clear()
            self._pos_embed_cache[key] = pos
        return x + pos  # [N, C, h, w] + [1, C, h, w]


class ResidualConvUnit(nn.Module):
    """``relu -> conv3x3 -> relu -> conv3x3`` plus a skip of ``relu(x)`` (in-place quirk)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)  # the official in-place ReLU also changes the skip branch
        out = self.conv2(F.relu(self.conv1(x)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """One RefineNet step: add the refined skip, refine, upsample, 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, *xs: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        output = xs[0]
        if self.has_residual:
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        if size is None:
            size = (output.shape[-2] * 2, output.shape[-1] * 2)
        output = _interpolate(output, size=tuple(size))
        return self.out_conv(output)


def _interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True; split along the batch when the output is huge."""
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements > _INTERP_MAX_ELEMENTS:
        parts = torch.chunk(x, chunks=elements // _INTERP_MAX_ELEMENTS + 1, dim=0)
        return torch.cat(
            [F.interpolate(p, size=size, mode="bilinear", align_corners=True) for p in parts]
        )
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def create_uv_grid(
    width: int,
    height: int,
    aspect_ratio: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """UV grid [height, width, 2] spanning +-aspect/diag by +-1/diag with half-pixel insets."""
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x = aspect_ratio / diag
    span_y = 1.0 / diag
    x_coords = torch.linspace(
        -span_x * (width - 1) / width,
        span_x * (width - 1) / width,
        steps=width,
        dtype=dtype,
        device=device,
    )
    y_coords = torch.linspace(
        -span_y * (height - 1) / height,
        span_y * (height - 1) / height,
        steps=height,
        dtype=dtype,
        device=device,
    )
    uu, vv = torch.meshgrid(x_coords, y_coords, indexing="xy")  # [height, width] each
    return torch.stack((uu, vv), dim=-1)


def position_grid_to_embed(
    pos_grid: torch.Tensor, embed_dim: int, omega_0: float = 100
) -> torch.Tensor:
    """Sin/cos embedding [H, W, embed_dim] of a UV grid: x in the first half, y in the second."""
    H, W, _ = pos_grid.shape
    pos_flat = pos_grid.reshape(-1, 2)
    emb_x = _sincos_embed(embed_dim // 2, pos_flat[:, 0], omega_0)
    emb_y = _sincos_embed(embed_dim // 2, pos_flat[:, 1], omega_0)
    return torch.cat([emb_x, emb_y], dim=-1).view(H, W, embed_dim)


def _sincos_embed(embed_dim: int, pos: torch.Tensor, omega_0: float = 100) -> torch.Tensor:
    """[M, embed_dim] = [sin(pos*omega), cos(pos*omega)], computed in float64 like the official."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    calc_dtype = torch.float32 if pos.device.type == "mps" else torch.float64
    omega = torch.arange(embed_dim // 2, dtype=calc_dtype, device=pos.device)
    omega /= embed_dim / 2.0
    omega = 1.0 / omega_0**omega  # [D/2]
    out = pos.reshape(-1, 1).to(calc_dtype) * omega[None]  # [M, D/2] outer product
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()
