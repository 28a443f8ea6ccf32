"""Image and cloud conversions: every supported encoding, odd layouts, bad input."""

import io

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from scal3r_ros.ros.conversions import (
    ConversionError,
    cloud_to_array,
    compressed_to_rgb,
    image_to_rgb,
    pack_rgb,
    points_to_cloud,
    unpack_rgb,
)

pytestmark = pytest.mark.ros
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = pixels.shape[:2]
    rows = (
        pixels.reshape(h, -1).view(np.uint8) if pixels.dtype != np.uint8 else pixels.reshape(h, -1)
    )
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian))
    msg.step = rows.shape[1]
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings(pad):
    alpha = RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)
    cases = {
        "rgb8": RGB,
        "bgr8": RGB[:, :, ::-1],
        "rgba8": np.concatenate([RGB, alpha], 2),
        "bgra8": np.concatenate([RGB[:, :, ::-1], alpha], 2),
    }
    for enc, pixels in cases.items():
        out = image_to_rgb(make_image(np.ascontiguousarray(pixels), enc, pad))
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out, RGB, err_msg=enc)


def test_mono_encodings():
    grey = RGB[:, :, 0]
    np.testing.assert_array_equal(
        image_to_rgb(make_image(grey[..., None], "mono8")), np.repeat(grey[..., None], 3, 2)
    )
    wide = (grey.astype(np.uint16) * 257)[..., None]
    for big in (False, True):
        data = wide.astype(">u2" if big else "<u2")
        out = image_to_rgb(make_image(data, "mono16", bigendian=big))
        np.testing.assert_array_equal(out[:, :, 1], grey)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding"),
        (lambda m: setattr(m, "data", bytes(10)), "expected"),
        (lambda m: setattr(m, "step", 3), "step"),
        (lambda m: setattr(m, "width", 0), "empty"),
    ],
)
def test_bad_images_raise_conversion_error(mutate, match):
    msg = make_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ConversionError, match=match):
        image_to_rgb(msg)


def test_compressed_png_and_corrupt():
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(RGB).save(buf, format="PNG")
    msg = CompressedImage(format="png", data=buf.getvalue())
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)
    with pytest.raises(ConversionError, match="cannot decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8garbage"))


def test_cloud_fields_and_rgb_packing():
    xyz = RNG.normal(size=(100, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, size=(100, 3), dtype=np.uint8)
    conf = RNG.uniform(size=100).astype(np.float32)
    msg = points_to_cloud(xyz, rgb, conf, frame_id="map")
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "confidence"]
    assert msg.point_step == 20 and msg.row_step == 2000 and msg.is_dense
    arr = cloud_to_array(msg)
    np.testing.assert_array_equal(arr["z"], xyz[:, 2])
    np.testing.assert_array_equal(unpack_rgb(arr["rgb"]), rgb)
    # 0x00RRGGBB layout, as RViz's RGB8 colour transformer reads it
    assert pack_rgb(np.array([[1, 2, 3]], np.uint8)).view(np.uint32)[0] == 0x010203
