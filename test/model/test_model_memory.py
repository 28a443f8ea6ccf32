"""Model memory (issue 14): bf16-held trunk weights, dropped heads (bitwise the same results)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scal3r_ros.model import Scal3R, run_synchronous
from scal3r_ros.model.scal3r import autocast_weight_names

BF16 = torch.bfloat16
FIELDS = ("pose_enc", "extrinsics", "intrinsics", "depth", "depth_conf")
FIELDS_POINTS = (*FIELDS, "world_points", "world_points_conf")


@pytest.fixture(scope="module")
def tiny() -> Scal3R:
    torch.manual_seed(3)
    m = Scal3R("tiny").eval()
    with torch.no_grad():  # make the special tokens and the GCM path matter (see test_gcm)
        m.agg_regator.camera_token.normal_()
        m.agg_regator.register_token.normal_()
        for j in m.agg_regator.gcm_layers:
            m.agg_regator.gcm(j).proj.weight.normal_(std=0.2)
    return m


def _images(S: int, seed: int, H: int = 28, W: int = 42) -> torch.Tensor:
    return torch.rand(1, S, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _assert_same(a, b, fields=FIELDS_POINTS) -> None:
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        assert torch.equal(x, y), f


def test_autocast_weight_names_are_trunk_linear_and_conv_only(tiny):
    names = autocast_weight_names(tiny)
    assert names and all(n.startswith("agg_regator.") and ".ttt." not in n for n in names)
    modules = dict(tiny.named_modules())
    for n in names:
        assert isinstance(modules[n.rsplit(".", 1)[0]], (nn.Linear, nn.Conv2d))
    assert "agg_regator.patch_embed.patch_embed.proj.weight" in names
    assert "agg_regator.frame_blocks.0.attn.qkv.weight" in names
    assert "agg_regator.global_blocks.3.mlp.fc2.bias" in names
    # kept fp32: GCM projections and fast weights, norms, LayerScale, tokens, heads
    for kept in (
        "agg_regator.global_blocks.1.ttt.qkv.weight",
        "agg_regator.global_blocks.1.ttt.w0",
        "agg_regator.frame_blocks.0.norm1.weight",
        "agg_regator.frame_blocks.0.ls1.gamma",
        "agg_regator.camera_token",
        "agg_regator.patch_embed.pos_embed",
        "dpt_decoder.scratch.output_conv1.weight",
    ):
        assert kept not in names


def test_bf16_held_weights_bitwise_equal_to_fp32_weights_under_autocast(tiny):
    held = copy.deepcopy(tiny)
    saved = held.hold_autocast_weights(BF16)
    names = set(autocast_weight_names(held))
    params = dict(held.named_parameters())
    assert saved == sum(params[n].numel() * 2 for n in names)
    assert all(p.dtype == (BF16 if n in names else torch.float32) for n, p in params.items())
    with torch.no_grad():
        for S, seed in ((3, 0), (5, 1)):
            x = _images(S, seed)
            ref = tiny.forward_chunk(x, autocast_dtype=BF16, return_gcm=True)
            out = held.forward_chunk(x, autocast_dtype=BF16, return_gcm=True)
            _assert_same(out, ref)
            for j in ref.gcm_grads:
                for a, b in zip(out.gcm_grads[j], ref.gcm_grads[j], strict=True):
                    assert torch.equal(a, b)
        chunks = [_images(3, 2), _images(2, 3)]
        ref_s = run_synchronous(tiny, chunks, autocast_dtype=BF16)
        out_s = run_synchronous(held, chunks, autocast_dtype=BF16)
    for a, b in zip(out_s, ref_s, strict=True):
        _assert_same(a, b)


def test_bf16_held_weights_refuse_fp32_runs(tiny):
    held = copy.deepcopy(tiny)
    held.hold_autocast_weights(BF16)
    with pytest.raises(ValueError, match="autocast_dtype"):
        held.forward_chunk(_images(2, 0))
    with pytest.raises(ValueError, match="autocast_dtype"):
        run_synchronous(held, [_images(2, 0)])


def test_drop_heads_keeps_results_and_frees_parameters(tiny):
    slim = copy.deepcopy(tiny)
    assert slim.drop_heads(("camera", "depth")) == ["points"]
    assert slim.available_heads() == ("camera", "depth")
    assert not any(k.startswith("xyz_decoder.") for k in slim.state_dict())
    n_all = sum(p.numel() for p in tiny.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert n_slim == n_all - sum(p.numel() for p in tiny.xyz_decoder.parameters())
    with torch.no_grad():
        x = _images(3, 4)
        ref = tiny.forward_chunk(x, heads=("camera", "depth"))
        out = slim.forward_chunk(x)  # default: the heads it has
    _assert_same(out, ref, FIELDS)
    assert out.world_points is None
    with pytest.raises(ValueError, match="dropped"):
        slim.forward_chunk(x, heads=("camera", "points"))
    with pytest.raises(ValueError, match="unknown"):
        slim.drop_heads(("camera", "normals"))
