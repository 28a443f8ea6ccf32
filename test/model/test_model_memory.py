"""Model memory (issue 14): bf16-held trunk weights, dropped heads (bitwise the same results)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scal3r_ros.model import CheckpointError, Scal3R, load_scal3r, run_synchronous
from scal3r_ros.model.config import (
    CameraHeadConfig,
    DinoConfig,
    DPTHeadConfig,
    GCMConfig,
    Scal3RConfig,
    TrunkConfig,
)
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


# ----------------------------------------------------------------------------- streamed loading
def test_streamed_load_keeps_asked_heads_and_holds_bf16(tmp_path, tiny):
    path = tmp_path / "scal3r.pt"
    torch.save(tiny.state_dict(), path)
    slim, rep = load_scal3r(
        path, "tiny", heads=("camera", "depth"), autocast_dtype=BF16, device="cpu"
    )
    assert rep.format == "scal3r" and slim.available_heads() == ("camera", "depth")
    assert slim.held_dtype == BF16
    low = set(autocast_weight_names(slim))
    ref = tiny.state_dict()
    for k, v in slim.state_dict().items():
        assert v.dtype == (BF16 if k in low else torch.float32), k
        assert torch.equal(v, ref[k].to(v.dtype)), k
    assert not any(t.is_meta for t in [*slim.parameters(), *slim.buffers()])
    with torch.no_grad():
        x = _images(3, 5)
        out = slim.forward_chunk(x, autocast_dtype=BF16)
        want = tiny.forward_chunk(x, autocast_dtype=BF16, heads=("camera", "depth"))
    _assert_same(out, want, FIELDS)
    full, _ = load_scal3r(path, "tiny")  # defaults: everything, fp32, as before
    assert full.held_dtype is None and full.available_heads() == ("camera", "depth", "points")
    for k, v in full.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k])


def test_streamed_load_still_checks_the_whole_file(tmp_path, tiny):
    """Keys of a head that is not kept must still be there: a broken file is refused."""
    sd = tiny.state_dict()
    sd.pop(next(k for k in sd if k.startswith("xyz_decoder.")))
    path = tmp_path / "short.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_scal3r(path, "tiny", heads=("camera", "depth"))


MID = Scal3RConfig(  # ~430 MB fp32: big enough for RSS to show, small enough for a test
    name="mid",
    trunk=TrunkConfig(
        embed_dim=512,
        depth=8,
        num_heads=8,
        intermediate_layer_idx=(1, 3, 5, 7),
        dino=DinoConfig(embed_dim=512, depth=8, num_heads=8),
        gcm=GCMConfig(layers=(5, 7)),
    ),
    camera_head=CameraHeadConfig(trunk_depth=1, num_heads=8),
    dpt_head=DPTHeadConfig(features=64, out_channels=(64, 128, 256, 256)),
)

_RSS_PROBE = """
import json, sys, torch
from scal3r_ros.model.checkpoint import load_scal3r
sys.path.insert(0, {here!r})
from test_model_memory import MID

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
if sys.argv[1] == "old":  # load as before issue 14 (whole fp32 model), then slim it
    model, _ = load_scal3r(sys.argv[2], MID)
    model.drop_heads(("camera", "depth"))
    model.hold_autocast_weights(torch.bfloat16)
else:
    kept = ("camera", "depth")
    model, _ = load_scal3r(sys.argv[2], MID, heads=kept, autocast_dtype=torch.bfloat16)
print(json.dumps({{"peak": status("VmHWM:") - before, "after": status("VmRSS:") - before}}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_streamed_load_releases_the_file_pages(tmp_path):
    """Peak RSS growth of loading a ~430 MB checkpoint into a slim bf16 model: the streamed
    loader drops each cast tensor's file pages after the copy, so the peak holds the bf16 copies
    but not the fp32 file; the old way (load, then cast) held both. Measured, not timed."""
    with torch.device("meta"):
        meta = Scal3R(MID)
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "mid.pt"
    torch.save({k: torch.randn(v.shape, generator=g) for k, v in meta.state_dict().items()}, path)
    size = path.stat().st_size
    params = dict(meta.named_parameters())
    cast_fp32 = sum(params[n].numel() * 4 for n in autocast_weight_names(meta))
    here = str(Path(__file__).parent)
    got = {}
    for mode in ("old", "new"):
        run = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE.format(here=here), mode, str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
        got[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    # the old way reads every cast tensor's pages and keeps them with the bf16 copies
    assert got["old"]["peak"] > cast_fp32
    # the new way holds the bf16 copies (cast_fp32 / 2) plus a constant, not the file
    assert got["new"]["peak"] < got["old"]["peak"] - cast_fp32 / 2
    assert got["new"]["peak"] < 0.7 * size
    print(
        f"file {size / 2**20:.0f} MiB: peak RSS growth old {got['old']['peak'] / 2**20:.0f} "
        f"MiB, new {got['new']['peak'] / 2**20:.0f} MiB"
    )


# ----------------------------------------------------------------------------- window estimate
def test_window_memory_estimate_meets_the_target(monkeypatch):
    """scal3r-1b, one 60-frame 1242x375 window under bf16 autocast, sized under FakeTensorMode
    (nothing computed): the node's model fits the issue's 7.5 GiB allocated target, and the
    pre-issue-14 code (written-out GCM, fp32 weights, all heads) needs >= 3 GiB more (its
    estimate is within 2% of the 10,575 MiB measured on an H200)."""
    from gcm_reference import reference_apply, reference_gradient

    from scal3r_ros.model.gcm import GCMLayer
    from scal3r_ros.model.memcheck import MemcheckConfig, estimate_window

    cfg = MemcheckConfig(device="cpu")  # defaults: 60 frames, 1242x375, bf16
    new = estimate_window(cfg, slim=True)
    assert new["peak_allocated_mib"] <= 7.5 * 1024
    monkeypatch.setattr(GCMLayer, "gradient", lambda s, x, p=None: reference_gradient(s, x, p))
    monkeypatch.setattr(GCMLayer, "apply", lambda s, x, f, p=None: reference_apply(s, x, f, p))
    old = estimate_window(cfg, slim=False)
    assert old["peak_allocated_mib"] >= new["peak_allocated_mib"] + 3 * 1024
    assert abs(old["peak_allocated_mib"] - 10575) < 0.02 * 10575
