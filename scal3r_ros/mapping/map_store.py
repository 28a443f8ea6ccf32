"""Bounded, correctable point map: per-chunk voxel clouds in chunk-local coordinates.

Why per chunk and local: loop closure and the pose graph move whole chunks (a Sim(3)
each). Keeping each chunk's points in its own coordinates means a correction is a
4x4 update, never a rewrite of the points; the map frame is produced on demand.

Filtering: a pixel becomes a point when its confidence exceeds ``conf_ratio`` x the
mean confidence of its frame (official: 0.75) and its depth is finite and positive;
points are voxel-downsampled per chunk (voxel size in map units; within a voxel the
most confident point is kept). Each point remembers its frame so a frame handed over
to the next chunk (overlap stitching) can be removed from the old chunk.

Cap policy (``max_points``), applied after each insert while over the cap:
1. the oldest chunk not yet at ``max_coarsen_levels`` is re-voxelised at twice its
   current voxel size (old regions get sparser, recent ones keep full detail);
2. when every chunk is at the coarsest level, the oldest chunk is evicted entirely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scal3r_ros.mapping.atomic_io import binary_output
from scal3r_ros.mapping.sim3 import Sim3


@dataclass
class MapConfig:
    voxel_size: float = 0.0  # map units; <= 0: auto = auto_voxel_rel x first median depth
    auto_voxel_rel: float = 0.01
    conf_ratio: float = 0.75  # x per-frame mean confidence (official)
    pixel_stride: int = 1  # take every n-th pixel in both directions before voxelising
    max_points: int = 2_000_000
    max_coarsen_levels: int = 3


@dataclass
class _ChunkCloud:
    xyz: np.ndarray  # (M, 3) float32, chunk-local
    rgb: np.ndarray  # (M, 3) uint8
    conf: np.ndarray  # (M,) float32
    frame: np.ndarray  # (M,) int64 engine frame index
    level: int = 0


def voxel_downsample(xyz: np.ndarray, conf: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of one point per occupied voxel (the most confident one)."""
    if len(xyz) == 0 or voxel <= 0:
        return np.arange(len(xyz))
    order = np.argsort(-conf, kind="stable")
    keys = np.floor(xyz[order] / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, first = np.unique(flat, return_index=True)
    return np.sort(order[first])


class MapStore:
    """Chunk id -> local voxel cloud + chunk Sim(3) to the map."""

    def __init__(self, config: MapConfig | None = None) -> None:
        self.config = config or MapConfig()
        self.reset()

    def reset(self) -> None:
        self._clouds: dict[int, _ChunkCloud] = {}
        self._poses: dict[int, Sim3] = {}
        # chunk -> (cloud, pose, map-frame xyz): clouds and poses are replaced, never
        # mutated, so identity says whether the transformed copy is still valid
        self._world: dict[int, tuple[_ChunkCloud, Sim3, np.ndarray]] = {}
        self.voxel_size = self.config.voxel_size if self.config.voxel_size > 0 else 0.0
        self.n_evicted_chunks = 0
        self.n_coarsened = 0

    # ------------------------------------------------------------ updates
    def set_chunk_pose(self, chunk_id: int, g: Sim3) -> None:
        self._poses[chunk_id] = g

    def insert(
        self,
        chunk_id: int,
        g: Sim3,
        points: np.ndarray,
        rgb: np.ndarray,
        conf: np.ndarray,
        frame_ids: np.ndarray,
        depth: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add frames of one chunk. points: (F, H, W, 3) chunk-local; rgb (F, H, W, 3)
        uint8; conf (F, H, W); frame_ids (F,); depth (F, H, W) for validity/auto voxel.

        Returns the inserted points in the map frame (xyz, rgb, conf) for publishing.
        """
        cfg = self.config
        st = max(1, cfg.pixel_stride)
        points = points[:, ::st, ::st]
        rgb = rgb[:, ::st, ::st]
        conf = conf[:, ::st, ::st]
        valid = np.isfinite(points).all(-1) & np.isfinite(conf)
        if depth is not None:
            d = depth[:, ::st, ::st]
            valid &= np.isfinite(d) & (d > 0)
        mean = np.array(
            [c[v].mean() if v.any() else np.inf for c, v in zip(conf, valid, strict=True)]
        )
        keep = valid & (conf > cfg.conf_ratio * mean[:, None, None])
        if self.voxel_size <= 0:
            if depth is not None and keep.any():
                med = float(np.median(depth[:, ::st, ::st][keep])) * g.s
            else:
                pts_w = g.apply(points[keep].reshape(-1, 3).astype(np.float64))
                med = (
                    float(np.median(np.linalg.norm(pts_w - pts_w.mean(0), axis=1)))
                    if len(pts_w)
                    else 0.0
                )
            self.voxel_size = max(med * cfg.auto_voxel_rel, 1e-9)
        fid = np.broadcast_to(np.asarray(frame_ids, np.int64)[:, None, None], keep.shape)
        cloud = _ChunkCloud(
            xyz=points[keep].astype(np.float32),
            rgb=rgb[keep].astype(np.uint8),
            conf=conf[keep].astype(np.float32),
            frame=fid[keep].copy(),
        )
        old = self._clouds.get(chunk_id)
        if old is not None:
            cloud = _ChunkCloud(
                np.concatenate([old.xyz, cloud.xyz]),
                np.concatenate([old.rgb, cloud.rgb]),
                np.concatenate([old.conf, cloud.conf]),
                np.concatenate([old.frame, cloud.frame]),
                old.level,
            )
        self._poses[chunk_id] = g
        sel = voxel_downsample(cloud.xyz, cloud.conf, self._local_voxel(chunk_id, cloud.level))
        self._clouds[chunk_id] = _subset(cloud, sel)
        self._enforce_cap()
        c = self._clouds.get(chunk_id)
        if c is None:
            z = np.zeros((0, 3), np.float32)
            return z, z.astype(np.uint8), np.zeros(0, np.float32)
        is_new = np.isin(c.frame, np.asarray(frame_ids, np.int64))
        return g.apply(c.xyz[is_new]).astype(np.float32), c.rgb[is_new], c.conf[is_new]

    def drop_frames(self, chunk_id: int, frame_ids: np.ndarray) -> int:
        """Remove the points of ``frame_ids`` from a chunk (overlap hand-over)."""
        c = self._clouds.get(chunk_id)
        if c is None:
            return 0
        keep = ~np.isin(c.frame, np.asarray(frame_ids, np.int64))
        self._clouds[chunk_id] = _subset(c, np.nonzero(keep)[0])
        return int((~keep).sum())

    # ------------------------------------------------------------ queries
    def __len__(self) -> int:
        return sum(len(c.xyz) for c in self._clouds.values())

    def chunk_ids(self) -> list[int]:
        return sorted(self._clouds)

    def nbytes(self) -> int:
        return sum(
            c.xyz.nbytes + c.rgb.nbytes + c.conf.nbytes + c.frame.nbytes
            for c in self._clouds.values()
        )

    def points(self, voxelize: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All points in the map frame (xyz float32, rgb uint8, conf float32).

        ``voxelize`` merges overlapping chunks on a global grid (for export/display).
        """
        xs, cs, fs = [], [], []
        for cid in list(self._world):
            if cid not in self._clouds:
                del self._world[cid]
        for cid in sorted(self._clouds):
            c, g = self._clouds[cid], self._poses[cid]
            cached = self._world.get(cid)
            if cached is None or cached[0] is not c or cached[1] is not g:
                cached = (c, g, g.apply(c.xyz.astype(np.float64)).astype(np.float32))
                self._world[cid] = cached
            xs.append(cached[2])
            cs.append(c.rgb)
            fs.append(c.conf)
        if not xs:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
        xyz, rgb, conf = np.concatenate(xs), np.concatenate(cs), np.concatenate(fs)
        if voxelize and self.voxel_size > 0:
            sel = voxel_downsample(xyz, conf, self.voxel_size)
            xyz, rgb, conf = xyz[sel], rgb[sel], conf[sel]
        return xyz, rgb, conf

    def save(self, path: str | Path, voxelize: bool = True) -> None:
        """Write the map as binary PLY (``.ply``) or binary PCD (``.pcd``)."""
        path = Path(path)
        xyz, rgb, conf = self.points(voxelize=voxelize)
        if path.suffix.lower() == ".ply":
            write_ply(path, xyz, rgb, conf)
        elif path.suffix.lower() == ".pcd":
            write_pcd(path, xyz, rgb, conf)
        else:
            raise ValueError(f"map export: unknown extension {path.suffix!r} (.ply | .pcd)")

    # ------------------------------------------------------------ internals
    def _local_voxel(self, chunk_id: int, level: int) -> float:
        g = self._poses[chunk_id]
        return self.voxel_size * (2.0**level) / g.s

    def _enforce_cap(self) -> None:
        cfg = self.config
        while len(self) > cfg.max_points and self._clouds:
            ids = sorted(self._clouds)
            target = next((i for i in ids if self._clouds[i].level < cfg.max_coarsen_levels), None)
            if target is not None and len(ids) > 1 and target != ids[-1]:
                c = self._clouds[target]
                c.level += 1
                sel = voxel_downsample(c.xyz, c.conf, self._local_voxel(target, c.level))
                self._clouds[target] = _subset(c, sel)
                self.n_coarsened += 1
            elif len(ids) > 1:
                del self._clouds[ids[0]]
                self.n_evicted_chunks += 1
            else:  # a single chunk above the cap: coarsen it, then subsample
                c = self._clouds[ids[0]]
                if c.level < cfg.max_coarsen_levels:
                    c.level += 1
                    self.n_coarsened += 1
                    sel = voxel_downsample(c.xyz, c.conf, self._local_voxel(ids[0], c.level))
                else:
                    sel = np.argsort(-c.conf, kind="stable")[: cfg.max_points]
                    sel.sort()
                self._clouds[ids[0]] = _subset(c, sel)


def _subset(c: _ChunkCloud, sel: np.ndarray) -> _ChunkCloud:
    return _ChunkCloud(c.xyz[sel], c.rgb[sel], c.conf[sel], c.frame[sel], c.level)


def write_ply(
    path: str | Path | BinaryIO, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray
) -> None:
    """Binary little-endian PLY with x y z (float) red green blue (uchar) confidence.

    ``path``: a path (replaced atomically, `atomic_write`) or an open binary file."""
    n = len(xyz)
    rec = np.empty(
        n,
        dtype=[
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("confidence", "<f4"),
        ],
    )
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rec["confidence"] = conf
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment scal3r_ros map\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property float confidence\nend_header\n"
    )
    with binary_output(path) as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


def write_pcd(
    path: str | Path | BinaryIO, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray
) -> None:
    """Binary PCD v0.7 with x y z rgb (PCL-packed float) confidence.

    ``path``: a path (replaced atomically, `atomic_write`) or an open binary file."""
    n = len(xyz)
    packed = (
        (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    ).astype(np.uint32)
    rec = np.empty(
        n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("c", "<f4")]
    )
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["rgb"], rec["c"] = packed, conf
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        "FIELDS x y z rgb confidence\nSIZE 4 4 4 4 4\nTYPE F F F F F\nCOUNT 1 1 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n"
    )
    with binary_output(path) as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())
