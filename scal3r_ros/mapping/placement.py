"""How a window joins the chain: its points, its Sim(3) to the previous window, which
overlap frames it takes over.

``WindowPoints`` turns a prediction into the points the map and the alignment use;
``PreviousWindow`` keeps the last window's overlap tail and aligns the next window to it
(robust point fit, camera-pose fallback when the overlap is degenerate); ``hand_over``
splits an overlap between the two windows as the official stitching does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    AlignmentResult,
    align_points,
    gather_overlap,
    pose_fallback,
    unproject_depth,
)
from scal3r_ros.mapping.backends.protocol import ChunkPrediction
from scal3r_ros.mapping.events import AlignmentReport
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import as_tensor, to_numpy
from scal3r_ros.mapping.windowing import ChunkSpec


@dataclass
class WindowPoints:
    """One window's prediction in time order with its per-pixel points in the chunk frame.

    ``points``/``conf``/``valid`` and the prediction's depth maps are tensors on the
    backend's device (they never make a full-resolution trip to the host); the prediction's
    ``c2w`` and ``intrinsics`` are small host float64 arrays (trajectory, events)."""

    chunk_id: int
    frame_ids: np.ndarray  # (F,) int64, time order
    pred: ChunkPrediction  # time order
    points: torch.Tensor  # (F, h, w, 3) float32
    conf: torch.Tensor  # (F, h, w) float32
    valid: torch.Tensor  # (F, h, w) bool

    @staticmethod
    def from_prediction(
        spec: ChunkSpec, pred_net: ChunkPrediction, use_point_head: bool
    ) -> WindowPoints:
        """Points from depth unprojection (official default ``use_xyz_align=0``) or from
        the point head; ``pred_net`` is in network order (reference frame first), its maps
        tensors on any device or numpy arrays."""
        pred = pred_net.take(np.argsort(np.asarray(spec.network_order)))  # back to time order
        depth = as_tensor(pred.depth, dtype=torch.float32)
        dev = depth.device
        if use_point_head and pred.points is not None:
            pts = as_tensor(pred.points, dev, torch.float32)
            conf = pred.points_conf if pred.points_conf is not None else pred.depth_conf
        else:
            pts = unproject_depth(depth, pred.intrinsics, pred.c2w)
            conf = pred.depth_conf
        conf = as_tensor(conf, dev, torch.float32)
        valid = torch.isfinite(depth) & (depth > 0) & torch.isfinite(pts).all(-1)
        pred = replace(
            pred,
            c2w=to_numpy(pred.c2w).astype(np.float64),
            intrinsics=to_numpy(pred.intrinsics).astype(np.float64),
            depth=depth,
            depth_conf=as_tensor(pred.depth_conf, dev, torch.float32),
        )
        fids = np.array(spec.frame_ids, dtype=np.int64)
        return WindowPoints(spec.chunk_id, fids, pred, pts, conf, valid)


@dataclass
class Link:
    """A window placed against the previous one: ``sim3`` maps this chunk into the
    previous chunk's frame; ``report`` says how it was found."""

    prev_id: int
    shared: list[int]  # overlap frame ids, time order
    first_prev_frame: int  # oldest frame of the previous window's tail
    sim3: Sim3
    report: AlignmentReport

    @property
    def degenerate(self) -> bool:
        return not self.report.ok


@dataclass
class PreviousWindow:
    """The previous window's overlap tail (points, confidences, validity, camera poses of
    its last ``overlap`` frames) and the fit of the next window to it."""

    alignment: AlignmentConfig
    overlap: int
    chunk_id: int | None = None
    # frame id -> (points, conf, valid: tensors on the device; c2w: host (4, 4))
    tail: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]] = field(
        default_factory=dict
    )

    def reset(self) -> None:
        self.chunk_id = None
        self.tail = {}

    def align(self, w: WindowPoints) -> Link | None:
        """Robust Sim(3) of ``w`` to the previous window on the shared frames' same-pixel
        points; from the shared camera poses when that fit is degenerate, else the raw fit
        or identity. None for the first window."""
        if self.chunk_id is None:
            return None
        prev_id, tail, fids = self.chunk_id, self.tail, w.frame_ids
        shared = [int(f) for f in fids if int(f) in tail]
        pos = {int(f): k for k, f in enumerate(fids)}
        res: AlignmentResult | None = None
        if shared:
            ia = [pos[f] for f in shared]
            P = torch.stack([tail[f][0] for f in shared])
            C = torch.stack([tail[f][1] for f in shared])
            V = torch.stack([tail[f][2] for f in shared])
            a, b, ca, cb = gather_overlap(
                P,
                w.points[ia],
                C,
                w.conf[ia],
                V,
                w.valid[ia],
                self.alignment.max_points_per_frame,
            )
            res = align_points(b, a, cb, ca, self.alignment)
        fallback = ""
        degenerate = res is None or not res.ok
        if not degenerate:
            T = res.sim3
        else:
            T = None
            if shared:
                Pc2w = np.stack([tail[f][3] for f in shared])
                T = pose_fallback(Pc2w, w.pred.c2w[[pos[f] for f in shared]])
                fallback = "camera_poses" if T is not None else ""
            if T is None:
                T = res.sim3 if res is not None and np.isfinite(res.sim3.s) else None
                fallback = "raw_fit" if T is not None else "identity"
                T = T or Sim3.identity()
        report = AlignmentReport(
            chunk_id=w.chunk_id,
            other_chunk_id=prev_id,
            ok=not degenerate,
            reason=(res.reason if res is not None else "no_overlap") if degenerate else "",
            n_points=res.n_points if res is not None else 0,
            inlier_ratio=res.inlier_ratio if res is not None else 0.0,
            rmse=res.rmse if res is not None else float("nan"),
            scale=T.s,
            fallback=fallback,
        )
        return Link(prev_id, shared, min(tail, default=0), T, report)

    def keep_tail(self, w: WindowPoints) -> None:
        """``w`` becomes the previous window: keep its last ``overlap`` frames."""
        fids = w.frame_ids
        self.chunk_id = w.chunk_id
        self.tail = {
            int(fids[k]): (w.points[k], w.conf[k], w.valid[k], w.pred.c2w[k])
            for k in range(max(0, len(fids) - self.overlap), len(fids))
        }


@dataclass
class Handover:
    """Frame ownership after placing a window against the previous one."""

    owned: list[int]  # indices into the window of the frames it now owns
    handed: list[int]  # overlap frame ids that move from the previous window to this one
    new_ids: list[int]  # owned frames placed for the first time
    corrected_ids: list[int]  # owned frames taken over (already placed by the previous)


def hand_over(frame_ids: np.ndarray, link: Link | None, overlap: int) -> Handover:
    """Official stitching: of an overlap, the first half stays with the earlier window and
    the rest moves to the new one; frames before the previous window's tail (a full window
    after a flushed one) stay with their owners."""
    shared = link.shared if link is not None else []
    first = link.first_prev_frame if link is not None else 0
    keep_prev = set(shared[: min(overlap // 2, len(shared))])
    handed = [f for f in shared if f not in keep_prev]
    owned = [k for k, f in enumerate(frame_ids) if int(f) not in keep_prev and f >= first]
    new_ids: list[int] = []
    corrected_ids: list[int] = []
    for k in owned:
        f = int(frame_ids[k])
        (corrected_ids if f in handed else new_ids).append(f)
    return Handover(owned, handed, new_ids, corrected_ids)
