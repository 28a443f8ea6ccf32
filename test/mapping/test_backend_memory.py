"""The backend's model footprint (issue 14): only the heads the engine reads, bf16-held trunk
weights under bf16 autocast, with the same predictions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from scal3r_ros.mapping.backends.factory import BackendSpec, make_backend
from scal3r_ros.mapping.backends.protocol import ChunkInput
from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
from scal3r_ros.model import Scal3R, run_synchronous

BF16 = torch.bfloat16


def _tiny(seed: int = 0) -> Scal3R:
    torch.manual_seed(seed)
    m = Scal3R("tiny")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # make the GCM path and the special tokens matter
        for name, p in m.named_parameters():
            if ".ttt.proj" in name or name.endswith("_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def _chunk(chunk_id: int, n: int = 4, seed: int = 0) -> ChunkInput:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 42, 3), dtype=np.uint8)
    return ChunkInput(chunk_id, np.arange(n), np.arange(n), images)


def _same(a, b) -> None:
    for f in ("c2w", "intrinsics", "depth", "depth_conf"):
        x, y = getattr(a, f), getattr(b, f)
        assert np.array_equal(np.asarray(x), np.asarray(y)), f


def test_factory_keeps_only_the_heads_the_engine_reads():
    base = dict(kind="tiny", device="cpu", loop_closure=False)
    slim = make_backend(BackendSpec(**base)).backend
    assert slim.model.available_heads() == ("camera", "depth")
    assert slim.model.held_dtype is None  # fp32 on the CPU by default
    full = make_backend(BackendSpec(**base, point_head=True)).backend
    assert full.model.available_heads() == ("camera", "depth", "points")
    assert full.config.point_head
    pred = full.infer(_chunk(0), None)
    assert pred.points is not None
    bf16 = make_backend(BackendSpec(**base, dtype="bfloat16")).backend
    assert bf16.model.held_dtype == BF16 and bf16.config.autocast_bf16


def test_slim_backend_predicts_bitwise_like_the_full_model_under_bf16_autocast():
    model = _tiny()
    cfg = Scal3RBackendConfig(device="cpu", autocast_bf16=True, descriptors=False)
    full = Scal3RBackend(copy.deepcopy(model), cfg)
    slim = Scal3RBackend(
        copy.deepcopy(model), Scal3RBackendConfig(**{**vars(cfg), "slim_model": True})
    )
    assert slim.model.held_dtype == BF16 and full.model.held_dtype is None
    assert slim.model.xyz_decoder is None and full.model.xyz_decoder is not None
    s_state, f_state = slim.new_gcs_state("causal"), full.new_gcs_state("causal")
    for k in range(3):
        _same(slim.infer(_chunk(k, seed=k), s_state), full.infer(_chunk(k, seed=k), f_state))
    # exact mode: the gradient passes run the trunk under the same autocast as the last pass
    loads = [lambda k=k: _chunk(k, seed=k) for k in range(3)]
    ours = list(slim.infer_exact(loads))
    with torch.inference_mode():
        ref = run_synchronous(
            model,
            [slim._tensor(f().images) for f in loads],
            heads=("camera", "depth"),
            autocast_dtype=BF16,
        )
    for p, r in zip(ours, ref, strict=True):
        assert np.array_equal(np.asarray(p.depth), r.depth[0, ..., 0].float().numpy())


def test_a_slim_model_refuses_settings_it_cannot_serve():
    model = _tiny()
    Scal3RBackend(model, Scal3RBackendConfig(device="cpu", autocast_bf16=True, slim_model=True))
    with pytest.raises(ValueError, match="autocast"):
        Scal3RBackend(model, Scal3RBackendConfig(device="cpu"))  # fp32 run of bf16 weights
    with pytest.raises(ValueError, match="points"):
        Scal3RBackend(model, Scal3RBackendConfig(device="cpu", autocast_bf16=True, point_head=True))
