"""The scale source for a ``scale_source`` parameter value."""

from __future__ import annotations

from scal3r_ros.mapping.planning.camera_height import CameraHeightScale
from scal3r_ros.mapping.planning.odometry import OdometryScale
from scal3r_ros.mapping.planning.scale import (
    SCALE_SOURCES,
    NoScale,
)
from scal3r_ros.mapping.planning.stereo import StereoBaselineScale


def make_scale_source(
    name: str,
    camera_height_m: float = 1.65,
    odometry_window_s: float = 10.0,
    stereo_baseline_m: float | None = None,
) -> NoScale | CameraHeightScale | OdometryScale | StereoBaselineScale:
    """The source for a ``scale_source`` parameter value (see ``SCALE_SOURCES``)."""
    if name == "none":
        return NoScale()
    if name == "camera_height":
        return CameraHeightScale(camera_height_m)
    if name == "odometry":
        return OdometryScale(odometry_window_s)
    if name == "stereo":
        return StereoBaselineScale(stereo_baseline_m)
    raise ValueError(f"scale_source must be one of {SCALE_SOURCES}, got {name!r}")
