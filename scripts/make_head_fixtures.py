#!/usr/bin/env python3
"""Run the official Scal3R heads, pose decoding and preprocessing; save what they produce.

The tests in test/model/ compare our re-implementation against these tensors without needing
the official code. Usage (official checkout, zju3dv/Scal3R dc557e7, extracted to a folder; a venv
with the official deps as for scripts/make_parity_fixtures.py; this repo on PYTHONPATH for the
synthetic test images):

    PYTHONPATH=. /tmp/offvenv/bin/python scripts/make_head_fixtures.py \
        --official /tmp/scal3r_official [--seed 1234]

The committed files were made with seed 1234. Re-running this on another x86-64 machine (AVX-512,
torch 2.13.0) gave bit-identical weights, tokens and preprocessing outputs, and head outputs and
decoded poses within a few fp32 ulps of the committed ones (the tests' tolerances are derived in
their docstrings).

Writes test/data/heads_tiny.pt (heads + pose decoding) and test/data/preprocess_official.pt
(official image loading + resize/crop on small synthetic PNGs). Everything is float32 on CPU,
with a fixed seed; the head dimensions are tiny so the files stay well under 2 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from scal3r_ros.mapping.sim.synthetic import textured_image

REPO = Path(__file__).resolve().parents[1]

# Tiny head configuration (dims far below the release so the weights fit in the fixture).
DIM_IN = 64
PATCH = 14
CAMERA_CFG = dict(dim_in=DIM_IN, trunk_depth=2, num_heads=4, mlp_ratio=4, init_values=0.01)
DPT_COMMON = dict(
    dim_in=DIM_IN,
    patch_size=PATCH,
    features=16,
    out_channels=[8, 16, 32, 32],
    intermediate_layer_idx=[0, 1, 2, 3],
)
DEPTH_CFG = dict(DPT_COMMON, output_dim=2, activation="exp", conf_activation="expp1")
POINT_CFG = dict(DPT_COMMON, output_dim=4, activation="inv_log", conf_activation="expp1")
PATCH_START_IDX = 5
# (batch, frames, patch rows, patch cols, frames_chunk_size)
TOKEN_CASES = [(1, 4, 3, 5, 3), (2, 2, 2, 4, 8)]


def randomise_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Move every parameter away from its (often trivial) init so each path matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):  # LayerScale: 0.01 init would hide the trunk
                p.copy_(0.2 + 0.6 * torch.rand(p.shape, generator=gen))
            elif "empty_pose_tokens" in name:
                p.copy_(0.5 * noise)
            elif p.ndim == 1:  # biases and norm weights
                p.add_(0.1 * noise)
            else:
                p.add_(0.02 * noise)


def make_head_fixture(official: Path, out: Path, seed: int) -> None:
    from scal3r.utils.cam_utils import decode_camera_params
    from scal3r.utils.vggt.heads import CameraHead, DPTHead

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    camera = CameraHead(**CAMERA_CFG).eval()
    depth = DPTHead(**DEPTH_CFG).eval()
    point = DPTHead(**POINT_CFG).eval()
    for m in (camera, depth, point):
        randomise_(m, gen)

    cases = []
    with torch.no_grad():
        for B, S, h, w, chunk in TOKEN_CASES:
            P = PATCH_START_IDX + h * w
            tokens = [torch.randn(B, S, P, DIM_IN, generator=gen) for _ in range(4)]
            images = torch.rand(B, S, 3, h * PATCH, w * PATCH, generator=gen)
            cam_list = camera(tokens, num_iterations=4)
            depth_map, depth_conf = depth(
                tokens, images=images, patch_start_idx=PATCH_START_IDX, frames_chunk_size=chunk
            )
            pts_map, pts_conf = point(
                tokens, images=images, patch_start_idx=PATCH_START_IDX, frames_chunk_size=chunk
            )
            w2c, K = decode_camera_params(cam_list[-1], h * PATCH, w * PATCH, "abs_quat_fov", False)
            cases.append(
                dict(
                    tokens=tokens,
                    image_hw=(h * PATCH, w * PATCH),
                    batch=B,
                    frames=S,
                    frames_chunk_size=chunk,
                    camera=torch.stack(cam_list),  # [iters, B, S, 9]
                    depth=depth_map,
                    depth_conf=depth_conf,
                    points=pts_map,
                    points_conf=pts_conf,
                    w2c=w2c,
                    K=K,
                )
            )

        # Pose decoding on realistic encodings (unit and non-unit quaternions, KITTI-like FoV).
        enc = torch.randn(64, 9, generator=gen)
        enc[:, 7] = 0.3 + 0.5 * torch.rand(64, generator=gen)  # fov_h
        enc[:, 8] = 1.0 + 0.8 * torch.rand(64, generator=gen)  # fov_w
        dec_w2c, dec_K = decode_camera_params(enc, 154, 518, "abs_quat_fov", False)
        dec_w2c_inv, _ = decode_camera_params(enc, 154, 518, "abs_quat_fov", True)

    torch.save(
        dict(
            seed=seed,
            config=dict(
                camera=CAMERA_CFG, depth=DEPTH_CFG, point=POINT_CFG, patch_start_idx=PATCH_START_IDX
            ),
            state_dicts=dict(
                camera=camera.state_dict(), depth=depth.state_dict(), point=point.state_dict()
            ),
            cases=cases,
            decode=dict(
                encoding=enc, image_hw=(154, 518), w2c=dec_w2c, K=dec_K, c2w_3x4=dec_w2c_inv
            ),
            source=f"official Scal3R heads from {official}",
        ),
        out,
    )


# (height, width, seed, dtype, max_size): upsample+crop, portrait crop, 16-bit downsample,
# a size that needs no resize, and a 2-image sequence whose 2nd image has another aspect.
PREPROCESS_CASES = [
    ([(61, 97, 1, "uint8")], 140),
    ([(97, 61, 2, "uint8")], 112),
    ([(130, 300, 3, "uint16")], 112),
    ([(84, 140, 4, "uint8")], 140),
    ([(70, 129, 5, "uint8"), (90, 100, 6, "uint8")], 126),
]


def make_preprocess_fixture(out: Path) -> None:
    import cv2
    from scal3r.utils.base_utils import DotDict
    from scal3r.utils.image_utils import load_and_preprocess_images

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for images_spec, max_size in PREPROCESS_CASES:
            cfg = DotDict(
                proc_max_size=max_size,
                proc_align_size=14,
                center_crop=True,
                render_ratio=1.0,
                rot90=None,
                focal_ratio=1.0,
            )
            inputs, paths = [], []
            for k, (h, w, seed, dtype) in enumerate(images_spec):
                img = textured_image(h, w, seed, np.dtype(dtype).type)
                path = str(Path(tmp) / f"case{len(cases)}_{k:02d}.png")
                cv2.imwrite(path, img[..., ::-1])  # written as BGR, decoded back to RGB
                inputs.append(torch.from_numpy(img))  # uint8 or uint16
                paths.append(path)
            seq, th, tw = load_and_preprocess_images(paths, cfg, preprocess_workers=1)
            outputs = []
            for frame in seq:
                rgb = frame.rgb.reshape(th, tw, 3)
                as_u8 = torch.round(rgb * 255).to(torch.uint8)
                # every official output here is k/255 exactly, so uint8 storage is lossless
                assert torch.equal(as_u8.float() / 255.0, rgb), "output not on the 1/255 grid"
                outputs.append(as_u8)
            cases.append(
                dict(
                    max_size=max_size,
                    inputs=inputs,  # HxWx3 RGB, uint8 or uint16
                    dtypes=[s[3] for s in images_spec],
                    target_hw=(th, tw),
                    outputs_u8=outputs,  # official float output = outputs_u8 / 255
                    ixt=[f.ixt.clone() for f in seq],
                )
            )
    torch.save(dict(cases=cases, source="official scal3r.utils.image_utils"), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="official Scal3R checkout")
    parser.add_argument("--out-dir", type=Path, default=REPO / "test" / "data")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official.resolve()))
    torch.set_num_threads(1)  # deterministic CPU reductions
    args.out_dir.mkdir(parents=True, exist_ok=True)
    make_head_fixture(args.official, args.out_dir / "heads_tiny.pt", args.seed)
    make_preprocess_fixture(args.out_dir / "preprocess_official.pt")
    for name in ("heads_tiny.pt", "preprocess_official.pt"):
        size = (args.out_dir / name).stat().st_size
        print(f"wrote {args.out_dir / name} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
