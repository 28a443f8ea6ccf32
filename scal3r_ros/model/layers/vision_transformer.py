"""DINOv2 vision transformer with register tokens (patch-embedding backbone of the trunk).

Parameter names follow the official/DINOv2 ``DinoVisionTransformer`` with ``block_chunks=0``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``blocks.{i}``, ``norm``). Scal3R builds it as ``dinov2_vitl14_reg`` (width 1024, depth 24,
16 heads, 4 registers, LayerScale init 1.0, LayerNorm eps 1e-6) with
``interpolate_antialias=True`` and ``interpolate_offset=0``.

Only what the aggregator uses is implemented: :meth:`forward` returns the final-LayerNorm
normalised patch tokens (cls and register outputs are dropped, like the official
``x_norm_patchtokens``). ``mask_token`` exists for state-dict compatibility and is unused.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from .block import Block
from .patch_embed import PatchEmbed


class DinoVisionTransformer(nn.Module):
    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        init_values: float | None = 1.0,
        num_register_tokens: int = 4,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_bias=proj_bias,
                    ffn_bias=ffn_bias,
                    norm_layer=norm_layer,
                    init_values=init_values,
                    qk_norm=False,
                )
                for _ in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        """Pos-embed for an ``h x w`` pixel image (official quirks: skipped only when the patch
        count matches AND the image is square; bicubic in fp32 with the explicit size when
        ``interpolate_offset == 0``; antialias as configured)."""
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        h0 = h // self.patch_size
        w0 = w // self.patch_size
        m = int(math.sqrt(n))
        assert n == m * m
        if self.interpolate_offset:
            kwargs = {
                "scale_factor": (
                    float(h0 + self.interpolate_offset) / m,
                    float(w0 + self.interpolate_offset) / m,
                )
            }
        else:
            kwargs = {"size": (h0, w0)}
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        assert (h0, w0) == tuple(patch_pos_embed.shape[-2:])
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        if self.register_tokens is not None:
            x = torch.cat(
                (x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` (already ImageNet-normalised) -> normalised patch tokens
        ``(B, H/p * W/p, D)``."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, 1 + self.num_register_tokens :])
