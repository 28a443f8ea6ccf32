"""Pre-norm transformer block (attention + MLP, each with LayerScale), as in DINOv2/VGGT.

Constructor and ``forward(x, pos=None)`` follow the official ``scal3r/utils/vggt/layers/block.py``
``Block`` (parameter names ``norm1, attn, ls1, norm2, mlp, ls2``). This re-implementation is for
inference: ``drop``/``attn_drop``/``drop_path`` are accepted for signature compatibility but only
act through ``nn.Dropout`` in training mode (stochastic depth is not implemented).

The official block can also own the GCM layer (``.ttt``); here the aggregator attaches a
:class:`scal3r_ros.model.gcm.GCMLayer` as ``block.ttt`` and drives it explicitly, so
``Block.forward`` never runs it (exactly like the release inference path, which calls the blocks
with ``enable_ttt=False`` and applies the GCM after global synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .attention import Attention
from .layer_scale import LayerScale
from .mlp import Mlp


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        attn_param: dict[str, Any] | None = None,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            qk_norm=qk_norm,
            fused_attn=fused_attn,
            rope=rope,
            **(attn_param or {}),
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
        )
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.sample_drop_ratio = drop_path

    def forward(self, x: Tensor, pos=None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


NestedTensorBlock = Block
