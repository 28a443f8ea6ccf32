"""GCM gradient with early frees (issue 14): bitwise equal to the written-out form, less memory."""

from __future__ import annotations

import pytest
import torch
from gcm_reference import reference_apply, reference_gradient

from scal3r_ros.model.gcm import GCMLayer
from scal3r_ros.model.layers import PositionGetter, RotaryPositionEmbedding2D
from scal3r_ros.model.memcheck import peak_live_bytes


def _layer_and_input(dim: int, heads: int, frames: int, grid: tuple[int, int], seed: int = 0):
    torch.manual_seed(seed)
    layer = GCMLayer(dim, num_heads=heads, rope=RotaryPositionEmbedding2D(100.0), inter_multi=4)
    with torch.no_grad():
        layer.lrs.weight.normal_(std=0.2)
        layer.k_norm.weight.uniform_(0.5, 1.5)
    h, w = grid
    pos = PositionGetter()(1, h, w, "cpu").repeat(1, frames, 1) + 1
    x = torch.randn(1, frames * h * w, dim) * 3.0  # wide spread: silu's tails are exercised
    tables = layer.rope_tables(pos, max(grid) + 1)
    return layer, x, tables


SIZES = [  # (dim, heads, frames, grid)
    (32, 1, 2, (3, 4)),
    (64, 2, 3, (5, 7)),
    (128, 1, 6, (11, 37)),  # a KITTI-shaped patch grid
]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"d{s[0]}h{s[1]}f{s[2]}")
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x32", "x16"])
def test_gradient_bitwise_equal_to_reference(size, autocast, x_dtype):
    layer, x, tables = _layer_and_input(*size)
    x = x.to(x_dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        new = layer.gradient(x, tables)
        ref = reference_gradient(layer, x, tables)
    for a, b in zip(new, ref, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)
    assert any(bool(g.abs().max() > 0) for g in new)


def test_gradient_batch_of_two_bitwise_equal():
    layer, x, tables = _layer_and_input(64, 2, 2, (4, 5))
    x2 = torch.cat([x, x.flip(1)])
    tables2 = type(tables)(*(t.expand(2, *t.shape[1:]) for t in tables))
    with torch.no_grad():
        new, ref = layer.gradient(x2, tables2), reference_gradient(layer, x2, tables2)
    for a, b in zip(new, ref, strict=True):
        assert torch.equal(a, b)


def test_gradient_peak_memory_below_half_of_reference():
    """The written-out form keeps ~11 hidden-sized (L x 4d) buffers alive at its peak, the new
    one ~5 (four hidden-sized buffers plus the qkv projection): counted, not timed."""
    layer, x, tables = _layer_and_input(128, 1, 8, (11, 37))
    with torch.no_grad():
        new_peak, new = peak_live_bytes(layer.gradient, x, tables)
        ref_peak, ref = peak_live_bytes(reference_gradient, layer, x, tables)
    hidden = x.shape[1] * 4 * x.shape[2] * 4  # one (L, 4d) fp32 buffer
    assert ref_peak > 10 * hidden  # the counter sees the reference's temporaries
    assert new_peak <= 5.5 * hidden
    assert new_peak < 0.5 * ref_peak
    for a, b in zip(new, ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"d{s[0]}h{s[1]}f{s[2]}")
def test_apply_bitwise_equal_to_reference(size, autocast):
    layer, x, tables = _layer_and_input(*size)
    with torch.no_grad():
        layer.proj.weight.normal_(std=0.2)
        layer.proj.bias.normal_(std=0.2)
        fast = layer.update(layer.gradient(x, tables))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            new = layer.apply(x, fast, tables)
            ref = reference_apply(layer, x, fast, tables)
    assert new.dtype == ref.dtype == torch.float32
    assert torch.equal(new, ref) and bool(new.abs().max() > 0)


def test_apply_peak_memory_below_reference():
    layer, x, tables = _layer_and_input(128, 1, 8, (11, 37))
    with torch.no_grad():
        fast = layer.update(layer.gradient(x, tables))
        new_peak, new = peak_live_bytes(layer.apply, x, fast, tables)
        ref_peak, ref = peak_live_bytes(reference_apply, layer, x, fast, tables)
    hidden = x.shape[1] * 4 * x.shape[2] * 4
    print(f"apply peak: new {new_peak / hidden:.2f}, reference {ref_peak / hidden:.2f} hidden")
    assert ref_peak >= 3 * hidden
    assert new_peak <= ref_peak - hidden  # one hidden-sized buffer less at the peak
    assert torch.equal(new, ref)
