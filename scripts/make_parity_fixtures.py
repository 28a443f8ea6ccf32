#!/usr/bin/env python
"""Produce test/data/parity_tiny.pt: outputs of the OFFICIAL Scal3R code for the ``tiny`` preset.

Usage (needs the official checkout and its deps: einops, pyyaml, scipy, tqdm, rich,
opencv-python-headless, pillow, pypose, matplotlib):

    python scripts/make_parity_fixtures.py --official /path/to/Scal3R \
        [--official-commit SHA] [--out test/data/parity_tiny.pt]

What it does (CPU, fp32, fixed seed; nothing from scal3r_ros is used to make the expectations):

1. Builds the official ``scal3r.models.scal3r.Scal3R`` with a sampler config equal to our
   ``tiny`` preset (scal3r_ros/model/config.py): width 32, 4 trunk layers, 2 heads, GCM after
   global blocks 1 and 3, heads reading layers 0-3, camera head with one trunk block, DPT heads
   with 8 features. The DINOv2 backbone is the official ``DinoVisionTransformer`` class with
   registers, but with width 32 / depth 1 / 2 heads / 70 px pos-embed grid (the official factory
   only knows the ViT-S/B/L/g sizes, so ``vit_small`` is swapped for this builder).
2. Re-randomises what random init leaves degenerate, so every path is exercised: camera/register
   tokens (init ~1e-6), the GCM output projection (zero-init), every LayerScale gamma (0.01),
   every norm weight/bias (ones/zeros), the camera head's empty pose token (zeros).
3. Runs ``scal3r.pipelines.backend.forward`` (the release layer-synchronous loop with global TTT
   synchronisation and the heads) on several chunk layouts, recording the raw per-chunk GCM
   gradients, their sums and the shared fast weights by wrapping ``ttt_gradient``/``ttt_update``.
   For the single-chunk layout it also runs the official ``Aggregator.forward`` (+ heads) path and
   checks it agrees with the backend path.
4. Saves the state_dict, the uint8 input images, the outputs and the GCM tensors (float32).

The tests (test/model/test_parity.py) load the state_dict strictly into our tiny model and compare,
without the official code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

SEED = 20260417

# chunk layouts: name -> (list of frames per chunk, H, W)
LAYOUTS = {
    # official multi-chunk GCS run: two chunks of different length, landscape
    "sync2": ([3, 2], 28, 42),
    # three chunks, portrait size (another pos-embed interpolation), incl. a 1-frame chunk
    "sync3": ([2, 1, 2], 42, 28),
    # a single chunk (official single-chunk result == our schedule (c) "no sync")
    "single": ([3], 28, 42),
    # square 70x70 -> 5x5 patches == pos-embed grid: the pos-embed interpolation is skipped
    "square": ([1], 70, 70),
}


def tiny_sampler_cfg(dotdict):
    """Official sampler_cfg equal to scal3r_ros ``tiny`` (keep in sync with config.py)."""
    return dotdict(
        use_checkpoint=False,
        agg_regator_cfg=dotdict(
            img_size=70,
            patch_size=14,
            embed_dim=32,
            depth=4,
            num_heads=2,
            mlp_ratio=2.0,
            patch_embed="dinov2_vits14_reg",  # replaced by a width-32 builder, see main()
            intermediate_layer_idx=[0, 1, 2, 3],
            frame_use_ttt=False,
            global_use_ttt=True,
            ttt_layer_idx=[1, 3],
            ttt_cfg=dotdict(
                num_heads=1,
                inter_multi=2,
                base_lr=0.01,
                muon_update_steps=5,
                use_ddp_allreduce=True,
                use_modulation=True,
            ),
            num_global_tokens=0,
        ),
        cam_decoder_cfg=dotdict(trunk_depth=1, num_heads=2, mlp_ratio=1),
        xyz_decoder_cfg=dotdict(
            output_dim=4,
            activation="inv_log",
            conf_activation="expp1",
            features=8,
            out_channels=[8, 16, 16, 16],
        ),
        dpt_decoder_cfg=dotdict(
            output_dim=2,
            activation="exp",
            conf_activation="expp1",
            features=8,
            out_channels=[8, 16, 16, 16],
        ),
    )


def rerandomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith(("camera_token", "register_token")):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif ".ttt.proj." in name:
                if leaf == "weight":
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif leaf == "gamma":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.2)
            elif "empty_pose_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for mod in model.modules():
            cls = type(mod).__name__
            if cls in ("LayerNorm", "RMSNorm", "CompatRMSNorm"):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))


class Recorder:
    """Wraps the official aggregator's ttt_gradient / ttt_update to record GCM tensors."""

    def __init__(self, agg):
        self.agg = agg
        self.grads: dict[int, list] = {}
        self.sums: dict[int, list] = {}
        self.fast: dict[int, list] = {}
        self._grad = agg.ttt_gradient
        self._update = agg.ttt_update
        agg.ttt_gradient = self.ttt_gradient
        agg.ttt_update = self.ttt_update

    def ttt_gradient(self, index, **kw):
        g = self._grad(index=index, **kw)
        self.grads.setdefault(index, []).append([t.detach().clone() for t in g])
        return g

    def ttt_update(self, index, tokens, w0_grad, w1_grad, w2_grad, **kw):
        self.sums[index] = [t.detach().clone() for t in (w0_grad, w1_grad, w2_grad)]
        w = self._update(
            index=index, tokens=tokens, w0_grad=w0_grad, w1_grad=w1_grad, w2_grad=w2_grad, **kw
        )
        self.fast[index] = [t.detach().clone() for t in w]
        return w

    def restore(self):
        self.agg.ttt_gradient = self._grad
        self.agg.ttt_update = self._update


