"""Sensor-frame clouds for costmaps: one small point set per frame, in its optical frame.

Why: Nav2 obstacle/voxel layers ray-trace from the sensor origin at the image's time,
so they want each frame's points in that camera's optical frame (x right, y down,
z forward), stamped with the image stamp, confidence-filtered and sparse. The engine
provides each new frame's depth once (``FrameCloudsUpdate``, enabled by
``EngineConfig.frame_clouds``); this module selects frames, filters and downsamples.

Filtering follows the map's rule (confidence > ``conf_ratio`` x the frame's mean over
valid pixels), then a depth range and a voxel grid (most confident point per voxel),
then a hard cap (most confident points). Distances are in metres once the metric
``scale`` (metres per map unit) is applied; with no scale source they are map units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scal3r_ros.mapping.alignment import unproject_depth
from scal3r_ros.mapping.events import FrameCloudsUpdate
from scal3r_ros.mapping.map_store import voxel_downsample
from scal3r_ros.mapping.tensors import to_numpy

FRAME_SELECTIONS = ("all", "every_n", "newest")


@dataclass
class SensorCloudConfig:
    """Which frames and how dense. Distances in metres after ``scale``."""

    frames: str = "all"  # all | every_n (frame id % every_n == 0) | newest (one per chunk)
    every_n: int = 5
    conf_ratio: float = 0.75  # x the frame's mean confidence (as the map)
    pixel_stride: int = 2  # every n-th pixel in both directions before filtering
    min_depth: float = 0.0
    max_depth: float = 40.0  # <= 0: no limit
    voxel_size: float = 0.1  # <= 0: no voxel grid
    max_points: int = 20_000  # <= 0: no cap

    def __post_init__(self) -> None:
        if self.frames not in FRAME_SELECTIONS:
            raise ValueError(f"frames must be one of {FRAME_SELECTIONS}, got {self.frames!r}")
        if self.every_n < 1:
            raise ValueError("every_n must be >= 1")


@dataclass
class SensorCloud:
    """Points of one frame in its camera's optical frame (float32, metres x scale)."""

    frame_id: int
    stamp_ns: int
    camera_id: str
    xyz: np.ndarray  # (M, 3) float32
    confidence: np.ndarray  # (M,) float32


def frame_cloud(
    depth: np.ndarray,
    confidence: np.ndarray,
    K: np.ndarray,
    scale: float = 1.0,
    config: SensorCloudConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (M, 3) float32 in the optical frame, confidence (M,)) from one depth map.

    ``depth`` (h, w) in map units (NaN / <= 0 invalid), ``K`` at depth resolution,
    ``scale`` metres per map unit.
    """
    cfg = config or SensorCloudConfig()
    st = max(1, cfg.pixel_stride)
    d = np.asarray(depth, dtype=np.float32) * np.float32(scale)
    pts = to_numpy(unproject_depth(d[None], np.asarray(K, np.float64)[None], np.eye(4)[None])[0])
    pts, d, c = pts[::st, ::st], d[::st, ::st], np.asarray(confidence, np.float32)[::st, ::st]
    valid = np.isfinite(d) & (d > 0) & np.isfinite(c)
    if not valid.any():
        return np.zeros((0, 3), np.float32), np.zeros(0, np.float32)
    keep = valid & (c > cfg.conf_ratio * c[valid].mean())
    keep &= d >= cfg.min_depth
    if cfg.max_depth > 0:
        keep &= d <= cfg.max_depth
    xyz, conf = pts[keep], c[keep]
    if cfg.voxel_size > 0 and len(xyz):
        sel = to_numpy(voxel_downsample(xyz, conf, cfg.voxel_size))
        xyz, conf = xyz[sel], conf[sel]
    if cfg.max_points > 0 and len(xyz) > cfg.max_points:
        sel = np.sort(np.argsort(-conf, kind="stable")[: cfg.max_points])
        xyz, conf = xyz[sel], conf[sel]
    return xyz.astype(np.float32), conf.astype(np.float32)


class SensorCloudBuilder:
    """``build(event, scale) -> list[SensorCloud]`` for the selected frames."""

    def __init__(self, config: SensorCloudConfig | None = None) -> None:
        self.config = config or SensorCloudConfig()

    def select(self, event: FrameCloudsUpdate) -> list[int]:
        """Indices into the event's frames that get a cloud."""
        cfg = self.config
        n = len(event.frame_ids)
        if n == 0:
            return []
        if cfg.frames == "newest":
            return [int(np.argmax(event.stamps_ns))]
        if cfg.frames == "every_n":
            return [k for k in range(n) if int(event.frame_ids[k]) % cfg.every_n == 0]
        return list(range(n))

    def build(self, event: FrameCloudsUpdate, scale: float = 1.0) -> list[SensorCloud]:
        out = []
        for k in self.select(event):
            xyz, conf = frame_cloud(
                event.depth[k], event.confidence[k], event.intrinsics[k], scale, self.config
            )
            out.append(
                SensorCloud(
                    int(event.frame_ids[k]), int(event.stamps_ns[k]), event.camera_ids[k], xyz, conf
                )
            )
        return out
