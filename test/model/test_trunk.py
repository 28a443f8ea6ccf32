"""Trunk building blocks and the tiny network end to end (no official code needed)."""

import math

import pytest
import torch

from scal3r_ros.model import Scal3R, get_config
from scal3r_ros.model.aggregator import slice_expand_and_flatten
from scal3r_ros.model.layers import Block, Mlp, PositionGetter, RotaryPositionEmbedding2D


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Scal3R("tiny").eval()
    with torch.no_grad():  # make the special tokens and GCM output non-degenerate
        m.agg_regator.camera_token.normal_()
        m.agg_regator.register_token.normal_()
        for j in m.agg_regator.gcm_layers:
            m.agg_regator.gcm(j).proj.weight.normal_(std=0.2)
    return m


def _images(S=3, H=28, W=42, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, S, 3, H, W, generator=g)


def test_block_signature_and_forward():
    rope = RotaryPositionEmbedding2D(100.0)
    blk = Block(
        dim=64,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        proj_bias=True,
        ffn_bias=True,
        init_values=0.01,
        qk_norm=True,
        rope=rope,
    )
    assert [n for n, _ in blk.named_children()] == ["norm1", "attn", "ls1", "norm2", "mlp", "ls2"]
    x = torch.randn(2, 7, 64)
    pos = PositionGetter()(2, 1, 7, "cpu")
    assert blk(x, pos=pos).shape == x.shape
    plain = Block(dim=64, num_heads=4, init_values=None)
    assert plain(x).shape == x.shape
    assert isinstance(Mlp(64, 128).act, torch.nn.GELU)


@pytest.mark.parametrize("dim", [16, 32, 64])
def test_rope_tables_equal_official_formula(dim):
    rope = RotaryPositionEmbedding2D(100.0)
    pos = PositionGetter()(3, 4, 5, "cpu") + 1
    x = torch.randn(3, 2, 20, dim)
    ref = rope(x, pos)  # official per-half form
    fast = rope(x, rope.tables(pos, dim, torch.float32, max_position=6))
    assert torch.equal(ref, fast)
    # independent check: complex rotation of (a_i, a_{i+d/4}) pairs by angle p * 100^(-2i/(d/2))
    half, q = dim // 2, dim // 4
    inv = 100.0 ** (-torch.arange(0, half, 2).double() / half)
    for part, p in ((slice(0, half), pos[..., 0]), (slice(half, dim), pos[..., 1])):
        xa = x[..., part].double()
        z = torch.complex(xa[..., :q], xa[..., q:])
        ang = p[:, None, :, None].double() * inv
        zr = z * torch.exp(1j * ang)
        exp = torch.cat([zr.real, zr.imag], dim=-1)
        assert torch.allclose(ref[..., part].double(), exp, atol=1e-5)


def test_special_token_split():
    tok = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    out = slice_expand_and_flatten(tok, B=2, S=3)
    assert out.shape == (6, 3, 4)
    assert torch.equal(out[0], tok[0, 0]) and torch.equal(out[3], tok[0, 0])
    assert all(torch.equal(out[i], tok[0, 1]) for i in (1, 2, 4, 5))


def test_prepare_layout(tiny):
    agg = tiny.agg_regator
    st = agg.prepare(_images(S=2))
    h, w = 2, 3
    assert (st.B, st.S, st.P, st.C) == (1, 2, 5 + h * w, 32)
    assert st.patch_pos.shape == (1, 2 * h * w, 2)
    assert st.patch_pos.min() == 1 and st.patch_pos[..., 0].max() == h
    v = st.patch_view()
    assert torch.equal(v[0, 0, 0], agg.camera_token[0, 0, 0])
    assert torch.equal(v[0, 1, 0], agg.camera_token[0, 1, 0])
    assert torch.equal(v[0, 1, 1:5], agg.register_token[0, 1])
    # RoPE of special tokens is the identity (position 0)
    assert torch.equal(st.rope.cos[:, :, :5], torch.ones_like(st.rope.cos[:, :, :5]))


