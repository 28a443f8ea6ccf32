"""The Scal3R network in PyTorch (ROS-free): presets, blocks, GCM, heads, checkpoints.

Main names: :class:`Scal3R` (network), :func:`get_config` (``"scal3r-1b"``, ``"tiny"``),
:func:`run_synchronous` / :func:`run_chunk` / :class:`GCSState` (GCM synchronisation schedules,
see :mod:`scal3r_ros.model.gcs`), :func:`load_checkpoint` / :func:`load_scal3r` /
:class:`CheckpointError`.
"""

from .checkpoint import CheckpointError, LoadReport, load_checkpoint, load_scal3r
from .config import PRESETS, Scal3RConfig, get_config
from .gcm import FastWeights, GCMGrads
from .gcs import GCSState, run_chunk, run_synchronous
from .heads import CameraHead, DPTHead
from .pose_encoding import (
    extrinsics_to_c2w,
    pose_encoding_to_c2w_intri,
    pose_encoding_to_extri_intri,
)
from .preprocess import (
    PreprocessConfig,
    compute_target_size,
    preprocess_batch,
    preprocess_sequence_reference,
)
from .scal3r import Scal3R, Scal3ROutput

__all__ = [
    "PRESETS",
    "CameraHead",
    "CheckpointError",
    "DPTHead",
    "PreprocessConfig",
    "compute_target_size",
    "extrinsics_to_c2w",
    "pose_encoding_to_c2w_intri",
    "pose_encoding_to_extri_intri",
    "preprocess_batch",
    "preprocess_sequence_reference",
    "FastWeights",
    "GCMGrads",
    "GCSState",
    "LoadReport",
    "Scal3R",
    "Scal3RConfig",
    "Scal3ROutput",
    "get_config",
    "load_checkpoint",
    "load_scal3r",
    "run_chunk",
    "run_synchronous",
]