def make_batches(images_u8: list[torch.Tensor], dotdict):
    batches = []
    for im in images_u8:
        rgb = im.float() / 255.0  # (1, S, 3, H, W)
        _, S, _, H, W = rgb.shape
        meta = dotdict(
            rgb=rgb.permute(0, 1, 3, 4, 2).reshape(1, S, H * W, 3).contiguous(),
            H=torch.tensor([H]),
            W=torch.tensor([W]),
        )
        batches.append(dotdict(meta=meta))
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--official", required=True, help="path to a zju3dv/Scal3R checkout")
    ap.add_argument(
        "--official-commit",
        default=None,
        help="commit id to record when --official is not a git checkout",
    )
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "test/data/parity_tiny.pt")
    )
    args = ap.parse_args()

    official = Path(args.official).resolve()
    sys.path.insert(0, str(official))
    commit = args.official_commit
    if commit is None:
        try:
            commit = subprocess.check_output(
                ["git", "-C", str(official), "rev-parse", "HEAD"],
                text=True,
                stderr=subprocess.DEVNULL,
            ).strip()
        except Exception:
            commit = "unknown"

    import scal3r.utils.vggt.models.aggregator as agg_mod
    from scal3r.models.scal3r import Scal3R
    from scal3r.pipelines import backend
    from scal3r.utils.base_utils import DotDict as dotdict
    from scal3r.utils.cam_utils import decode_camera_params
    from scal3r.utils.vggt.layers import MemEffAttention
    from scal3r.utils.vggt.layers import NestedTensorBlock as OBlock
    from scal3r.utils.vggt.layers.vision_transformer import DinoVisionTransformer

    def vit_tiny(patch_size=14, num_register_tokens=0, **kwargs):
        return DinoVisionTransformer(
            patch_size=patch_size,
            embed_dim=32,
            depth=1,
            num_heads=2,
            mlp_ratio=4,
            block_fn=partial(OBlock, attn_class=MemEffAttention),
            num_register_tokens=num_register_tokens,
            **kwargs,
        )

    agg_mod.vit_small = vit_tiny

    torch.manual_seed(SEED)
    model = Scal3R(tiny_sampler_cfg(dotdict)).eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    rerandomize(model, gen)
    state_dict = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    run_args = dotdict(device="cpu", streaming_state=0, offload_batches=0, offload_outputs=0)
    cases = {}
    img_gen = torch.Generator().manual_seed(SEED + 2)
    for name, (frames, H, W) in LAYOUTS.items():
        images = [
            torch.randint(0, 256, (1, s, 3, H, W), generator=img_gen, dtype=torch.uint8)
            for s in frames
        ]
        rec = Recorder(model.agg_regator)
        with torch.no_grad():
            raw = backend.forward(model, make_batches(images, dotdict), run_args)
        rec.restore()
        outputs = []
        for im, out in zip(images, raw, strict=True):
            S = im.shape[1]
            cam = out.cam_map.float()  # (1, S, 9)
            ext, ixt = decode_camera_params(cam, H, W, "abs_quat_fov", inverse=False)
            outputs.append(
                {
                    "pose_enc": cam.clone(),
                    "extrinsics": ext.clone(),
                    "intrinsics": ixt.clone(),
                    "depth": out.dpt_map.reshape(1, S, H, W, 1).clone(),
                    "depth_conf": out.dpt_cnf.reshape(1, S, H, W).clone(),
                    "world_points": out.xyz_map.reshape(1, S, H, W, 3).clone(),
                    "world_points_conf": out.xyz_cnf.reshape(1, S, H, W).clone(),
                }
            )
        # GCM tensors: everything for sync2, the shared fast weights only elsewhere (size)
        gcm = {}
        for j in sorted(rec.fast):
            gcm[j] = {"fast_weights": rec.fast[j]}  # [w0', w1', w2'] shared by all chunks
            if name == "sync2":
                gcm[j]["grads"] = rec.grads[j]  # per chunk [g0, g1, g2], raw, vs the learned init
                gcm[j]["sums"] = rec.sums[j]  # [G0, G1, G2]
        cases[name] = {"images": images, "outputs": outputs, "gcm": gcm, "H": H, "W": W}

        if len(frames) == 1:
            # cross-check: the official single-chunk path (Aggregator.forward, first call)
            for cache in model.agg_regator.global_ttt_caches:
                cache.last_weights_test = []
            rgb = images[0].float() / 255.0
            with torch.no_grad():
                feats, psi = model.agg_regator(rgb, ttt_order=model.ttt_order)
                pose = model.cam_decoder(feats)[-1]
                depth, _ = model.dpt_decoder(feats, images=rgb, patch_start_idx=psi)
            for cache in model.agg_regator.global_ttt_caches:
                cache.last_weights_test = []
            d_pose = (pose - outputs[0]["pose_enc"]).abs().max().item()
            d_depth = (depth - outputs[0]["depth"]).abs().max().item()
            print(
                f"[{name}] official Aggregator.forward vs backend.forward: "
                f"max |d pose| {d_pose:.3g}, max |d depth| {d_depth:.3g}"
            )
            scale = max(1.0, outputs[0]["depth"].abs().max().item())
            assert d_pose < 1e-5 and d_depth < 1e-4 * scale

    fixture = {
        "meta": {
            "seed": SEED,
            "preset": "tiny",
            "official_commit": commit,
            "torch": str(torch.__version__),
            "layouts": {k: {"frames": v[0], "H": v[1], "W": v[2]} for k, v in LAYOUTS.items()},
            "note": "made by scripts/make_parity_fixtures.py; images uint8 -> float/255; "
            "outputs of scal3r.pipelines.backend.forward (fp32, CPU)",
        },
        "state_dict": state_dict,
        "cases": cases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    n_params = sum(v.numel() for v in state_dict.values())
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {n_params} params, "
        f"official commit {commit})"
    )


if __name__ == "__main__":
    main()
