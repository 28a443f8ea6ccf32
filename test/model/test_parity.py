"""Parity with the official Scal3R code (zju3dv/Scal3R dc557e7) for the ``tiny`` preset.

test/data/parity_tiny.pt was produced by scripts/make_parity_fixtures.py from the official
``scal3r.pipelines.backend.forward`` (layer-synchronous, global TTT sync, fp32 CPU) with random
weights; see that script for the seed and config. Here the saved state_dict is loaded STRICTLY
into our tiny model and every output is compared: pose encoding, world-to-camera extrinsics,
intrinsics, depth, depth confidence, points, point confidence, the raw per-chunk GCM gradients,
their cross-chunk sums and the shared updated fast weights. The official code is not needed.

Layouts: ``sync2`` (2 chunks of 3+2 frames, 28x42, full GCM tensors), ``sync3`` (3 chunks of
2+1+2 frames, 42x28), ``single`` (one chunk of 3 frames == schedule (c)), ``square`` (one 70x70
frame: the pos-embed interpolation is skipped).
"""

from pathlib import Path

import pytest
import torch

from scal3r_ros.model import Scal3R, run_chunk, run_synchronous
from scal3r_ros.model.checkpoint import load_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "parity_tiny.pt"
RTOL = 1e-4  # relative to the largest magnitude of the expected tensor
OUTPUT_KEYS = (
    "pose_enc",
    "extrinsics",
    "intrinsics",
    "depth",
    "depth_conf",
    "world_points",
    "world_points_conf",
)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(fixture):
    m = Scal3R("tiny").eval()
    m.load_state_dict(fixture["state_dict"], strict=True)
    return m


def _images(case):
    return [im.float() / 255.0 for im in case["images"]]


def _max_err(got: torch.Tensor, exp: torch.Tensor) -> tuple[float, float]:
    assert got.shape == exp.shape, (got.shape, exp.shape)
    fin = torch.isfinite(exp)
    # non-finite expectations (e.g. inf focal length from a ReLU'd FoV of 0) must match exactly
    assert torch.equal(torch.isfinite(got), fin)
    assert torch.equal(got[~fin], exp[~fin])
    if not fin.any():
        return 0.0, 0.0
    err = (got[fin].double() - exp[fin].double()).abs().max().item()
    scale = exp[fin].double().abs().max().item()
    return err, err / max(scale, 1e-12)


def _check(name, got, exp, errors):
    err, rel = _max_err(got, exp)
    errors[name] = err
    assert rel <= RTOL, f"{name}: max abs err {err:.3g} (relative {rel:.3g})"


def test_fixture_is_small_and_tiny(fixture):
    assert FIXTURE.stat().st_size < 2_000_000
    assert fixture["meta"]["preset"] == "tiny"


def test_tiny_state_dict_loads_strictly(fixture, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(fixture["state_dict"], path)
    m = Scal3R("tiny")
    report = load_checkpoint(m, path)
    assert report.format == "scal3r" and not report.left_at_init
    assert report.loaded == len(m.state_dict())


@pytest.mark.parametrize("layout", ["sync2", "sync3", "single", "square"])
def test_official_layer_synchronous_forward(fixture, model, layout):
    case = fixture["cases"][layout]
    outs = run_synchronous(model, _images(case), return_gcm=True)
    assert len(outs) == len(case["outputs"])
    errors: dict[str, float] = {}
    for c, (out, exp) in enumerate(zip(outs, case["outputs"], strict=True)):
        for key in OUTPUT_KEYS:
            _check(f"chunk{c}.{key}", getattr(out, key), exp[key], errors)
    for j, gcm in case["gcm"].items():
        for k, (got, exp) in enumerate(
            zip(outs[0].gcm_fast_weights[j], gcm["fast_weights"], strict=True)
        ):
            _check(f"gcm{j}.fast_w{k}", got, exp, errors)
        if "sums" in gcm:
            for k, (got, exp) in enumerate(zip(outs[0].gcm_grad_sums[j], gcm["sums"], strict=True)):
                _check(f"gcm{j}.sum_g{k}", got, exp, errors)
            for c, exp_c in enumerate(gcm["grads"]):
                for k, (got, exp) in enumerate(zip(outs[c].gcm_grads[j], exp_c, strict=True)):
                    _check(f"gcm{j}.chunk{c}.g{k}", got, exp, errors)
    print(f"\n[{layout}] max abs error over all outputs: {max(errors.values()):.3g}")


def test_single_chunk_schedules_agree_with_official(fixture, model):
    """For one chunk, 'no sync' (c) and 'causal' (b) from an empty state are the official result."""
    from scal3r_ros.model import GCSState

    case = fixture["cases"]["single"]
    images = _images(case)[0]
    exp = case["outputs"][0]
    with torch.inference_mode():
        out_c, _ = run_chunk(model, images, None)
        out_b, state = run_chunk(model, images, GCSState())
    assert state.count == 1
    errors: dict[str, float] = {}
    for key in OUTPUT_KEYS:
        _check(f"c.{key}", getattr(out_c, key), exp[key], errors)
        _check(f"b.{key}", getattr(out_b, key), exp[key], errors)


def test_gcs_matters(fixture, model):
    """Negative control: without synchronisation the multi-chunk outputs differ from the official
    ones by far more than the tolerance (so the comparison above really checks the GCS path)."""
    case = fixture["cases"]["sync2"]
    with torch.inference_mode():
        out, _ = run_chunk(model, _images(case)[0], None)
    exp = case["outputs"][0]
    _, rel = _max_err(out.pose_enc, exp["pose_enc"])
    assert rel > 100 * RTOL
