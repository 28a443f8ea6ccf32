"""GCM (test-time-training) layer maths and the GCS schedules (no official code needed)."""

import pytest
import torch
import torch.nn.functional as F

from scal3r_ros.model import GCMGrads, GCSState, Scal3R, run_chunk, run_synchronous
from scal3r_ros.model.gcm import GCMLayer, zeropower_via_newtonschulz5
from scal3r_ros.model.layers import PositionGetter, RotaryPositionEmbedding2D


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    m = Scal3R("tiny").eval()
    with torch.no_grad():
        m.agg_regator.camera_token.normal_()
        m.agg_regator.register_token.normal_()
        for j in m.agg_regator.gcm_layers:
            m.agg_regator.gcm(j).proj.weight.normal_(std=0.2)
    return m


def _chunks(sizes=(3, 2, 2), H=28, W=42, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, s, 3, H, W, generator=g) for s in sizes]


def _layer(dim=32, heads=1):
    torch.manual_seed(0)
    layer = GCMLayer(dim, num_heads=heads, rope=RotaryPositionEmbedding2D(100.0), inter_multi=2)
    with torch.no_grad():
        layer.proj.weight.normal_(std=0.2)
        layer.lrs.weight.normal_(std=0.2)
    pos = PositionGetter()(1, 3, 4, "cpu").repeat(1, 2, 1) + 1  # 2 frames of 3x4 patches
    x = torch.randn(1, 24, dim)
    return layer, x, pos


@pytest.mark.parametrize("heads", [1, 2])
def test_closed_form_gradient_matches_autograd(heads):
    """g_k = -d/dW_k sum_l lr_k,l <v_l, f_W(k_l)> with f_W(z) = (silu(z W0) * (z W2)) W1."""
    layer, x, pos = _layer(heads=heads)
    g = layer.gradient(x, pos)
    B, L, D = x.shape
    d = D // heads
    qkv = layer.qkv(x).reshape(B, L, 3, heads, d).permute(2, 0, 3, 1, 4)
    k = layer.rope(layer.k_norm(qkv[1]), pos).reshape(B * heads, L, d).detach()
    v = qkv[2].reshape(B * heads, L, d).detach()
    lrs = F.softplus(layer.lrs(x) + layer.inv_base_lr).reshape(B, L, 3, heads).permute(2, 0, 3, 1)
    lrs = lrs.reshape(3, B * heads, L, 1).detach()
    for idx in range(3):
        w = [
            t.detach().clone().requires_grad_(i == idx)
            for i, t in enumerate(layer.initial_weights(B))
        ]
        f = (F.silu(k @ w[0]) * (k @ w[2])) @ w[1]
        loss = -(lrs[idx] * (v * f)).sum()
        (grad,) = torch.autograd.grad(loss, w[idx])
        torch.testing.assert_close(-grad, g[idx], rtol=1e-4, atol=1e-5)


def test_newton_schulz_bf16_and_orthogonalises():
    torch.manual_seed(0)
    G = torch.randn(2, 32, 64)
    X = zeropower_via_newtonschulz5(G, 5)
    assert X.dtype == torch.bfloat16 and X.shape == G.shape
    s = torch.linalg.svdvals(X.float())
    assert s.min() > 0.3 and s.max() < 1.6  # singular values pushed towards ~1
    tall = zeropower_via_newtonschulz5(G.transpose(1, 2), 5)  # rows > cols path
    assert torch.equal(tall, X.transpose(1, 2))


def test_update_restores_column_norms_and_zero_gradient():
    layer, x, pos = _layer()
    g = layer.gradient(x, pos)
    w = layer.update(g)
    for new, old in zip(w, layer.initial_weights(1), strict=True):
        assert new.dtype == torch.float32
        torch.testing.assert_close(new.norm(dim=1), old.norm(dim=1), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(new, old)
    zero = GCMGrads(*(torch.zeros_like(t) for t in g))
    for new, old in zip(layer.update(zero), layer.initial_weights(1), strict=True):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)  # only renorm eps changes it


def test_apply_with_official_zero_init_is_zero():
    layer = GCMLayer(32, inter_multi=2)  # proj zero-init, gate bias 0.1, shift/scale 0
    x = torch.randn(1, 10, 32)
    out = layer.apply(x, layer.initial_weights(1))
    # gate 0.1 * (LN(o) * 1 + 0): a small layer-normalised residual, zero once the gate is zero
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.std(dim=-1), torch.full((1, 10), 0.1), rtol=1e-2, atol=1e-3)
    with torch.no_grad():
        layer.proj.bias.zero_()
    assert torch.count_nonzero(layer.apply(x, layer.initial_weights(1))) == 0


