"""Per-frame trajectory stored relative to the chunk that owns each frame.

A frame's map pose is ``G_chunk . c2w_local``: when alignment or the pose graph moves
a chunk (its Sim(3) ``G``), all its frames move with it without touching them.
Ownership of overlap frames follows the official stitching rule: of the ``overlap``
frames two consecutive chunks share, the first half stays with the earlier chunk and
the second half goes to the later one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping.atomic_io import binary_output
from scal3r_ros.mapping.sim3 import Sim3


@dataclass
class TrajectoryState:
    """A trajectory as plain arrays (a saved session): placed frames with their stamps,
    owner chunks and local poses, and every chunk's map pose."""

    frame_ids: np.ndarray  # (N,) int64 ascending
    stamps_ns: np.ndarray  # (N,) int64
    owners: np.ndarray  # (N,) int64
    local_c2w: np.ndarray  # (N, 4, 4) float64, in the owner chunk's coordinates
    chunk_poses: dict[int, Sim3]


class Trajectory:
    """Frame index -> (stamp, owner chunk, local pose); chunk id -> Sim(3) to the map.

    Per-frame data live in numpy arrays indexed by frame id (grown by doubling): a long
    drive costs 144 bytes per frame, and a loop closure that moves every chunk re-poses
    all frames in a few vectorised operations instead of a Python loop per frame.
    """

    def __init__(self) -> None:
        self._chunks: dict[int, Sim3] = {}
        self.reset()

    def __len__(self) -> int:
        return self._count

    def reset(self) -> None:
        self._chunks.clear()
        self._stamp = np.zeros(0, np.int64)
        self._owner = np.zeros(0, np.int64)  # -1: no such frame
        self._local = np.zeros((0, 4, 4))  # c2w, rigid, in the owner chunk's coordinates
        self._count = 0

    def set_chunk_pose(self, chunk_id: int, g: Sim3) -> None:
        self._chunks[chunk_id] = g

    def chunk_pose(self, chunk_id: int) -> Sim3:
        return self._chunks[chunk_id]

    def set_frame(self, frame_id: int, stamp_ns: int, chunk_id: int, c2w_local: np.ndarray) -> None:
        if frame_id < 0:
            raise ValueError(f"frame ids are non-negative, got {frame_id}")
        if frame_id >= len(self._owner):
            self._grow(frame_id + 1)
        self._count += int(self._owner[frame_id] < 0)
        self._stamp[frame_id] = int(stamp_ns)
        self._owner[frame_id] = chunk_id
        self._local[frame_id] = np.asarray(c2w_local, float)

    def _grow(self, needed: int) -> None:
        n = max(needed, 2 * len(self._owner), 256)
        old = len(self._owner)
        self._stamp = np.concatenate([self._stamp, np.zeros(n - old, np.int64)])
        self._owner = np.concatenate([self._owner, np.full(n - old, -1, np.int64)])
        self._local = np.concatenate([self._local, np.zeros((n - old, 4, 4))])

    def _check(self, ids: np.ndarray) -> None:
        bad = (ids < 0) | (ids >= len(self._owner))
        if bad.any() or (self._owner[ids[~bad]] < 0).any():
            raise KeyError(f"unknown frame ids in {ids.tolist()[:10]}...")

    def owner(self, frame_id: int) -> int:
        self._check(np.array([frame_id]))
        return int(self._owner[frame_id])

    def frame_ids(self) -> np.ndarray:
        return np.flatnonzero(self._owner >= 0).astype(np.int64)

    def frames_of_chunks(self, chunk_ids) -> np.ndarray:
        """Sorted ids of the frames owned by any of ``chunk_ids``."""
        return np.flatnonzero(np.isin(self._owner, np.fromiter(chunk_ids, np.int64))).astype(
            np.int64
        )

    def local_poses(self, frame_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns (N,), c2w (N, 4, 4)) in each frame's owner chunk's coordinates."""
        ids = np.asarray(frame_ids, np.int64)
        self._check(ids)
        return self._stamp[ids].copy(), self._local[ids].copy()

    def pose(self, frame_id: int) -> np.ndarray:
        return self.poses(np.array([frame_id]))[1][0]

    def poses(self, frame_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns (N,), c2w (N, 4, 4)) in the map frame, in the order of ``frame_ids``
        (default: every frame, sorted by index)."""
        ids = self.frame_ids() if frame_ids is None else np.asarray(frame_ids, np.int64)
        self._check(ids)
        if not len(ids):
            return np.zeros(0, np.int64), np.zeros((0, 4, 4))
        used, which = np.unique(self._owner[ids], return_inverse=True)
        g = [self._chunks[int(c)] for c in used]
        s = np.array([x.s for x in g])[which]
        R = np.stack([x.R for x in g])[which]
        t = np.stack([x.t for x in g])[which]
        local = self._local[ids]
        # as Sim3.apply_pose: the centre moves with the similarity, the orientation rotates
        c2w = np.tile(np.eye(4), (len(ids), 1, 1))
        c2w[:, :3, :3] = R @ local[:, :3, :3]
        c2w[:, :3, 3] = s[:, None] * (R @ local[:, :3, 3:])[..., 0] + t
        return self._stamp[ids].copy(), c2w

    def state(self) -> TrajectoryState:
        """The placed frames and chunk poses (copies), for a saved session."""
        ids = self.frame_ids()
        return TrajectoryState(
            ids,
            self._stamp[ids].copy(),
            self._owner[ids].copy(),
            self._local[ids].copy(),
            dict(self._chunks),
        )

    def restore(self, state: TrajectoryState) -> None:
        """Replace the trajectory by ``state``; `poses` then returns the saved poses."""
        ids = np.asarray(state.frame_ids, np.int64)
        missing = sorted({int(c) for c in state.owners} - set(state.chunk_poses))
        if missing:
            raise KeyError(f"no pose for owner chunks {missing[:10]}")
        self.reset()
        self._chunks.update(state.chunk_poses)
        if len(ids):
            self._grow(int(ids.max()) + 1)
            self._stamp[ids] = state.stamps_ns
            self._owner[ids] = state.owners
            self._local[ids] = state.local_c2w
        self._count = len(np.unique(ids))

    def save(self, path: str | Path, fmt: str = "tum") -> None:
        stamps, c2w = self.poses()
        write_poses(path, stamps, c2w, fmt)


