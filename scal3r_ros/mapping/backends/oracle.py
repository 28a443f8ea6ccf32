"""Oracle backend: ground-truth depth and poses of a ``SyntheticDrive``, made network-like.

Each chunk's prediction is expressed in that chunk's reference camera frame and then
moved by a random Sim(3) (scale included), like a network whose every chunk has its
own gauge. Optional corruptions: multiplicative depth noise, a wrong predicted focal
length (``focal_error``), per-frame pose noise, and
*drift* -- an in-chunk bend (yaw growing with the distance in frames from the
reference, plus a scale creep) that no rigid fit can undo, so chained alignment
accumulates error the way real predictions do and loop closure has work to do.

The oracle only makes sense on images of its own drive: every frame is compared with the
drive's rendering of the same index (the first time it is rendered), so a camera that
publishes another drive (other frames, laps, seed or size) is reported as
``DriveMismatch`` instead of being mapped with the wrong ground truth.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scal3r_ros.mapping.alignment import unproject_depth
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.loop_closure import thumbnail_descriptors
from scal3r_ros.mapping.sim.synthetic import SyntheticDrive, drive_summary
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import to_numpy


@dataclass
class OracleConfig:
    """Noise / gauge knobs. All zero + ``random_sim3=False`` = exact ground truth."""

    random_sim3: bool = True  # random rotation, translation and scale per chunk
    scale_range: tuple[float, float] = (0.3, 3.0)
    depth_noise: float = 0.0  # relative sigma, per pixel
    rot_noise_deg: float = 0.0  # per-frame pose noise (chunk frame)
    trans_noise_m: float = 0.0
    drift_yaw_deg_per_frame: float = 0.0  # in-chunk bend about the reference's vertical
    drift_scale_per_frame: float = 0.0  # in-chunk scale creep
    # factor on the predicted focal lengths (1: exact): a network that misjudges the field
    # of view; depth and poses stay true, so only the unprojection with this K is wrong
    focal_error: float = 1.0
    sky_depth_m: float = 200.0  # depth reported where nothing was hit (confidence 1)
    descriptors: bool = True  # image-thumbnail global descriptors (for loop retrieval)
    # Loop chunks whose two windows are farther apart than this (metres) are predicted the
    # way a network fails on a false loop: the second window is overlaid on the first.
    loop_overlay_dist_m: float = 8.0
    seed: int = 0
    # mean absolute difference [grey levels] above which an image is not the drive's own
    # (JPEG transport: ~3; the same place on another drive: 13 and more, see the tests)
    mismatch_threshold: float = 8.0
    # test hook: (chunk input, prediction; both in network order) -> corrupted prediction
    corrupt: Callable[[ChunkInput, ChunkPrediction], ChunkPrediction] | None = None
    # seconds the k-th inference takes extra (the last value repeats; empty: none): a slow
    # network, e.g. (0, 600) for a second window still running when the node is stopped
    window_delays_s: tuple[float, ...] = ()


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _random_rotation(rng: np.random.Generator, max_angle: float | None = None) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = rng.uniform(-np.pi, np.pi) if max_angle is None else rng.normal() * max_angle
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K


class DriveMismatch(ValueError):
    """The images are not the oracle's synthetic drive (the camera publishes another)."""