def test_layer_by_layer_features_and_gcm(tiny):
    agg = tiny.agg_regator
    cfg = get_config("tiny").trunk
    st = agg.prepare(_images())
    psi = agg.patch_start_idx
    with torch.inference_mode():
        for j in range(agg.depth):
            agg.forward_layer(st, j)
            assert (j in st.features) == (j in cfg.intermediate_layer_idx)
            if j in agg.gcm_layers:
                before = st.patch_view().clone()
                g = agg.gcm_gradient(st, j)
                fw = agg.gcm_update(j, g)
                agg.gcm_apply(st, j, fw)
                after = st.patch_view()
                assert torch.equal(after[:, :, :psi], before[:, :, :psi])  # specials untouched
                assert not torch.equal(after[:, :, psi:], before[:, :, psi:])
                assert torch.equal(st.features[j][..., cfg.embed_dim :], after)
    assert st.next_layer == agg.depth
    out = tiny.decode(st)
    assert out.pose_enc.shape == (1, 3, 9)
    assert out.depth.shape == (1, 3, 28, 42, 1) and out.depth_conf.shape == (1, 3, 28, 42)
    assert out.world_points.shape == (1, 3, 28, 42, 3)
    assert out.extrinsics.shape == (1, 3, 3, 4) and out.intrinsics.shape == (1, 3, 3, 3)
    assert (out.depth > 0).all() and (out.depth_conf > 1).all()


def test_forward_heads_selection_and_4d_input(tiny):
    x = _images()
    with torch.inference_mode():
        full = tiny(x)
        cam = tiny(x[0], heads=("camera",))
        dep = tiny(x, heads=["depth"])
    assert cam.depth is None and cam.world_points is None
    assert torch.equal(cam.pose_enc, full.pose_enc)
    assert dep.pose_enc is None and torch.equal(dep.depth, full.depth)
    with pytest.raises(ValueError):
        tiny.decode(tiny.agg_regator.prepare(x), heads=("nope",))


def test_batch_elements_are_independent(tiny):
    x = _images(B=2, S=2)
    with torch.inference_mode():
        both = tiny(x)
        one = [tiny(x[i : i + 1]) for i in range(2)]
    for i in range(2):
        torch.testing.assert_close(both.pose_enc[i], one[i].pose_enc[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both.depth[i], one[i].depth[0], rtol=1e-4, atol=1e-5)


def test_bad_image_size(tiny):
    with pytest.raises(ValueError):
        tiny(torch.rand(1, 2, 3, 30, 42))


def test_bf16_autocast_option(tiny):
    x = _images()
    with torch.inference_mode():
        ref = tiny(x, return_gcm=True)
        amp = tiny(x, return_gcm=True, autocast_dtype=torch.bfloat16)
    # GCM and heads stay fp32; results close to fp32
    assert all(w.dtype == torch.float32 for w in amp.gcm_fast_weights[1])
    assert amp.depth.dtype == torch.float32 and amp.pose_enc.dtype == torch.float32
    assert (amp.pose_enc - ref.pose_enc).abs().max() < 0.1 * ref.pose_enc.abs().max()


def test_presets():
    big = get_config("scal3r-1b")
    assert big.trunk.gcm.layers == (14, 17, 20, 23)
    assert big.trunk.intermediate_layer_idx == (4, 11, 17, 23)
    assert big.head_dim_in == 2048
    t = get_config("tiny")
    assert set(t.trunk.gcm.layers) <= set(t.trunk.intermediate_layer_idx)
    assert t.trunk.embed_dim // t.trunk.num_heads % 4 == 0
    with pytest.raises(KeyError):
        get_config("nope")
    assert math.isclose(big.trunk.rope_freq, 100.0)


def test_attention_falls_back_where_the_cpu_kernel_is_unavailable(monkeypatch):
    """Under ATEN_CPU_CAPABILITY below the CPU's, torch's bf16 CPU SDPA kernel raises
    (pack_vnni2 ...); the layer then computes the same attention explicitly."""
    from scal3r_ros.model.layers import attention as attention_module
    from scal3r_ros.model.layers.attention import Attention

    torch.manual_seed(0)
    fused, explicit = Attention(32, num_heads=2), Attention(32, num_heads=2, fused_attn=False)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, 32)

    def unavailable(*args, **kwargs):
        raise RuntimeError("pack_vnni2 is only supported when avx512 is supported")

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", unavailable)
    with torch.no_grad():
        assert torch.equal(fused(x), explicit(x))

    def broken(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        fused(x)