def test_synchronous_single_chunk_equals_no_sync(tiny):
    (x,) = _chunks(sizes=(3,))
    a = run_synchronous(tiny, [x], return_gcm=True)[0]
    c, _ = run_chunk(tiny, x, None, return_gcm=True)
    assert torch.equal(a.pose_enc, c.pose_enc) and torch.equal(a.depth, c.depth)
    for j in tiny.agg_regator.gcm_layers:
        assert all(torch.equal(p, q) for p, q in zip(a.gcm_grads[j], c.gcm_grads[j], strict=True))


def test_synchronous_sums_and_shared_weights(tiny):
    chunks = _chunks()
    outs = run_synchronous(tiny, chunks, return_gcm=True)
    for j in tiny.agg_regator.gcm_layers:
        total = outs[0].gcm_grads[j].clone()
        for o in outs[1:]:
            total.add_(o.gcm_grads[j])
        for t, s in zip(total, outs[0].gcm_grad_sums[j], strict=True):
            assert torch.equal(t, s)
        for o in outs[1:]:
            assert o.gcm_fast_weights[j] is outs[0].gcm_fast_weights[j]
    # every chunk depends on the others (only through the GCM sums)
    alone, _ = run_chunk(tiny, chunks[0], None)
    assert not torch.allclose(alone.pose_enc, outs[0].pose_enc, atol=1e-4)


def test_replay_with_given_sums_reproduces_synchronous(tiny):
    chunks = _chunks()
    outs = run_synchronous(tiny, chunks, return_gcm=True)
    sums = outs[0].gcm_grad_sums
    for c, x in enumerate(chunks):
        with torch.inference_mode():
            r = tiny(x, grad_sums=sums)
        assert torch.equal(r.pose_enc, outs[c].pose_enc)
        assert torch.equal(r.depth, outs[c].depth)


def test_causal_schedule(tiny):
    chunks = _chunks()
    sync = run_synchronous(tiny, chunks, return_gcm=True)
    state = GCSState()
    outs = []
    sizes = []
    for x in chunks:
        out, state = run_chunk(tiny, x, state, return_gcm=True)
        outs.append(out)
        sizes.append(state.nbytes())
    assert state.count == 3
    assert len(set(sizes)) == 1  # constant-size state
    first = tiny.agg_regator.gcm_layers[0]
    # chunk 0 sees only itself: identical to no sync
    alone, _ = run_chunk(tiny, chunks[0], None)
    assert torch.equal(outs[0].pose_enc, alone.pose_enc)
    # at the first GCM layer the gradients do not depend on the schedule, so the last chunk's
    # running sum equals the synchronous (all-chunk) sum, same accumulation order
    for a, b in zip(outs[-1].gcm_grad_sums[first], sync[0].gcm_grad_sums[first], strict=True):
        assert torch.equal(a, b)
    # the state holds the running sums; its own gradients are what was added
    for j in tiny.agg_regator.gcm_layers:
        total = outs[0].gcm_grads[j].clone()
        for o in outs[1:]:
            total.add_(o.gcm_grads[j])
        for a, b in zip(total, state.sums[j], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # state round trip
    again = GCSState.from_state_dict(state.state_dict())
    assert again.count == 3 and all(
        torch.equal(a, b)
        for j in state.sums
        for a, b in zip(again.sums[j], state.sums[j], strict=True)
    )


def test_custom_sync_callable(tiny):
    (x,) = _chunks(sizes=(2,))
    seen = []

    def sync(layer, g):
        seen.append(layer)
        return GCMGrads(*(2 * t for t in g))

    with torch.inference_mode():
        tiny(x, sync)
    assert seen == list(tiny.agg_regator.gcm_layers)


@pytest.mark.gpu
def test_gcm_loop_has_no_host_sync_on_cuda(tiny):
    m = Scal3R("tiny").eval().cuda()
    m.load_state_dict(tiny.state_dict())
    chunks = [c.cuda() for c in _chunks()]
    agg = m.agg_regator
    state = GCSState()
    with torch.inference_mode():
        sts = [agg.prepare(c) for c in chunks]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for j in range(agg.depth):
                for st in sts:
                    agg.forward_layer(st, j)
                if j in agg.gcm_layers:
                    for st in sts:
                        fw = agg.gcm_update(j, state.sync(j, agg.gcm_gradient(st, j)))
                        agg.gcm_apply(st, j, fw)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert all(t.is_cuda for g in state.sums.values() for t in g)