class OracleBackend:
    """Implements ``Backend`` from a ``SyntheticDrive`` (frames looked up by stamp)."""

    def __init__(self, drive: SyntheticDrive, config: OracleConfig | None = None) -> None:
        self.drive = drive
        self.config = config or OracleConfig()
        self._depth_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.chunk_sim3: dict[int, Sim3] = {}  # the gauge applied to each chunk (for tests)
        self.n_inferred = 0  # inference calls so far (windows, loop windows, retries)

    # ------------------------------------------------------------ protocol
    def prepare(
        self, frame_image: np.ndarray, intrinsics: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return frame_image, intrinsics

    def new_gcs_state(self, mode: str) -> Any:
        return None

    def gcs_state_nbytes(self, gcs_state: Any) -> int:
        return 0

    def infer_exact(self, chunks: Sequence[Callable[[], ChunkInput]]) -> Iterator[ChunkPrediction]:
        for load in chunks:
            yield self.infer(load(), None)

    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        cfg = self.config
        delays = cfg.window_delays_s
        if delays:
            time.sleep(delays[min(self.n_inferred, len(delays) - 1)])
        self.n_inferred += 1
        rng = np.random.default_rng([cfg.seed, chunk.chunk_id, int(chunk.is_loop)])
        idx = [self.drive.index_of_stamp(int(s)) for s in chunk.stamps_ns]
        n = self.drive.n_frames
        for i, s in zip(idx, chunk.stamps_ns, strict=True):
            if not 0 <= i < n:
                raise DriveMismatch(
                    f"image stamp {int(s)} ns is frame {i} of the oracle's drive, which has "
                    f"frames 0..{n - 1} ({drive_summary(self.drive.config)}): the camera "
                    f"publishes another drive. {_FIX}"
                )
        pairs = zip(idx, chunk.images, strict=True)
        depth = np.stack([self._depth(i, img) for i, img in pairs]).astype(np.float64)
        gt = np.stack([self.drive.gt_pose(i) for i in idx])
        sky = ~np.isfinite(depth)
        depth[sky] = cfg.sky_depth_m
        conf = np.where(sky, 1.0, 1.0 + np.exp(2.5 - depth / 30.0))

        if chunk.is_loop:
            gt = self._overlay_false_loop(gt, np.asarray(idx))
        inv_ref = np.linalg.inv(gt[0])
        rel = inv_ref @ gt  # chunk frame = reference camera
        rank = np.argsort(np.argsort(idx, kind="stable"), kind="stable").astype(np.float64)
        offs = rank - rank[0]  # position in the chunk relative to the reference
        for k in range(len(idx)):
            bend = _rot_y(np.radians(cfg.drift_yaw_deg_per_frame) * offs[k])
            creep = (1.0 + cfg.drift_scale_per_frame) ** offs[k]
            T = np.eye(4)
            T[:3, :3] = bend
            rel[k] = T @ rel[k]
            rel[k, :3, 3] *= creep
            depth[k] *= creep
            if k > 0 and (cfg.rot_noise_deg > 0 or cfg.trans_noise_m > 0):
                rel[k, :3, :3] = (
                    _random_rotation(rng, np.radians(cfg.rot_noise_deg)) @ rel[k, :3, :3]
                )
                rel[k, :3, 3] += rng.normal(scale=cfg.trans_noise_m, size=3)
        if cfg.depth_noise > 0:
            depth *= np.clip(1.0 + rng.normal(scale=cfg.depth_noise, size=depth.shape), 0.2, 5)

        if cfg.random_sim3:
            s = float(np.exp(rng.uniform(*np.log(cfg.scale_range))))
            g = Sim3(s, _random_rotation(rng), rng.normal(scale=5.0, size=3))
        else:
            g = Sim3.identity()
        self.chunk_sim3[chunk.chunk_id] = g
        c2w = np.stack([g.apply_pose(T) for T in rel])
        depth = (depth * g.s).astype(np.float32)
        K = np.repeat(self.drive.K[None], len(idx), axis=0)
        K[:, 0, 0] *= cfg.focal_error
        K[:, 1, 1] *= cfg.focal_error
        pts = to_numpy(unproject_depth(depth, K, c2w))
        pred = ChunkPrediction(
            c2w=c2w,
            intrinsics=K,
            depth=depth,
            depth_conf=conf.astype(np.float32),
            points=pts,
            points_conf=conf.astype(np.float32),
            descriptors=thumbnail_descriptors(chunk.images) if cfg.descriptors else None,
        )
        if cfg.corrupt is not None:
            pred = cfg.corrupt(chunk, pred)
        return pred

    # ------------------------------------------------------------ helpers
    def _overlay_false_loop(self, gt: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Loop chunk = runs of consecutive frames; if the runs are not at the same
        place, pretend the later runs start where the first one does (what a network
        does with two unrelated views it was told to fuse)."""
        order = np.argsort(idx, kind="stable")
        breaks = np.nonzero(np.diff(idx[order]) != 1)[0]
        if len(breaks) == 0:
            return gt
        runs = np.split(order, breaks + 1)
        first = min(runs, key=lambda r: -idx[r[0]])  # the later window (network order first)
        ca = gt[first, :3, 3]
        out = gt.copy()
        for run in runs:
            if run is first:
                continue
            gap = np.linalg.norm(gt[run, None, :3, 3] - ca[None], axis=2).min()
            if gap > self.config.loop_overlay_dist_m:
                fix = gt[first[0]] @ np.linalg.inv(gt[run[0]])
                out[run] = fix @ gt[run]
        return out

    def _depth(self, i: int, image: np.ndarray) -> np.ndarray:
        """Depth of drive frame ``i``; checks ``image`` against the drive's rendering of
        ``i`` whenever that is rendered (once per frame, unless evicted)."""
        d = self._depth_cache.get(i)
        if d is None:
            rgb, d = self.drive.render(i)
            self._check_image(i, rgb, image)
            self._depth_cache[i] = d
            if len(self._depth_cache) > 256:
                self._depth_cache.popitem(last=False)
        return d

    def _check_image(self, i: int, expected: np.ndarray, image: np.ndarray) -> None:
        summary = drive_summary(self.drive.config)
        if image.shape != expected.shape:
            raise DriveMismatch(
                f"images are {image.shape[1]}x{image.shape[0]}, the oracle's drive renders "
                f"{expected.shape[1]}x{expected.shape[0]} ({summary}). {_FIX}"
            )
        diff = float(np.abs(image.astype(np.int16) - expected.astype(np.int16)).mean())
        if diff > self.config.mismatch_threshold:
            raise DriveMismatch(
                f"frame {i} is not the oracle's drive ({summary}): it differs from the "
                f"drive's own image by {diff:.1f} grey levels on average. {_FIX}"
            )


_FIX = (
    "Run the camera and the node on the same drive: scal3r_synthetic_camera takes its "
    "defaults from config/synthetic.yaml, as `scal3r_mapping --config synthetic` does; "
    "--frames/--laps/--seed/--width/--height must equal the node's oracle_frames/"
    "oracle_laps/oracle_seed/oracle_width/oracle_height."
)
