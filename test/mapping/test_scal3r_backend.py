"""The tiny random Scal3R network through the engine, in the three GCS modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import PosesUpdate, StatsUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive
from scal3r_ros.mapping.windowing import ChunkScheduler, WindowConfig
from scal3r_ros.model.gcs import run_synchronous


def tiny_backend(seed: int = 0) -> Scal3RBackend:
    """Tiny random network with the GCM path made visible (the official Scal3R init, which
    this package copies: the GCM output projection starts at zero and the special tokens
    at ~1e-6, so a random network would hide them)."""
    b = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(max_size=70), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in b.model.named_parameters():
            if ("ttt" in name or "gcm" in name) and "proj" in name or name.endswith("_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return b


DRIVE = dict(n_frames=24, width=160, height=48)  # the conftest's ``drive`` fixture


def run(drive: SyntheticDrive, mode: str) -> tuple[MappingEngine, list]:
    cfg = EngineConfig(window=WindowConfig(8, 4), gcs_mode=mode)
    eng = MappingEngine(cfg, tiny_backend())
    return eng, push_and_collect(eng, drive)


@pytest.mark.parametrize("mode", ["causal", "exact", "off"])
def test_engine_runs_end_to_end_with_the_tiny_network(drive, mode):
    eng, ev = run(drive, mode)
    assert eng.n_chunks == 5
    ids, _, c2w = eng.poses()
    assert list(ids) == list(range(24)) and np.isfinite(c2w).all()
    assert any(isinstance(e, PosesUpdate) for e in ev)
    gcs = [e.memory["gcs_state_bytes"] for e in ev if isinstance(e, StatsUpdate)]
    if mode == "causal":
        assert gcs[0] > 0 and len(set(gcs)) == 1  # constant-size state
    else:
        assert set(gcs) == {0.0}


def _chunks(backend: Scal3RBackend, drive: SyntheticDrive):
    """Every window's network input as the engine builds it (exact mode keeps all frames)."""
    cfg = EngineConfig(window=WindowConfig(8, 4), gcs_mode="exact")
    eng = MappingEngine(cfg, backend)
    windows = ChunkScheduler(cfg.window)  # the windows the engine's own scheduler cuts
    specs = []
    push_and_collect(eng, drive, flush=False, on_push=lambda _: specs.append(windows.push()))
    specs.append(windows.flush())
    return [eng.chunk_input(s.frame_ids, s.chunk_id, s.is_loop) for s in specs if s is not None]


def test_exact_mode_reproduces_the_official_synchronous_schedule(drive):
    backend = tiny_backend()
    inputs = _chunks(backend, drive)
    ours = list(backend.infer_exact([lambda c=c: c for c in inputs]))
    with torch.inference_mode():
        ref = run_synchronous(
            backend.model, [backend._tensor(c.images) for c in inputs], heads=("camera", "depth")
        )
    for p, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(p.depth, r.depth[0, ..., 0].numpy(), rtol=1e-5, atol=1e-6)
        w2c = np.linalg.inv(p.c2w)[:, :3]
        np.testing.assert_allclose(w2c, r.extrinsics[0].double().numpy(), atol=1e-5)
    # and causal differs from exact (GCM path is live), except for the last chunk's
    # first GCM layer ... the engine-level difference is measured in the report
    causal = [backend.infer(c, backend.new_gcs_state("causal")) for c in inputs[:1]]
    assert not np.allclose(causal[0].depth, ours[0].depth, rtol=1e-4)


def test_batch_preprocessing_matches_the_official_path_within_one_level():
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig

    rgb = make_drive(n_frames=2, width=621, height=188).render(1)[0]
    out = {}
    for mode in ("reference", "batch"):
        b = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cpu", preprocess=mode))
        out[mode], _ = b.prepare(rgb, None)
    assert out["batch"].shape == out["reference"].shape == (154, 518, 3)
    diff = np.abs(out["batch"].astype(int) - out["reference"].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.gpu
def test_frames_prepared_on_their_cuda_stream_equal_the_cpu_reference():
    """`prepare` on CUDA runs on a stream of its own (so it does not wait for a running
    window); its 8-bit images are the official CPU preprocessing's, bit for bit."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    K = np.array([[718.0, 0, 607], [0, 718.0, 185], [0, 0, 1]])
    cpu = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(preprocess="reference"))
    gpu = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cuda", preprocess="batch"))
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # a long queue of work on the default stream meanwhile
        busy = busy @ busy / 64
    (a, Ka), (b, Kb) = cpu.prepare(image, K), gpu.prepare(image, K)
    assert np.array_equal(a, b) and np.allclose(Ka, Kb)
