"""Prediction heads of Scal3R: camera (pose encoding), DPT depth and DPT point map."""

from scal3r_ros.model.heads.activations import (
    activate_head,
    activate_pose,
    base_pose_act,
    inverse_log_transform,
)
from scal3r_ros.model.heads.camera_head import CameraHead
from scal3r_ros.model.heads.dpt_head import DPTHead

__all__ = [
    "CameraHead",
    "DPTHead",
    "activate_head",
    "activate_pose",
    "base_pose_act",
    "inverse_log_transform",
]
