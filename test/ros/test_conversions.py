"""Image and cloud conversions: every supported encoding, odd layouts, bad input, and the
input limits checked from headers before decoding (issue 16, items 6 and 7)."""

import io
import warnings

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from scal3r_ros.ros.conversions import (
    ConversionError,
    ImageLimits,
    cloud_to_array,
    compressed_to_rgb,
    image_to_rgb,
    pack_rgb,
    points_to_cloud,
    set_pillow_limit,
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
        out = image_to_rgb(make_image(np.ascontiguousarray(pixels), enc, pad), limits=None)
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out, RGB, err_msg=enc)


def test_mono_encodings():
    grey = RGB[:, :, 0]
    np.testing.assert_array_equal(
        image_to_rgb(make_image(grey[..., None], "mono8"), limits=None),
        np.repeat(grey[..., None], 3, 2),
    )
    wide = (grey.astype(np.uint16) * 257)[..., None]
    for big in (False, True):
        data = wide.astype(">u2" if big else "<u2")
        out = image_to_rgb(make_image(data, "mono16", bigendian=big), limits=None)
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
        image_to_rgb(msg, limits=None)


def test_compressed_png_and_corrupt():
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(RGB).save(buf, format="PNG")
    msg = CompressedImage(format="png", data=buf.getvalue())
    np.testing.assert_array_equal(compressed_to_rgb(msg, limits=None), RGB)
    with pytest.raises(ConversionError, match="cannot decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8garbage"))


# ------------------------------------------------------------------ input limits
def encoded(pixels_or_image, fmt: str) -> CompressedImage:
    from PIL import Image as PILImage

    img = pixels_or_image
    if isinstance(img, np.ndarray):
        img = PILImage.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return CompressedImage(format=fmt.lower(), data=buf.getvalue())


@pytest.fixture(scope="module")
def png_bomb() -> CompressedImage:
    """12000x12000 1-bit PNG: ~17.5 kB on the wire, 1.5 GB decoded (the issue's bomb)."""
    from PIL import Image as PILImage

    msg = encoded(PILImage.new("1", (12000, 12000)), "PNG")
    assert len(msg.data) < 100_000
    return msg


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if Pillow decodes pixels (``load``), so a refusal is from the header."""
    from PIL import ImageFile

    decoded = []

    def load(self, *args, **kwargs):
        decoded.append(self.size)
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


@pytest.mark.parametrize(
    "w, h, match",
    [
        (1, 1, "under 16 px"),  # the 1x1 first frame
        (60, 1, "under 16 px"),
        (600, 20, "aspect ratio 30.0 over 8"),  # 1x60 scaled up: still implausible
        (10000, 6000, "60000000 pixels, more than 50000000"),
    ],
)
def test_implausible_sizes_are_refused(w, h, match):
    with pytest.raises(ConversionError, match=match) as err:
        ImageLimits().check(w, h)
    assert err.value.reason == "image_size"


def test_plausible_sizes_pass():
    for w, h in [(160, 48), (1242, 375), (1920, 1080), (7680, 4320), (64, 20), (2048, 256)]:
        ImageLimits().check(w, h)


def test_raw_image_is_checked_before_conversion():
    msg = make_image(np.zeros((1, 60, 3), np.uint8), "rgb8")
    with pytest.raises(ConversionError, match="under 16 px") as err:
        image_to_rgb(msg)
    assert err.value.reason == "image_size"
    # the header's size counts, not the data: a claimed 20000x20000 is refused unread
    huge = Image(height=20000, width=20000, encoding="rgb8", step=60000, data=bytes(10))
    with pytest.raises(ConversionError, match="max_image_pixels"):
        image_to_rgb(huge)
    assert image_to_rgb(make_image(np.zeros((48, 160, 3), np.uint8), "rgb8")).shape == (48, 160, 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_bomb_is_refused_from_its_header(png_bomb, no_decoding):
    with pytest.raises(ConversionError, match="144000000 pixels") as err:
        compressed_to_rgb(png_bomb)
    assert err.value.reason == "image_size" and no_decoding == []


def test_jpeg_over_the_limit_is_refused_from_its_header(no_decoding):
    msg = encoded(np.zeros((64, 64, 3), np.uint8), "JPEG")
    with pytest.raises(ConversionError, match="4096 pixels, more than 1024"):
        compressed_to_rgb(msg, ImageLimits(max_pixels=1024))
    assert no_decoding == []


def test_compressed_within_the_limits_decodes():
    rgb = np.random.default_rng(1).integers(0, 256, size=(48, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(compressed_to_rgb(encoded(rgb, "PNG")), rgb)
    assert compressed_to_rgb(encoded(rgb, "JPEG")).shape == (48, 160, 3)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_only_png_and_jpeg_are_opened(fmt):
    msg = encoded(np.zeros((48, 160, 3), np.uint8), fmt)
    with pytest.raises(ConversionError, match="cannot decode"):
        compressed_to_rgb(msg)


def test_pillow_limit_follows_max_image_pixels(png_bomb, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():  # set_pillow_limit adds a filter: keep it in here
        set_pillow_limit(1_000_000)
        assert PILImage.MAX_IMAGE_PIXELS == 1_000_000
        with pytest.raises(ConversionError, match="refused") as err:  # Pillow's own guard
            compressed_to_rgb(png_bomb, limits=None)
        assert err.value.reason == "image_size"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # between 1x and 2x Pillow's limit: no warning
            set_pillow_limit(1_000_000)
            with pytest.raises(ConversionError, match="max_image_pixels"):
                compressed_to_rgb(
                    encoded(np.zeros((1000, 1500, 3), np.uint8), "PNG"),
                    ImageLimits(max_pixels=1_000_000),
                )


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
