"""numpy <-> ROS message conversions (no cv_bridge, no sensor_msgs_py).

Images are decoded to HxWx3 uint8 RGB, the engine's one input format; clouds are
built from numpy arrays in one buffer copy. Bad input raises `ConversionError` with a
message fit for a diagnostic, so the caller can count and report the drop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

# encoding -> (channels, numpy dtype)
_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "8uc1": (1, "u1"),
    "8uc3": (3, "u1"),
    "mono16": (1, "u2"),
    "16uc1": (1, "u2"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Nanoseconds -> builtin_interfaces/Time (the engine keeps stamps as int ns)."""
    return Time(sec=int(ns) // 1_000_000_000, nanosec=int(ns) % 1_000_000_000)


class ConversionError(ValueError):
    """A message that cannot be turned into engine input (reported, never fatal).

    ``reason`` is the drop reason the node counts it under (bad_image, image_size)."""

    def __init__(self, message: str, reason: str = "bad_image") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    """The image sizes a camera plausibly sends; others are refused before they cost.

    Why: the first frame fixes the network's input size (a 1x60 frame gave 31080x518 and
    3 GB), and a 17.5 kB 12000x12000 1-bit PNG decodes to 1.5 GB, so a size is checked
    from the message header or the compressed file's header, before any decoding.
    The node's parameters max_image_pixels, min_image_side and max_image_aspect."""

    max_pixels: int = 50_000_000
    min_side: int = 16
    max_aspect: float = 8.0

    def check(self, width: int, height: int) -> None:
        """Raise ConversionError (reason ``image_size``) for an implausible size."""
        w, h = int(width), int(height)
        if w <= 0 or h <= 0:
            raise ConversionError(f"empty image {w}x{h}")
        if min(w, h) < self.min_side:
            raise ConversionError(
                f"image {w}x{h}: a side under {self.min_side} px (min_image_side)", "image_size"
            )
        if w * h > self.max_pixels:
            raise ConversionError(
                f"image {w}x{h}: {w * h} pixels, more than {self.max_pixels} (max_image_pixels)",
                "image_size",
            )
        if max(w, h) > self.max_aspect * min(w, h):
            raise ConversionError(
                f"image {w}x{h}: aspect ratio {max(w, h) / min(w, h):.1f} over "
                f"{self.max_aspect:g} (max_image_aspect)",
                "image_size",
            )


DEFAULT_LIMITS = ImageLimits()

# Pillow modes of PNG and JPEG files that convert("RGB") handles (at most 4 bytes a pixel)
_PIL_MODES = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "I;16",
        "I;16B",
        "I;16L",
        "I;16N",
        "F",
    }
)
_PIL_FORMATS = ("PNG", "JPEG")  # what image_transport's compressed plugin writes


def set_pillow_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb guard agree with ``max_pixels`` (it raises over
    twice its limit) and silence its warning between one and two times the limit: every
    image over ``max_pixels`` is refused from its header here anyway."""
    from PIL import Image as PILImage

    PILImage.MAX_IMAGE_PIXELS = int(max_pixels)
    warnings.filterwarnings("ignore", category=PILImage.DecompressionBombWarning)


def image_to_rgb(msg: Image, limits: ImageLimits | None = DEFAULT_LIMITS) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (copy only where the layout requires it).

    ``limits``: refuse implausible sizes first (None: any non-empty size)."""
    enc = msg.encoding.lower()
    if enc not in _ENCODINGS:
        raise ConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(_ENCODINGS)})"
        )
    channels, kind = _ENCODINGS[enc]
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ConversionError(f"empty image {w}x{h}")
    if limits is not None:
        limits.check(w, h)
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = w * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ConversionError(f"step {step} < width*channels*bytes {row_bytes}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise ConversionError(f"data has {buf.size} bytes, expected {step * h} ({w}x{h}, {enc})")
    rows = buf[: step * h].reshape(h, step)[:, :row_bytes]
    pixels = rows.view(dtype).reshape(h, w, channels)  # copies only for padded rows
    if dtype.itemsize == 2:  # mono16: keep the full range visible, as the official /65535
        pixels = (pixels.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return pixels[:, :, :3] if channels == 4 else pixels


def compressed_to_rgb(
    msg: CompressedImage, limits: ImageLimits | None = DEFAULT_LIMITS
) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> HxWx3 uint8 RGB.

    Pillow's ``open`` reads only the header: size and mode are checked against
    ``limits`` before anything is decoded (None: Pillow's own limit only)."""
    from PIL import Image as PILImage

    try:
        img = PILImage.open(io.BytesIO(bytes(msg.data)), formats=_PIL_FORMATS)
    except PILImage.DecompressionBombError as exc:
        raise ConversionError(
            f"compressed image ({msg.format}) refused: {exc}", "image_size"
        ) from None
    except Exception as exc:
        raise ConversionError(f"cannot decode compressed image ({msg.format}): {exc}") from exc
    with img:
        if limits is not None:
            limits.check(img.width, img.height)
        if img.mode not in _PIL_MODES:
            raise ConversionError(f"compressed image ({msg.format}): unsupported mode {img.mode}")
        try:
            return np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise ConversionError(f"cannot decode compressed image ({msg.format}): {exc}") from exc


def rgb_to_image(rgb: np.ndarray, stamp=None, frame_id: str = "") -> Image:
    """HxWx3 uint8 RGB -> sensor_msgs/Image (rgb8)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConversionError(f"expected HxWx3 uint8, got {rgb.shape}")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1]) * 3
    msg.data = rgb.tobytes()
    return msg


# --- point clouds ------------------------------------------------------------------

CLOUD_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("confidence", "<f4")]
)
"""x, y, z, rgb packed as float32 (the PCL/RViz convention), confidence."""


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) float32 whose bits are 0x00RRGGBB, as RViz expects."""
    c = np.asarray(colors, dtype=np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    bits = np.asarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.uint8)


def points_to_cloud(
    xyz: np.ndarray,
    colors: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    stamp=None,
    frame_id: str = "map",
) -> PointCloud2:
    """(N, 3) points (+ (N, 3) uint8 colours, (N,) confidence) -> unordered PointCloud2."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = len(xyz)
    arr = np.zeros(n, dtype=CLOUD_DTYPE)
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        arr["rgb"] = pack_rgb(np.asarray(colors).reshape(-1, 3))
    if confidence is not None:
        arr["confidence"] = np.asarray(confidence, dtype=np.float32).ravel()
    msg = PointCloud2()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, n
    msg.fields = [
        PointField(
            name=name, offset=CLOUD_DTYPE.fields[name][1], datatype=PointField.FLOAT32, count=1
        )
        for name in CLOUD_DTYPE.names
    ]
    msg.is_bigendian = False
    msg.point_step = CLOUD_DTYPE.itemsize
    msg.row_step = CLOUD_DTYPE.itemsize * n
    msg.is_dense = bool(np.isfinite(xyz).all())
    msg.data = arr.tobytes()
    return msg


_FIELD_TYPES = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "<i2",
    PointField.UINT16: "<u2",
    PointField.INT32: "<i4",
    PointField.UINT32: "<u4",
    PointField.FLOAT32: "<f4",
    PointField.FLOAT64: "<f8",
}


def cloud_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> numpy structured array with the message's own fields (zero-copy view)."""
    dtype = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [_FIELD_TYPES[f.datatype] for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    return np.frombuffer(msg.data, dtype=dtype, count=msg.width * msg.height)
