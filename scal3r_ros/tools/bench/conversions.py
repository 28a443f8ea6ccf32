"""Issue 6's adapter costs (``scal3r_bench --conversions``): what the node's image
callback and a cloud publication cost at KITTI size (needs the ROS message packages)."""

from __future__ import annotations

import io
import time

import numpy as np


def conversions(repeats: int = 50) -> str:
    """Issue 6's adapter costs: what the image callback and a cloud publication cost."""
    from sensor_msgs.msg import CompressedImage

    from scal3r_ros.ros.conversions import (
        cloud_to_array,
        compressed_to_rgb,
        image_to_rgb,
        points_to_cloud,
        rgb_to_image,
    )

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (375, 1242, 3), np.uint8)
    msg = rgb_to_image(rgb)
    bgr = rgb_to_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    bgr.encoding = "bgr8"
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = CompressedImage(format="jpeg", data=buf.getvalue())
    xyz = rng.normal(size=(200_000, 3)).astype(np.float32)
    col = rng.integers(0, 256, (200_000, 3), np.uint8)
    conf = rng.random(200_000).astype(np.float32)
    cloud = points_to_cloud(xyz, col, conf)
    cases = {
        "image_to_rgb 1242x375 rgb8": lambda: image_to_rgb(msg),
        "image_to_rgb 1242x375 bgr8": lambda: image_to_rgb(bgr),
        "compressed_to_rgb 1242x375 jpeg": lambda: compressed_to_rgb(jpeg),
        "points_to_cloud 200k (x,y,z,rgb,conf)": lambda: points_to_cloud(xyz, col, conf),
        "cloud_to_array 200k": lambda: cloud_to_array(cloud),
    }
    lines = ["| operation | median ms | p95 ms |", "|---|---|---|"]
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        lines.append(f"| {name} | {np.median(times):.2f} | {np.percentile(times, 95):.2f} |")
    return "\n".join(lines)
