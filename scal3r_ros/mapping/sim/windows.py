"""Consecutive network windows of a KITTI-like synthetic drive, at the network's size.

Why: the geometry after the network (unprojection, overlap alignment, map insertion, loop
geometry) must be checked and timed at real sizes -- a 60-frame window at the depth
resolution the network gives for KITTI (518x154), 30 overlap frames = ~2.4 M points for
the alignment -- without the network. The oracle backend predicts each window from the
drive's ground truth in its own random Sim(3) gauge, with depth noise, pose noise and an
in-window bend, so two windows disagree the way real predictions do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.mapping.windowing import ChunkScheduler, ChunkSpec, WindowConfig

KITTI_DEPTH_HW = (154, 518)  # the network's depth maps for 1242x375 KITTI images


@dataclass
class Windows:
    """``specs[k]``, its network input and its prediction (network order, numpy)."""

    drive: SyntheticDrive
    specs: list[ChunkSpec]
    inputs: list[ChunkInput]
    preds: list[ChunkPrediction]


def kitti_like_windows(
    n_windows: int = 2,
    chunk_size: int = 60,
    overlap: int = 30,
    hw: tuple[int, int] = KITTI_DEPTH_HW,
    seed: int = 0,
) -> Windows:
    """``n_windows`` consecutive windows (``chunk_size``/``overlap``) of a drive rendered at
    ``hw`` (height, width), predicted by a noisy oracle."""
    stride = chunk_size - overlap
    n_frames = chunk_size + (n_windows - 1) * stride
    drive = SyntheticDrive(SyntheticConfig(n_frames=n_frames, width=hw[1], height=hw[0], seed=seed))
    oracle = OracleBackend(
        drive,
        OracleConfig(
            depth_noise=0.02,
            rot_noise_deg=0.1,
            trans_noise_m=0.02,
            drift_yaw_deg_per_frame=0.02,
            drift_scale_per_frame=0.001,
            seed=seed,
        ),
    )
    scheduler = ChunkScheduler(WindowConfig(chunk_size, overlap))
    specs = [s for s in (scheduler.push() for _ in range(n_frames)) if s is not None]
    images = {}
    inputs, preds = [], []
    for spec in specs[:n_windows]:
        fids = [spec.frame_ids[k] for k in spec.network_order]
        for f in fids:
            if f not in images:
                images[f] = drive.render(f)[0]
        inp = ChunkInput(
            chunk_id=spec.chunk_id,
            frame_ids=np.array(fids, dtype=np.int64),
            stamps_ns=np.array([drive.stamp_ns(f) for f in fids], dtype=np.int64),
            images=np.stack([images[f] for f in fids]),
            intrinsics=np.repeat(drive.K[None], len(fids), axis=0),
        )
        inputs.append(inp)
        preds.append(oracle.infer(inp, None))
    return Windows(drive, specs[:n_windows], inputs, preds)
