"""Bounded, correctable point map: per-chunk voxel clouds in chunk-local coordinates.

Why per chunk and local: loop closure and the pose graph move whole chunks (a Sim(3)
each). Keeping each chunk's points in its own coordinates means a correction is a
4x4 update, never a rewrite of the points; the map frame is produced on demand.

The filter and the voxel step of an insert run in torch on the device the points come
from (the network's GPU in production); only the kept points reach this host store.

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
import torch

from scal3r_ros.mapping.atomic_io import binary_output
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import as_tensor, median, to_numpy

ArrayLike = np.ndarray | torch.Tensor


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


@dataclass
class MapSnapshot:
    """A map store's points as flat arrays (a saved session): chunk ``chunk_ids[k]`` holds
    rows ``offsets[k]:offsets[k+1]`` of the point arrays, in its own coordinates, at
    coarsening ``levels[k]``; chunk poses are kept by the caller (`MapStore.restore`)."""

    voxel_size: float
    chunk_ids: np.ndarray  # (C,) int64, ascending
    offsets: np.ndarray  # (C + 1,) int64
    levels: np.ndarray  # (C,) int64
    xyz: np.ndarray  # (M, 3) float32, chunk-local
    rgb: np.ndarray  # (M, 3) uint8
    conf: np.ndarray  # (M,) float32
    frame: np.ndarray  # (M,) int64
    n_evicted_chunks: int = 0
    n_coarsened: int = 0


def voxel_downsample(xyz: ArrayLike, conf: ArrayLike, voxel: float) -> torch.Tensor:
    """Indices (ascending, int64, on the points' device) of one point per occupied voxel:
    the most confident one, the lowest index among equally confident ones."""
    p = as_tensor(xyz)
    n = len(p)
    dev = p.device
    if n == 0 or voxel <= 0:
        return torch.arange(n, device=dev)
    c = as_tensor(conf, dev)
    # a 0-d tensor, not a Python scalar: CUDA would multiply by the reciprocal instead
    keys = torch.floor(p / torch.tensor(voxel, dtype=p.dtype, device=dev)).long()
    keys -= keys.min(0).values
    span = keys.max(0).values + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, voxel_of = torch.unique(flat, return_inverse=True)  # one sort
    n_vox = int(voxel_of.max()) + 1
    best = torch.full((n_vox,), -torch.inf, dtype=c.dtype, device=dev)
    best = best.scatter_reduce(0, voxel_of, c, "amax")
    idx = torch.arange(n, device=dev)
    candidate = torch.where(c == best[voxel_of], idx, n)
    first = torch.full((n_vox,), n, dtype=idx.dtype, device=dev)
    return torch.sort(first.scatter_reduce(0, voxel_of, candidate, "amin")).values


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
        points: ArrayLike,
        rgb: ArrayLike,
        conf: ArrayLike,
        frame_ids: np.ndarray,
        depth: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add frames of one chunk. points: (F, H, W, 3) chunk-local; rgb (F, H, W, 3)
        uint8; conf (F, H, W); frame_ids (F,); depth (F, H, W) for validity/auto voxel.

        points, conf and depth may be tensors on any device: the confidence filter and the
        voxel step run there and only the kept points are copied to the host store.
        Returns the inserted points in the map frame (xyz, rgb, conf) for publishing.
        """
        cfg = self.config
        st = max(1, cfg.pixel_stride)
        pts = as_tensor(points, dtype=torch.float32)[:, ::st, ::st]
        dev = pts.device
        cf = as_tensor(conf, dev, torch.float32)[:, ::st, ::st]
        valid = torch.isfinite(pts).all(-1) & torch.isfinite(cf)
        d = None
        if depth is not None:
            d = as_tensor(depth, dev, torch.float32)[:, ::st, ::st]
            valid &= torch.isfinite(d) & (d > 0)
        keep = valid & (cf > _frame_means(cf, valid)[:, None, None] * cfg.conf_ratio)
        if self.voxel_size <= 0:
            if d is not None and bool(keep.any()):
                med = median(d[keep]) * g.s
            else:
                pw = pts[keep].double()
                R = torch.from_numpy(g.R).to(pw)
                pts_w = g.s * (pw @ R.T) + torch.from_numpy(g.t).to(pw)
                spread = torch.linalg.vector_norm(pts_w - pts_w.mean(0), dim=1)
                med = median(spread) if len(pw) else 0.0
            self.voxel_size = max(med * cfg.auto_voxel_rel, 1e-9)
        (pix,) = torch.nonzero(keep.reshape(-1), as_tuple=True)  # kept pixels, pixel order
        new_xyz, new_conf = pts.reshape(-1, 3)[pix], cf.reshape(-1)[pix]
        old = self._clouds.get(chunk_id)
        n_old = 0 if old is None else len(old.xyz)
        self._poses[chunk_id] = g
        all_xyz, all_conf = new_xyz, new_conf
        if n_old:  # the chunk's earlier points compete in the same voxels (listed first)
            all_xyz = torch.cat([as_tensor(old.xyz, dev), new_xyz])
            all_conf = torch.cat([as_tensor(old.conf, dev), new_conf])
        level = 0 if old is None else old.level
        sel = voxel_downsample(all_xyz, all_conf, self._local_voxel(chunk_id, level))
        sel_new = sel[sel >= n_old] - n_old
        # only the kept points cross to the host
        xyz_new = to_numpy(new_xyz[sel_new])
        conf_new = to_numpy(new_conf[sel_new])
        pix_new = to_numpy(pix[sel_new])
        h, w = pts.shape[1:3]
        f, rc = np.divmod(pix_new, h * w)
        r, c = np.divmod(rc, w)
        rgb_new = np.asarray(to_numpy(rgb)[f, r * st, c * st], dtype=np.uint8)
        frame_new = np.asarray(frame_ids, np.int64)[f]
        if old is None:
            cloud = _ChunkCloud(xyz_new, rgb_new, conf_new, frame_new, level)
        else:
            sel_old = to_numpy(sel[sel < n_old])
            cloud = _ChunkCloud(
                np.concatenate([old.xyz[sel_old], xyz_new]),
                np.concatenate([old.rgb[sel_old], rgb_new]),
                np.concatenate([old.conf[sel_old], conf_new]),
                np.concatenate([old.frame[sel_old], frame_new]),
                level,
            )
        self._clouds[chunk_id] = cloud
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

    def snapshot(self) -> MapSnapshot:
        """Every chunk's points (copies), for a saved session."""
        ids = sorted(self._clouds)
        clouds = [self._clouds[i] for i in ids]
        sizes = np.array([len(c.xyz) for c in clouds], np.int64)

        def cat(field: str, shape: tuple[int, ...], dtype) -> np.ndarray:
            if not clouds:
                return np.zeros(shape, dtype)
            return np.concatenate([getattr(c, field) for c in clouds]).astype(dtype, copy=False)

        return MapSnapshot(
            float(self.voxel_size),
            np.array(ids, np.int64),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            np.array([c.level for c in clouds], np.int64),
            cat("xyz", (0, 3), np.float32),
            cat("rgb", (0, 3), np.uint8),
            cat("conf", (0,), np.float32),
            cat("frame", (0,), np.int64),
            self.n_evicted_chunks,
            self.n_coarsened,
        )

    def restore(self, snap: MapSnapshot, poses: dict[int, Sim3]) -> None:
        """Replace the map by ``snap`` with the chunks' map poses ``poses`` (every chunk of
        the snapshot needs one); `points` then returns the saved map bit for bit."""
        missing = [int(c) for c in snap.chunk_ids if int(c) not in poses]
        if missing:
            raise KeyError(f"no pose for map chunks {missing[:10]}")
        self.reset()
        self.voxel_size = float(snap.voxel_size)
        self.n_evicted_chunks, self.n_coarsened = snap.n_evicted_chunks, snap.n_coarsened
        self._poses.update(poses)
        for k, cid in enumerate(snap.chunk_ids):
            a, b = int(snap.offsets[k]), int(snap.offsets[k + 1])
            self._clouds[int(cid)] = _ChunkCloud(
                snap.xyz[a:b].copy(),
                snap.rgb[a:b].copy(),
                snap.conf[a:b].copy(),
                snap.frame[a:b].copy(),
                int(snap.levels[k]),
            )

    # ------------------------------------------------------------ queries
    def __len__(self) -> int:
        return sum(len(c.xyz) for c in self._clouds.values())

    def chunk_ids(self) -> list[int]:
        return sorted(self._clouds)

    def chunk_points(self, chunk_ids: list[int]) -> np.ndarray:
        """The points of ``chunk_ids`` (those in the map) in the map frame, (N, 3) float32."""
        xs = [
            self._poses[c].apply(self._clouds[c].xyz.astype(np.float64)).astype(np.float32)
            for c in chunk_ids
            if c in self._clouds
        ]
        return np.concatenate(xs) if xs else np.zeros((0, 3), np.float32)

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
            sel = to_numpy(voxel_downsample(xyz, conf, self.voxel_size))
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

    def _coarse_selection(self, chunk_id: int) -> np.ndarray:
        """Voxel selection of a stored chunk at its current level (host)."""
        c = self._clouds[chunk_id]
        return to_numpy(voxel_downsample(c.xyz, c.conf, self._local_voxel(chunk_id, c.level)))

    def _enforce_cap(self) -> None:
        cfg = self.config
        while len(self) > cfg.max_points and self._clouds:
            ids = sorted(self._clouds)
            target = next((i for i in ids if self._clouds[i].level < cfg.max_coarsen_levels), None)
            if target is not None and len(ids) > 1 and target != ids[-1]:
                c = self._clouds[target]
                c.level += 1
                sel = self._coarse_selection(target)
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
                    sel = self._coarse_selection(ids[0])
                else:
                    sel = np.argsort(-c.conf, kind="stable")[: cfg.max_points]
                    sel.sort()
                self._clouds[ids[0]] = _subset(c, sel)


def _frame_means(conf: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-frame mean confidence over valid pixels (float64 sums, then float32 like the
    threshold it feeds); inf for a frame without valid pixels (it keeps nothing)."""
    total = torch.where(valid, conf, 0.0).sum((1, 2), dtype=torch.float64)
    count = valid.sum((1, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.inf).float()


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
