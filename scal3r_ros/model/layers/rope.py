"""2D rotary position embedding (RoPE) as used by the Scal3R/VGGT trunk and the GCM layers.

Numerics follow the official ``RotaryPositionEmbedding2D`` exactly:

* the feature dimension ``d`` is split in two halves, the first rotated by the y coordinate and
  the second by the x coordinate;
* within a half of size ``d/2`` the inverse frequencies are ``base ** (-(2i)/(d/2))``,
  ``i = 0 .. d/4 - 1``; angles are duplicated (``cat(theta, theta)``) and the rotation is the NeoX
  "rotate half" form ``x * cos + rotate_half(x) * sin`` with ``rotate_half(a, b) = (-b, a)``;
* [quirk] the angle table is computed in fp32 and cast to the token dtype *before* ``cos``/``sin``.

Besides the official call form ``rope(tokens, positions)`` this module offers a faster path:
:meth:`RotaryPositionEmbedding2D.tables` gathers the per-token cos/sin once (``RopeTables``) so the
48 trunk blocks and the GCM layers do not redo the gather, and so no host synchronisation
(``positions.max()``) is needed when the caller knows the grid size. The element-wise operations
are identical, so both paths give bit-identical results.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class PositionGetter:
    """Integer (y, x) patch grid positions, row-major, cached per grid size and device."""

    def __init__(self) -> None:
        self.position_cache: dict[tuple, torch.Tensor] = {}

    def __call__(
        self, batch_size: int, height: int, width: int, device: torch.device
    ) -> torch.Tensor:
        key = (height, width, torch.device(device))
        if key not in self.position_cache:
            y = torch.arange(height, device=device)
            x = torch.arange(width, device=device)
            self.position_cache[key] = torch.cartesian_prod(y, x)
        pos = self.position_cache[key]
        return pos.view(1, height * width, 2).expand(batch_size, -1, -1).clone()


class RopeTables(NamedTuple):
    """Per-token cos/sin for a full feature dimension ``d`` (y half then x half).

    ``cos``/``sin`` have shape ``(B, 1, N, d)`` and broadcast over heads.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def reshape_tokens(self, batch: int, n: int) -> RopeTables:
        """Reshape the token axis, e.g. ``(B*S, 1, P, d) -> (B, 1, S*P, d)``."""
        d = self.cos.shape[-1]
        return RopeTables(self.cos.reshape(batch, 1, n, d), self.sin.reshape(batch, 1, n, d))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _rotate_half_2d(x: torch.Tensor) -> torch.Tensor:
    """``rotate_half`` applied separately to the y half and the x half of the last dim."""
    d = x.shape[-1]
    q = d // 4
    a, b, c, e = x[..., :q], x[..., q : 2 * q], x[..., 2 * q : 3 * q], x[..., 3 * q :]
    return torch.cat((-b, a, -e, c), dim=-1)


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE (base frequency 100 in Scal3R). No parameters."""

    def __init__(self, frequency: float = 100.0, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.base_frequency = frequency
        self.scaling_factor = scaling_factor
        self.frequency_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _compute_frequency_components(
        self, dim: int, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, seq_len, torch.device(device), dtype)
        if key not in self.frequency_cache:
            exponents = torch.arange(0, dim, 2, device=device).float() / dim
            inv_freq = 1.0 / (self.base_frequency**exponents)
            positions = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)
            angles = torch.einsum("i,j->ij", positions, inv_freq)
            angles = angles.to(dtype)  # [quirk] cast before cos/sin
            angles = torch.cat((angles, angles), dim=-1)
            self.frequency_cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self.frequency_cache[key]

    def tables(
        self,
        positions: torch.Tensor,
        dim: int,
        dtype: torch.dtype = torch.float32,
        max_position: int | None = None,
    ) -> RopeTables:
        """Gather cos/sin for ``positions`` (B, N, 2) for a feature dimension ``dim``.

        ``max_position`` (exclusive bound of the position values) avoids a device->host sync;
        when omitted it is read from ``positions`` like the official code does.
        """
        assert dim % 4 == 0, "RoPE-2D needs a feature dimension divisible by 4"
        assert positions.ndim == 3 and positions.shape[-1] == 2
        if max_position is None:
            max_position = int(positions.max()) + 1
        half = dim // 2
        cos_c, sin_c = self._compute_frequency_components(
            half, max_position, positions.device, dtype
        )
        py, px = positions[..., 0], positions[..., 1]
        cos = torch.cat((F.embedding(py, cos_c), F.embedding(px, cos_c)), dim=-1)[:, None]
        sin = torch.cat((F.embedding(py, sin_c), F.embedding(px, sin_c)), dim=-1)[:, None]
        return RopeTables(cos, sin)

    @staticmethod
    def apply_tables(tokens: torch.Tensor, tables: RopeTables) -> torch.Tensor:
        """Rotate ``tokens`` (B, heads, N, d) with precomputed tables (same element-wise ops)."""
        cos, sin = tables.cos, tables.sin
        if cos.dtype != tokens.dtype:
            cos, sin = cos.to(tokens.dtype), sin.to(tokens.dtype)
        return tokens * cos + _rotate_half_2d(tokens) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | RopeTables) -> torch.Tensor:
        """Apply 2D RoPE to ``tokens`` (B, heads, N, d) at ``positions`` (B, N, 2) or tables."""
        if isinstance(positions, RopeTables):
            return self.apply_tables(tokens, positions)
        assert tokens.size(-1) % 2 == 0, "Feature dimension must be even"
        assert positions.ndim == 3 and positions.shape[-1] == 2
        feature_dim = tokens.size(-1) // 2
        max_position = int(positions.max()) + 1
        cos_c, sin_c = self._compute_frequency_components(
            feature_dim, max_position, tokens.device, tokens.dtype
        )
        vert, horiz = tokens.chunk(2, dim=-1)

        def _one(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            cos = F.embedding(p, cos_c)[:, None, :, :]
            sin = F.embedding(p, sin_c)[:, None, :, :]
            return t * cos + _rotate_half(t) * sin

        return torch.cat((_one(vert, positions[..., 0]), _one(horiz, positions[..., 1])), dim=-1)
