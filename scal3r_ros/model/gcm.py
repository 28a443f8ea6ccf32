"""Global Context Memory (GCM): the test-time-training fast-weight SwiGLU layer of Scal3R.

One :class:`GCMLayer` sits after each of the global blocks listed in ``GCMConfig.layers``
(``agg_regator.global_blocks.{14,17,20,23}.ttt`` in the release). It only sees the patch tokens
of a chunk (special tokens are excluded and receive a zero update). Its work is split in three
pure functions so that callers can synchronise across chunks (see :mod:`scal3r_ros.model.gcs`):

``gradient(x)``
    the raw per-chunk fast-weight "gradients" ``(g0, g1, g2)`` of the chunk's patch tokens against
    the *initial learned* fast weights ``(w0, w1, w2)`` (closed form, per-token learning rates,
    fp32). Shapes ``(B*h, d, dh)``, ``(B*h, dh, d)``, ``(B*h, d, dh)``.
``update(G)``
    fast weights from a gradient (sum) ``G``: ``W' = renorm(W + NS5(G))``; NS5 is the Muon
    Newton-Schulz quintic iteration computed in **bfloat16** (official quirk, also on CPU), the
    column norms of ``W`` (over the input dim) are restored afterwards (eps 1e-5).
``apply(x, W')``
    the residual update ``gate * (LN(o) * (1 + scale) + shift)`` with ``o = RMSNorm(f_W'(q))``,
    ``f_W(z) = (silu(z W0) * (z W2)) W1``, returned for the patch tokens only.

Everything is done with autocast disabled (as in the official code); the order of operations is
copied from ``scal3r/utils/ttt_utils.py`` so results agree to float rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.rope import RopeTables, RotaryPositionEmbedding2D

__all__ = [
    "FastWeights",
    "GCMGrads",
    "GCMLayer",
    "inv_softplus",
    "newton_schulz5_step",
    "silu_backprop",
    "zeropower_via_newtonschulz5",
]


class GCMGrads(NamedTuple):
    """Raw fast-weight gradients of one chunk (or a sum over chunks) for one GCM layer."""

    g0: Tensor
    g1: Tensor
    g2: Tensor

    def __add__(self, other: GCMGrads) -> GCMGrads:  # type: ignore[override]
        return GCMGrads(self.g0 + other.g0, self.g1 + other.g1, self.g2 + other.g2)

    def add_(self, other: GCMGrads) -> GCMGrads:
        """In-place accumulation (same rounding as the official ``w_grad_sum.add_(g)``)."""
        self.g0.add_(other.g0)
        self.g1.add_(other.g1)
        self.g2.add_(other.g2)
        return self

    def clone(self) -> GCMGrads:
        return GCMGrads(self.g0.clone(), self.g1.clone(), self.g2.clone())


class FastWeights(NamedTuple):
    """Updated fast weights ``(w0', w1', w2')`` of one GCM layer."""

    w0: Tensor
    w1: Tensor
    w2: Tensor


def inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def silu_backprop(dy: Tensor, x: Tensor) -> Tensor:
    sigma = torch.sigmoid(x)
    return dy * sigma * (1 + x * (1 - sigma))


def newton_schulz5_step(X: Tensor) -> Tensor:
    """One quintic Newton-Schulz step ``X <- a X + (b A + c A A) X`` with ``A = X X^T``, on wide
    matrices ``(B, m, n)``, ``m <= n``, in the dtype of ``X`` (separate so tests can check each
    step alone)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    A = X @ X.transpose(1, 2)
    B = b * A + c * A @ A
    return a * X + B @ X


def zeropower_via_newtonschulz5(G: Tensor, steps: int) -> Tensor:
    """Muon orthogonalisation of a batch of matrices ``(B, m, n)``, in bfloat16 (official)."""
    assert G.ndim == 3
    X = G.bfloat16()
    transpose = G.size(1) > G.size(2)
    if transpose:
        X = X.transpose(1, 2)
    X = X / (X.norm(dim=(1, 2), keepdim=True) + 1e-7)
    for _ in range(steps):
        X = newton_schulz5_step(X)
    if transpose:
        X = X.transpose(1, 2)
    return X


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class GCMLayer(nn.Module):
    """Fast-weight SwiGLU TTT layer (official ``FastWeightGluMLPMultihead``, release path only).

    Parameter names/shapes match the checkpoint: ``w0 (h, d, dh)``, ``w1 (h, dh, d)``,
    ``w2 (h, d, dh)``, ``qkv``, ``q_norm``/``k_norm`` (RMSNorm, eps = machine eps), ``proj``
    (3*dim with modulation), ``lrs`` (3*h), ``o_norm`` (RMSNorm eps 1e-5); plus the
    parameter-free ``a_norm`` (LayerNorm, eps 1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = True,
        rope: RotaryPositionEmbedding2D | None = None,
        base_lr: float = 0.01,
        inter_multi: int = 4,
        muon_update_steps: int = 5,
        use_modulation: bool = True,
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim * 3 if use_modulation else dim, bias=proj_bias)
        self.use_modulation = use_modulation
        if use_modulation:
            self.a_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            with torch.no_grad():
                nn.init.zeros_(self.proj.weight)
                nn.init.zeros_(self.proj.bias)
                self.proj.bias[2 * dim :] = 0.1
        self.rope = rope
        self.muon_update_steps = muon_update_steps
        d, dh = self.head_dim, self.head_dim * inter_multi
        self.w0 = nn.Parameter(torch.randn(num_heads, d, dh) * (math.sqrt(2) / math.sqrt(d)))
        self.w1 = nn.Parameter(torch.randn(num_heads, dh, d) * (math.sqrt(2) / math.sqrt(dh)))
        self.w2 = nn.Parameter(torch.randn(num_heads, d, dh) * (math.sqrt(2) / math.sqrt(d)))
        self.lrs = nn.Linear(dim, num_heads * 3)
        self.base_lr = base_lr
        self.inv_base_lr = inv_softplus(base_lr)
        self.o_norm = nn.RMSNorm(self.head_dim, eps=1e-5, elementwise_affine=True)

    # ------------------------------------------------------------------ helpers
    def rope_tables(self, pos: Tensor, max_position: int | None = None) -> RopeTables | None:
        """RoPE tables for this layer's head dim at patch positions ``pos`` (B, L, 2)."""
        if self.rope is None:
            return None
        return self.rope.tables(pos, self.head_dim, torch.float32, max_position)

    def _qkv(
        self, x: Tensor, pos: Tensor | RopeTables | None, need_v: bool, need_q: bool = True
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``q`` (apply) and/or ``k, v`` (gradient), each ``(B*h, L, d)``; the others None."""
        B, L, D = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, L, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, L, d)
        q, k, v = qkv.unbind(0)
        del qkv
        q = self.q_norm(q) if need_q else None
        if need_v:
            k = self.k_norm(k)
        if self.rope is not None and pos is not None:
            if need_q:
                q = self.rope(q, pos)
            if need_v:
                k = self.rope(k, pos)
        q = q.reshape(B * h, L, d) if need_q else None
        if not need_v:
            return q, None, None
        return q, k.reshape(B * h, L, d), v.reshape(B * h, L, d)

    def _lrs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, L, _ = x.shape
        h = self.num_heads
        lrs = F.softplus(self.lrs(x.float()).float() + self.inv_base_lr)  # (B, L, 3h)
        lrs = lrs.reshape(B, L, 3, h, 1).permute(2, 0, 3, 1, 4).reshape(3, B * h, L, 1)
        return lrs[0], lrs[1], lrs[2]

    def initial_weights(self, batch: int = 1) -> FastWeights:
        return FastWeights(
            self.w0.repeat(batch, 1, 1), self.w1.repeat(batch, 1, 1), self.w2.repeat(batch, 1, 1)
        )

    def _as_param_dtype(self, x: Tensor) -> Tensor:
        return x if x.dtype == self.w0.dtype else x.to(self.w0.dtype)

    # ------------------------------------------------------------------ the three stages
    def gradient(self, x: Tensor, pos: Tensor | RopeTables | None = None) -> GCMGrads:
        """Raw fast-weight gradients of patch tokens ``x`` (B, L, D) against the learned init.

        Memory (issue 14): the closed form needs ten ``(B*h, L, dh)`` temporaries when written
        out (4 GB at a 60-frame 1242x375 window); here each is freed as soon as its last use
        is done and the element-wise steps run in place, so at most four exist at a time.
        Every value is produced by the same operation on the same operands as the written-out
        form (``a * b`` and ``b.mul_(a)`` round alike, ``1 - s`` is ``(-s) + 1`` exactly), so
        the result is bitwise equal to it (tested against the kept reference).
        """
        with _no_autocast(x.device):
            x = self._as_param_dtype(x)
            _, k, v = self._qkv(x, pos, need_v=True, need_q=False)
            lr0, lr1, lr2 = self._lrs(x)
            del x
            w0, w1, w2 = self.initial_weights(k.shape[0] // self.num_heads)
            gate_before_act = k @ w0
            hide_before_mul = k @ w2
            act = F.silu(gate_before_act)
            # g1 = (silu(gate) * hide * lr1)^T v, first, so `hidden` dies before dhidden exists
            hidden = act * hide_before_mul
            g1 = hidden.mul_(lr1).transpose(-1, -2) @ v
            del hidden
            dhidden = v @ w1.transpose(-1, -2)
            del v
            # g2 = (k * lr2)^T (dhidden * silu(gate))
            dhide_before_mul = act.mul_(dhidden)
            del act
            g2 = (k * lr2).transpose(-1, -2) @ dhide_before_mul
            del dhide_before_mul
            # g0 = (k * lr0)^T silu'(gate; dhidden * hide): dy * s * (1 + x * (1 - s))
            dgate = dhidden.mul_(hide_before_mul)
            del dhidden, hide_before_mul
            sigma = torch.sigmoid(gate_before_act)
            dgate.mul_(sigma)  # dy * s
            one_minus = sigma.neg_().add_(1)  # 1 - s
            del sigma
            tail = gate_before_act.mul_(one_minus).add_(1)  # 1 + x * (1 - s)
            del gate_before_act, one_minus
            dgate_before_act = dgate.mul_(tail)
            del dgate, tail
            g0 = (k * lr0).transpose(-1, -2) @ dgate_before_act
        return GCMGrads(g0, g1, g2)

    def update(
        self, grads: GCMGrads, weights: FastWeights | None = None, lr: float | None = None
    ) -> FastWeights:
        """``W' = renorm(W + NS5(G))`` with ``W`` the learned init (or ``weights``)."""
        batch = grads.g0.shape[0] // self.num_heads
        with _no_autocast(grads.g0.device):
            w = weights if weights is not None else self.initial_weights(batch)
            out = []
            for w_k, g_k in zip(w, grads, strict=True):
                norm = w_k.detach().norm(dim=1, keepdim=True)
                upd = zeropower_via_newtonschulz5(g_k, self.muon_update_steps)
                if lr is not None:
                    upd = upd * lr
                w_new = w_k + upd
                out.append(w_new / (w_new.norm(dim=1, keepdim=True) + 1e-5) * norm)
        return FastWeights(*out)

    def apply(self, x: Tensor, fast: FastWeights, pos: Tensor | RopeTables | None = None) -> Tensor:
        """Residual update for patch tokens ``x`` (B, L, D) with fast weights ``fast``.

        ``silu(q W0) * (q W2)`` and the modulation run in place (two hidden-sized buffers at a
        time instead of three; same operations on the same operands, so bitwise the same).
        """
        B, L, D = x.shape
        with _no_autocast(x.device):
            x = self._as_param_dtype(x)
            q, _, _ = self._qkv(x, pos, need_v=False)
            del x
            hidden = F.silu(q @ fast.w0, inplace=True)
            hidden.mul_(q @ fast.w2)
            del q
            o = hidden @ fast.w1  # (B*h, L, d)
            del hidden
            o = self.o_norm(o)
            o = o.reshape(B, self.num_heads, L, self.head_dim).transpose(1, 2).reshape(B, L, D)
            if not self.use_modulation:
                return self.proj(o)
            shift, scale, gate = self.proj(o).chunk(3, dim=-1)
            out = self.a_norm(o)
            del o
            return out.mul_(1 + scale).add_(shift).mul_(gate)  # gate * (LN(o) * (1 + s) + shift)
