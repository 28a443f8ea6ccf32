"""Multi-head self-attention with optional qk-norm and 2D RoPE, using torch SDPA.

Same structure and parameter names as the official ``Attention`` (``qkv``, ``q_norm``,
``k_norm``, ``proj``). ``pos`` may be integer positions ``(B, N, 2)`` (official form) or
precomputed :class:`~scal3r_ros.model.layers.rope.RopeTables`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def forward(self, x: Tensor, pos=None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        x = self._fused(q, k, v) if self.fused_attn else None
        if x is None:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def _fused(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        """SDPA, or None where torch's CPU kernel for this dtype is unavailable.

        torch's bf16 CPU flash kernel picks its packing from the CPU's features but is
        compiled per ATen capability, so with ``ATEN_CPU_CAPABILITY`` below the CPU's
        (e.g. ``default`` on an AVX-512 machine) it raises "pack_vnni2 is only supported
        when avx512 is supported"; the explicit attention below computes the same thing.
        """
        try:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        except RuntimeError as exc:
            if q.device.type != "cpu" or "only supported when" not in str(exc):
                raise
            return None
