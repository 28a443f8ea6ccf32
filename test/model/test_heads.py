"""Heads vs the official code: strict state_dict loading and identical outputs.

Fixture: test/data/heads_tiny.pt, written by scripts/make_head_fixtures.py from the official
Scal3R heads (tiny dims, randomised weights); the official code is not needed here.

Tolerance: the heads are fp32 only (no bf16 anywhere), so on another CPU kernel set (ATen AVX2 vs
AVX-512 vs scalar, oneDNN convolutions on or off, MKL's GEMM path) only the summation order of
their reductions changes: the longest have a few hundred terms (3x3 convolutions over 32 channels:
288; the camera trunk's 256-wide MLP), which moves a result by about ``sqrt(n) * 2^-24 ~ 1e-6`` of
its terms' scale. ``RTOL = 1e-5`` of the largest expected magnitude leaves ~10x room; measured
<= 8e-7 under every kernel set of test/model/test_kernel_matrix.py (the fixture was made on
another machine).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DATA, load_pt

from scal3r_ros.model.heads import CameraHead, DPTHead, activate_head, inverse_log_transform

FIXTURE = load_pt("heads_tiny.pt")
RTOL = 1e-5  # of the largest expected magnitude (see the module docstring)


def _build_heads() -> tuple[CameraHead, DPTHead, DPTHead]:
    cfg = FIXTURE["config"]
    camera = CameraHead(**cfg["camera"]).eval()
    depth = DPTHead(**cfg["depth"]).eval()
    point = DPTHead(**cfg["point"]).eval()
    for module, name in ((camera, "camera"), (depth, "depth"), (point, "point")):
        module.load_state_dict(FIXTURE["state_dicts"][name], strict=True)
    return camera, depth, point


HEADS = _build_heads()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    assert torch.isfinite(expected).all() and torch.isfinite(actual).all(), what
    err = (actual.double() - expected.double()).abs().max().item()
    rel = err / expected.double().abs().max().item()
    assert rel <= RTOL, f"{what}: max abs err {err:.3g} (relative {rel:.3g} > {RTOL})"


@pytest.mark.parametrize("case_idx", range(len(FIXTURE["cases"])))
def test_camera_head_matches_official(case_idx: int) -> None:
    case = FIXTURE["cases"][case_idx]
    camera, _, _ = HEADS
    with torch.inference_mode():
        outputs = camera(case["tokens"], num_iterations=4)
    assert len(outputs) == 4
    for it, (ours, theirs) in enumerate(zip(outputs, case["camera"], strict=True)):
        assert ours.shape == (case["batch"], case["frames"], 9)
        _assert_close(ours, theirs, f"camera iteration {it}")


@pytest.mark.parametrize("case_idx", range(len(FIXTURE["cases"])))
@pytest.mark.parametrize("frames_chunk_size", ["fixture", None, 1])
def test_dpt_heads_match_official(case_idx: int, frames_chunk_size) -> None:
    case = FIXTURE["cases"][case_idx]
    _, depth, point = HEADS
    B, S = case["batch"], case["frames"]
    H, W = case["image_hw"]
    images = torch.zeros(B, S, 3, H, W)
    chunk = case["frames_chunk_size"] if frames_chunk_size == "fixture" else frames_chunk_size
    psi = FIXTURE["config"]["patch_start_idx"]
    with torch.inference_mode():
        depth_map, depth_conf = depth(case["tokens"], images, psi, frames_chunk_size=chunk)
        pts_map, pts_conf = point(case["tokens"], images, psi, frames_chunk_size=chunk)
    assert depth_map.shape == (B, S, H, W, 1)
    assert depth_conf.shape == (B, S, H, W)
    assert pts_map.shape == (B, S, H, W, 3)
    assert pts_conf.shape == (B, S, H, W)
    _assert_close(depth_map, case["depth"], "depth")
    _assert_close(depth_conf, case["depth_conf"], "depth confidence")
    _assert_close(pts_map, case["points"], "points")
    _assert_close(pts_conf, case["points_conf"], "points confidence")
    # activations: depth = exp (> 0), confidence = 1 + exp (> 1)
    assert (depth_map > 0).all() and (depth_conf > 1).all() and (pts_conf > 1).all()


def test_dpt_head_accepts_dict_of_layers() -> None:
    """The release pipeline passes a dict {layer index: features}; same result as a list."""
    case = FIXTURE["cases"][0]
    _, depth, _ = HEADS
    H, W = case["image_hw"]
    images = torch.zeros(case["batch"], case["frames"], 3, H, W)
    as_dict = {i: t for i, t in enumerate(case["tokens"])}
    as_dict[-1] = case["tokens"][-1]
    with torch.inference_mode():
        from_dict = depth(as_dict, images, 5, frames_chunk_size=None)[0]
        from_list = depth(case["tokens"], images, 5, frames_chunk_size=None)[0]
    assert torch.equal(from_dict, from_list)


def test_feature_only_returns_feature_map() -> None:
    head = DPTHead(
        dim_in=32,
        features=16,
        out_channels=[8, 8, 16, 16],
        feature_only=True,
        intermediate_layer_idx=[0, 1, 2, 3],
    ).eval()
    tokens = [torch.randn(1, 3, 5 + 2 * 3, 32) for _ in range(4)]
    with torch.inference_mode():
        feats = head(tokens, torch.zeros(1, 3, 3, 28, 42), 5, frames_chunk_size=2)
    assert feats.shape == (1, 3, 16, 28, 42)


def test_heads_run_on_bf16_tokens() -> None:
    """Tokens from a bf16 trunk are cast to the (fp32) head parameters."""
    case = FIXTURE["cases"][1]
    camera, depth, _ = HEADS
    tokens = [t.to(torch.bfloat16) for t in case["tokens"]]
    H, W = case["image_hw"]
    with torch.inference_mode():
        cam = camera(tokens)[-1]
        dmap, _ = depth(tokens, torch.zeros(case["batch"], case["frames"], 3, H, W), 5)
    assert cam.dtype == torch.float32 and dmap.dtype == torch.float32
    assert (cam - case["camera"][-1]).abs().max() < 0.5  # bf16 input rounding only


def _release_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (DATA / "scal3r_state_dict.tsv").read_text().splitlines():
        if line.startswith(prefix + "."):
            name, shape, _ = line.split("\t")
            keys[name[len(prefix) + 1 :]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    return keys


@pytest.mark.parametrize(
    ("prefix", "factory"),
    [
        ("cam_decoder", lambda: CameraHead(dim_in=2048)),
        (
            "xyz_decoder",
            lambda: DPTHead(
                dim_in=2048, output_dim=4, activation="inv_log", conf_activation="expp1"
            ),
        ),
        (
            "dpt_decoder",
            lambda: DPTHead(dim_in=2048, output_dim=2, activation="exp", conf_activation="expp1"),
        ),
    ],
)
def test_release_heads_have_checkpoint_keys_and_shapes(prefix: str, factory) -> None:
    with torch.device("meta"):
        module = factory()
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    expected = _release_keys(prefix)
    assert list(ours) == list(expected)  # same keys, same order as the official state_dict
    assert ours == expected


def test_release_head_parameter_counts() -> None:
    """Reference §3: cam_decoder 216.2 M, xyz/dpt decoders 32.65 M parameters each."""
    with torch.device("meta"):
        cam = CameraHead(dim_in=2048)
        dpt = DPTHead(dim_in=2048, output_dim=2)
    assert round(sum(p.numel() for p in cam.parameters()) / 1e5) == 2162
    assert round(sum(p.numel() for p in dpt.parameters()) / 1e4) == 3265


def test_inverse_log_transform_is_odd_and_inverts_log1p() -> None:
    y = torch.linspace(-5, 5, 101)
    x = inverse_log_transform(y)
    assert torch.allclose(x, -inverse_log_transform(-y))
    assert torch.allclose(torch.sign(x) * torch.log1p(x.abs()), y, atol=1e-5)


def test_activate_head_splits_channels() -> None:
    out = torch.randn(2, 4, 5, 6)
    pts, conf = activate_head(out, activation="inv_log", conf_activation="expp1")
    assert pts.shape == (2, 5, 6, 3) and conf.shape == (2, 5, 6)
    assert torch.allclose(conf, 1 + out[:, 3].exp())
    assert torch.allclose(pts, inverse_log_transform(out[:, :3].permute(0, 2, 3, 1)))
    with pytest.raises(ValueError):
        activate_head(out, activation="nope")
