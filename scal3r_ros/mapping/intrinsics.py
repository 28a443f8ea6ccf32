"""Which intrinsics a window's depth is unprojected with (parameter ``intrinsics``), and the
health check of the network's focal length against the camera's.

The network predicts a K per frame (from its field-of-view estimate); a calibrated camera
knows its own (CameraInfo or the node's ``camera_k``), which ``Backend.prepare`` maps to the
network input's crop/resize (``ResizeCrop.intrinsics_to_network``). With ``camera_info`` the
known K replaces the predicted one for the whole window -- depth unprojection, the loop
geometry and the events that carry intrinsics -- when every frame of the window has one;
otherwise the window keeps the prediction (a fallback, counted). In both modes the ratio
predicted / known focal length is reported: far from 1 means a wrong calibration, a wrong
``camera_k``, or a window the network misjudged.

Both Ks are in the engine's pixel convention (pixel centres at +0.5, as
``alignment.unproject_depth``; the ROS side converts CameraInfo's) and at the network
input's resolution; a depth map of another resolution gets K scaled to it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scal3r_ros.mapping.backends.protocol import ChunkPrediction
from scal3r_ros.mapping.config import INTRINSICS_SOURCES
from scal3r_ros.mapping.tensors import to_numpy


@dataclass(frozen=True)
class IntrinsicsChoice:
    """What one window was unprojected with."""

    source: str = "predicted"  # "predicted" | "camera_info"
    focal_ratio: float = 0.0  # predicted / known focal, mean over frames, fx and fy; 0: no K
    fallback: bool = False  # camera_info asked for, but a frame had no known K


def scale_to_depth(
    K: np.ndarray, image_hw: tuple[int, int], depth_hw: tuple[int, int]
) -> np.ndarray:
    """Intrinsics [..., 3, 3] of images ``image_hw`` for a depth map ``depth_hw`` of the
    same view: a plain per-axis scaling in the pixel-edge convention (pixel ``i`` spans
    ``[i, i+1]``), exact for a resize of the whole image."""
    sy = depth_hw[0] / image_hw[0]
    sx = depth_hw[1] / image_hw[1]
    if (sx, sy) == (1.0, 1.0):
        return np.asarray(K, dtype=np.float64)
    return np.diag([sx, sy, 1.0]) @ np.asarray(K, dtype=np.float64)


def focal_ratio(predicted: np.ndarray, known: np.ndarray) -> float:
    """Mean over frames of predicted / known focal length, fx and fy averaged."""
    p, k = np.asarray(predicted, np.float64), np.asarray(known, np.float64)
    r = np.stack([p[:, 0, 0] / k[:, 0, 0], p[:, 1, 1] / k[:, 1, 1]])
    return float(r.mean())


def choose_intrinsics(
    pred: ChunkPrediction,
    known: np.ndarray | None,
    image_hw: tuple[int, int],
    mode: str,
) -> tuple[ChunkPrediction, IntrinsicsChoice]:
    """``pred`` with the intrinsics ``mode`` asks for, and what was chosen.

    ``known``: (S, 3, 3) at ``image_hw`` (the network input), frames in ``pred`` 's order,
    None when a frame of the window has none. The prediction's other fields are kept (its
    maps stay on their device)."""
    if mode not in INTRINSICS_SOURCES:
        raise ValueError(f"intrinsics must be one of {INTRINSICS_SOURCES}, got {mode!r}")
    if known is None:
        return pred, IntrinsicsChoice("predicted", 0.0, fallback=mode == "camera_info")
    depth_hw = tuple(int(n) for n in pred.depth.shape[1:3])
    K = scale_to_depth(known, image_hw, depth_hw)  # type: ignore[arg-type]
    ratio = focal_ratio(to_numpy(pred.intrinsics), K)
    if mode == "predicted":
        return pred, IntrinsicsChoice("predicted", ratio)
    return replace(pred, intrinsics=K), IntrinsicsChoice("camera_info", ratio)