def write_poses(
    path: str | Path | BinaryIO, stamps_ns: np.ndarray, c2w: np.ndarray, fmt: str = "tum"
) -> None:
    """Write poses as TUM (``t x y z qx qy qz qw``, t in s) or KITTI (3x4 row-major).

    Both are the plain-text formats ``evo`` reads (``evo_ape tum|kitti``). Rotations are
    re-orthonormalised so a Sim(3)-scaled matrix never leaks into the file. ``path``: a
    path (replaced atomically, `atomic_write`) or an open binary file.
    """
    fmt = fmt.lower()
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    lines = []
    if fmt == "tum":
        q = Rotation.from_matrix(c2w[:, :3, :3]).as_quat() if len(c2w) else np.zeros((0, 4))
        for s, T, qq in zip(np.asarray(stamps_ns, np.int64), c2w, q, strict=True):
            t = T[:3, 3]
            lines.append(
                f"{s // 10**9}.{s % 10**9:09d} {t[0]:.9f} {t[1]:.9f} {t[2]:.9f} "
                f"{qq[0]:.9f} {qq[1]:.9f} {qq[2]:.9f} {qq[3]:.9f}"
            )
    elif fmt == "kitti":
        for T in c2w:
            R = Rotation.from_matrix(T[:3, :3]).as_matrix() if len(c2w) else T[:3, :3]
            M = np.concatenate([R, T[:3, 3:]], axis=1)
            lines.append(" ".join(f"{v:.9e}" for v in M.ravel()))
    else:
        raise ValueError(f"unknown trajectory format {fmt!r} (tum | kitti)")
    text = "\n".join(lines) + ("\n" if lines else "")
    with binary_output(path) as f:
        f.write(text.encode("ascii"))


def ate_sim3(est: np.ndarray, gt: np.ndarray) -> tuple[float, Sim3]:
    """RMS absolute trajectory error of camera centres after a Sim(3) (Umeyama) fit.

    est, gt: (N, 4, 4) or (N, 3). Returns (ATE in gt units, est->gt Sim(3)).
    """
    from scal3r_ros.mapping.sim3 import umeyama

    pe = est[:, :3, 3] if est.ndim == 3 else est
    pg = gt[:, :3, 3] if gt.ndim == 3 else gt
    S = umeyama(pe, pg)
    err = np.linalg.norm(S.apply(pe) - pg, axis=1)
    return float(np.sqrt(np.mean(err**2))), S
