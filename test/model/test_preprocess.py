"""Preprocessing: the official rule (re-stated here with PIL), official outputs (fixture made by
scripts/make_head_fixtures.py from the release code), the batched torch path, odd inputs and the
mapping back to the source image.

Why exact equality holds on any CPU: the release output, the reference path and the "exact" path
are PIL's 8-bit bicubic resampling, i.e. integer fixed-point sums (int32 accumulators, no
rounding) with taps computed elementwise in float64 (correctly rounded) and summed in a fixed
order, then ``k / 255`` in float32. No kernel set can change that, so these compare bit for bit
(also under every kernel set of test/model/test_kernel_matrix.py). The fast paths use torch's
float interpolation and are bounded in units of one 8-bit step instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import load_pt
from PIL import Image

from scal3r_ros.mapping.sim.synthetic import textured_image
from scal3r_ros.model.preprocess import (
    PreprocessConfig,
    ResizeCrop,
    _crop_with_zero_pad,
    as_rgb,
    compute_target_size,
    plan_resize_crop,
    preprocess_batch,
    preprocess_image_reference,
    preprocess_sequence_reference,
)

OFFICIAL = load_pt("preprocess_official.pt")


def official_rule(image_u8: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """The release rule for an 8-bit RGB image, re-stated independently (reference §1.2)."""
    H, W = image_u8.shape[:2]
    th, tw = target_hw
    r = max(th / H, tw / W)
    rh, rw = max(14, round(H * r / 14) * 14), max(14, round(W * r / 14) * 14)
    img = image_u8
    if (rh, rw) != (H, W):
        img = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BICUBIC))
    y0, x0 = round(rh / 2) - th // 2, round(rw / 2) - tw // 2
    return img[y0 : y0 + th, x0 : x0 + tw].astype(np.float32) / 255.0


def batch_hwc(images, **kw) -> tuple[np.ndarray, ResizeCrop]:
    out, plan = preprocess_batch(images, **kw)
    return out.permute(0, 2, 3, 1).numpy(), plan


# --- target size and geometry -------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "target"),
    [
        ((376, 1241), (154, 518)),
        ((375, 1242), (154, 518)),
        ((370, 1226), (154, 518)),
        ((480, 640), (378, 518)),
        ((1080, 1920), (280, 518)),
        ((640, 480), (686, 518)),
        ((5, 1000), (14, 518)),
    ],
)
def test_target_size(hw, target) -> None:
    assert compute_target_size(*hw) == target


def test_kitti_geometry_is_a_plain_resize() -> None:
    plan = plan_resize_crop((376, 1241), (154, 518))
    assert plan == ResizeCrop((376, 1241), (154, 518), (0, 0), (154, 518))
    # KITTI 00-02 frames (1242x375) decide the same target, also without crop
    assert plan_resize_crop((375, 1242), compute_target_size(375, 1242)).crop_yx == (0, 0)


def test_cover_resize_then_centre_crop() -> None:
    plan = plan_resize_crop((480, 640), (378, 518))
    assert plan.resized_hw == (392, 518) and plan.crop_yx == (7, 0)
    # a later frame with another aspect ratio is forced to the first frame's target
    plan = plan_resize_crop((90, 100), (126, 126 * 2))
    assert plan.resized_hw[0] >= 126 and plan.resized_hw[1] >= 252
    assert plan.crop_yx == (plan.resized_hw[0] // 2 - 63, plan.resized_hw[1] // 2 - 126)


# --- against the release code (fixture) -----------------------------------------------------


@pytest.mark.parametrize("case_idx", range(len(OFFICIAL["cases"])))
def test_reference_path_equals_release_output(case_idx: int) -> None:
    case = OFFICIAL["cases"][case_idx]
    images = [t.numpy() for t in case["inputs"]]
    out, plans = preprocess_sequence_reference(images, PreprocessConfig(max_size=case["max_size"]))
    assert tuple(out.shape[-2:]) == tuple(case["target_hw"])
    for frame, expected in zip(out, case["outputs_u8"], strict=True):
        assert torch.equal(frame.permute(1, 2, 0), expected.float() / 255.0)
    # the release carries a dummy K (f = max(H, W), c = centre) through resize and crop:
    # mapping it with our geometry must give the same numbers
    for image, plan, ixt in zip(images, plans, case["ixt"], strict=True):
        H, W = image.shape[:2]
        K_src = np.array([[max(H, W), 0, W / 2], [0, max(H, W), H / 2], [0, 0, 1.0]])
        np.testing.assert_allclose(
            plan.intrinsics_to_network(K_src), ixt.numpy(), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("case_idx", range(len(OFFICIAL["cases"])))
def test_exact_batch_path_equals_release_output(case_idx: int) -> None:
    case = OFFICIAL["cases"][case_idx]
    cfg = PreprocessConfig(max_size=case["max_size"])
    for image, expected in zip(case["inputs"], case["outputs_u8"], strict=True):
        out, _ = batch_hwc(image, target_hw=tuple(case["target_hw"]), config=cfg, method="exact")
        assert np.array_equal(out[0], expected.numpy().astype(np.float32) / 255.0)


# --- against the rule re-stated with PIL; odd sizes; measured fast-path differences ----------


@pytest.mark.parametrize(
    "hw",
    [
        (375, 1242),
        (61, 97),
        (97, 61),
        (33, 200),
        (200, 33),
        (101, 143),
        (154, 518),
        (150, 518),
        (199, 211),
    ],
)
def test_paths_against_restated_rule(hw) -> None:
    img = textured_image(*hw, seed=sum(hw))
    target = compute_target_size(*hw)
    expected = official_rule(img, target)
    ref, _ = preprocess_image_reference(img, target)
    assert np.array_equal(ref, expected)
    exact, _ = batch_hwc(img, method="exact")
    assert np.array_equal(exact[0], expected)
    for method, bound in (("interpolate", 1), ("native_uint8", 2)):
        fast, _ = batch_hwc(img, method=method)
        assert np.abs(fast[0] - expected).max() <= bound / 255.0 + 1e-7, method


def test_measured_difference_on_kitti_sized_frames() -> None:
    """(a) vs (b) on 4 textured 1242x375 frames (the numbers reported in the docstring)."""
    frames = np.stack([textured_image(375, 1242, seed=s) for s in range(4)])
    ref, _ = preprocess_sequence_reference(list(frames))
    ref = ref.permute(0, 2, 3, 1).numpy()
    stats = {}
    for method in ("exact", "interpolate", "native_uint8"):
        out, _ = batch_hwc(frames, method=method)
        diff = np.abs(out - ref)
        stats[method] = (diff.max(), diff.mean(), (diff > 0).mean())
    assert stats["exact"] == (0.0, 0.0, 0.0)
    assert stats["interpolate"][0] <= 1 / 255 + 1e-7 and stats["interpolate"][1] < 1e-5
    assert stats["native_uint8"][0] <= 2 / 255 + 1e-7 and stats["native_uint8"][1] < 1e-4
    assert stats["native_uint8"][2] < 0.01


def test_batch_of_many_frames_is_processed_in_passes() -> None:
    frames = np.stack([textured_image(61, 97, seed=s) for s in range(5)])
    whole, _ = batch_hwc(frames, method="exact", frames_per_pass=8)
    split, _ = batch_hwc(list(frames), method="exact", frames_per_pass=2)
    assert np.array_equal(whole, split)
    ref, _ = preprocess_sequence_reference(list(frames))
    assert np.array_equal(whole, ref.permute(0, 2, 3, 1).numpy())


def test_no_resize_keeps_values() -> None:
    img = textured_image(154, 518, seed=3)
    out, plan = batch_hwc(img)
    assert not plan.needs_resize
    assert np.array_equal(out[0], img.astype(np.float32) / np.float32(255))


# --- unusual inputs ----------------------------------------------------------------------


def test_greyscale_is_replicated() -> None:
    grey = textured_image(61, 97, seed=7)[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    expected, _ = preprocess_image_reference(rgb, (84, 140))
    for variant in (grey, grey[..., None]):
        out, _ = preprocess_image_reference(variant, (84, 140))
        assert np.array_equal(out, expected)
        fast, _ = batch_hwc(variant, target_hw=(84, 140), method="exact")
        assert np.array_equal(fast[0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_rgba_drops_alpha() -> None:
    rgb = textured_image(61, 97, seed=8)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    expected, _ = preprocess_image_reference(rgb, (84, 140))
    out, _ = preprocess_image_reference(rgba, (84, 140))
    assert np.array_equal(out, expected)
    fast, _ = batch_hwc(torch.from_numpy(rgba)[None], target_hw=(84, 140), method="exact")
    assert np.array_equal(fast[0], expected)


def test_sixteen_bit_input() -> None:
    img16 = textured_image(130, 300, seed=9, dtype=np.uint16)
    # resized: 16-bit values are truncated to 8 bits first, as the release does
    out, _ = preprocess_image_reference(img16, (98, 196))
    trunc8 = (img16.astype(np.float32) / np.float32(65535) * np.float32(255)).astype(np.uint8)
    assert np.array_equal(trunc8, (img16 // 257).astype(np.uint8))
    assert np.array_equal(out, preprocess_image_reference(trunc8, (98, 196))[0])
    for method in ("exact", "interpolate", "native_uint8"):
        fast, _ = batch_hwc(img16, target_hw=(98, 196), method=method)
        assert np.abs(fast[0] - out).max() <= 2 / 255 + 1e-7
    assert np.array_equal(batch_hwc(img16, target_hw=(98, 196), method="exact")[0][0], out)
    # not resized: full 16-bit precision is kept
    img16 = textured_image(98, 196, seed=10, dtype=np.uint16)
    out, _ = preprocess_image_reference(img16, (98, 196))
    assert np.array_equal(out, img16.astype(np.float32) / np.float32(65535))
    assert np.array_equal(batch_hwc(img16, target_hw=(98, 196))[0][0], out)


def test_float_input_reference_path() -> None:
    img = textured_image(61, 97, seed=11)
    as_float = img.astype(np.float32) / np.float32(255)
    out_f, _ = preprocess_image_reference(as_float, (84, 140))
    out_u8, _ = preprocess_image_reference(img, (84, 140))
    assert np.array_equal(out_f, out_u8)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        as_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError):
        preprocess_image_reference(np.zeros((4, 4, 3), np.int32), (14, 14))
    with pytest.raises(TypeError):
        preprocess_batch(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        preprocess_batch([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(ValueError):
        preprocess_batch(np.zeros((1, 4, 4, 3), np.uint8), method="bilinear")
    with pytest.raises(ValueError):
        preprocess_sequence_reference([])


def test_zero_padding_outside_the_image() -> None:
    img = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1) + 1
    plan = ResizeCrop((2, 3), (2, 3), (-1, 1), (3, 3))
    out = _crop_with_zero_pad(img, plan, (0, 1))
    expected = np.array([[0, 0, 0], [2, 3, 0], [5, 6, 0]], np.float32)[..., None]
    assert np.array_equal(out, expected)
    out_t = _crop_with_zero_pad(torch.from_numpy(img)[None], plan, (1, 2))
    assert np.array_equal(out_t[0].numpy(), expected)


# --- mapping back to the source image -------------------------------------------------------


def test_intrinsics_and_pixels_map_back_to_source() -> None:
    plan = plan_resize_crop((480, 640), (378, 518))
    K_net = np.array([[300.0, 0, 259], [0, 310.0, 189], [0, 0, 1]])
    K_src = plan.intrinsics_to_source(K_net)
    np.testing.assert_allclose(plan.intrinsics_to_network(K_src), K_net, atol=1e-9)
    # projecting a 3D point with K_src equals mapping its network projection to the source
    pts = np.random.default_rng(0).uniform([-2, -1, 3], [2, 1, 9], (50, 3))
    uv_net = (pts @ K_net.T)[:, :2] / pts[:, 2:]
    uv_src = (pts @ K_src.T)[:, :2] / pts[:, 2:]
    np.testing.assert_allclose(plan.network_to_source_xy(uv_net), uv_src, atol=1e-9)
    np.testing.assert_allclose(plan.source_to_network_xy(uv_src), uv_net, atol=1e-9)
    # torch tensors (batched) work the same way
    K_t = torch.from_numpy(np.stack([K_net, K_net]))
    assert torch.allclose(plan.intrinsics_to_source(K_t), torch.from_numpy(K_src).expand(2, 3, 3))
    # the crop shifts the principal point, the resize scales x and y differently
    assert plan.scale_xy == (640 / 518, 480 / 392)
    assert K_src[1, 2] == pytest.approx((189 + 7) * 480 / 392)


def test_sample_source_colours() -> None:
    img = textured_image(150, 518, seed=12)  # resized to 154x518, cropped to 140x518 at row 7
    plan = plan_resize_crop(img.shape[:2], compute_target_size(*img.shape[:2]))
    colours = plan.sample_source(img)
    assert colours.shape == (140, 518, 3) and colours.dtype == np.uint8
    rows, cols, valid = plan.source_pixel_index()
    assert valid.all() and cols[0, 0] == 0 and cols[0, -1] == 517
    # network row 0 centre -> resized row 7.5 -> source row 7.5 * 150/154 = 7.3 -> 7
    assert rows[0, 0] == 7
    assert np.array_equal(colours[5, 9], img[rows[5, 9], 9])
    padded = ResizeCrop((4, 4), (4, 4), (-2, 0), (6, 4))
    assert not padded.source_pixel_index()[2][:2].any()
    assert (padded.sample_source(np.full((4, 4, 3), 9, np.uint8))[:2] == 0).all()
