"""The GCM gradient and apply as they were before the memory rewrite (issue 14): test reference.

``GCMLayer.gradient`` / ``GCMLayer.apply`` now free their temporaries early and work in place;
they must stay bitwise equal to these straightforward transcriptions of the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scal3r_ros.model.gcm import FastWeights, GCMGrads, GCMLayer, silu_backprop
from scal3r_ros.model.layers.rope import RopeTables


def reference_gradient(
    layer: GCMLayer, x: Tensor, pos: Tensor | RopeTables | None = None
) -> GCMGrads:
    """The pre-issue-14 ``GCMLayer.gradient`` (every temporary alive until the end)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x if x.dtype == layer.w0.dtype else x.to(layer.w0.dtype)
        B, L, D = x.shape
        h, d = layer.num_heads, layer.head_dim
        qkv = layer.qkv(x).reshape(B, L, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = layer.q_norm(q)
        k = layer.k_norm(k)
        if layer.rope is not None and pos is not None:
            q = layer.rope(q, pos)
            k = layer.rope(k, pos)
        k, v = k.reshape(B * h, L, d), v.reshape(B * h, L, d)
        lrs = F.softplus(layer.lrs(x.float()).float() + layer.inv_base_lr)
        lrs = lrs.reshape(B, L, 3, h, 1).permute(2, 0, 3, 1, 4).reshape(3, B * h, L, 1)
        lr0, lr1, lr2 = lrs[0], lrs[1], lrs[2]
        w0, w1, w2 = (w.repeat(B, 1, 1) for w in (layer.w0, layer.w1, layer.w2))
        gate_before_act = k @ w0
        hide_before_mul = k @ w2
        hidden = F.silu(gate_before_act) * hide_before_mul
        dhidden = v @ w1.transpose(-1, -2)
        dhide_before_mul = dhidden * F.silu(gate_before_act)
        dgate = dhidden * hide_before_mul
        dgate_before_act = silu_backprop(dgate, gate_before_act)
        g0 = (k * lr0).transpose(-1, -2) @ dgate_before_act
        g1 = (hidden * lr1).transpose(-1, -2) @ v
        g2 = (k * lr2).transpose(-1, -2) @ dhide_before_mul
    return GCMGrads(g0, g1, g2)


def reference_apply(
    layer: GCMLayer, x: Tensor, fast: FastWeights, pos: Tensor | RopeTables | None = None
) -> Tensor:
    """The pre-issue-14 ``GCMLayer.apply`` (out-of-place throughout)."""
    B, L, D = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x if x.dtype == layer.w0.dtype else x.to(layer.w0.dtype)
        h, d = layer.num_heads, layer.head_dim
        qkv = layer.qkv(x).reshape(B, L, 3, h, d).permute(2, 0, 3, 1, 4)
        q = layer.q_norm(qkv[0])
        if layer.rope is not None and pos is not None:
            q = layer.rope(q, pos)
        q = q.reshape(B * h, L, d)
        o = (F.silu(q @ fast.w0) * (q @ fast.w2)) @ fast.w1
        o = layer.o_norm(o)
        o = o.reshape(B, h, L, d).transpose(1, 2).reshape(B, L, D)
        if not layer.use_modulation:
            return layer.proj(o)
        shift, scale, gate = layer.proj(o).chunk(3, dim=-1)
        return gate * (layer.a_norm(o) * (1 + scale) + shift)
