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

import numpy as np
from scipy.spatial.transform import Rotation

from scal3r_ros.mapping.sim3 import Sim3


@dataclass
class _Entry:
    stamp_ns: int
    chunk_id: int
    c2w_local: np.ndarray  # 4x4 rigid, in the chunk's coordinates


class Trajectory:
    """Frame index -> (stamp, owner chunk, local pose); chunk id -> Sim(3) to the map."""

    def __init__(self) -> None:
        self._frames: dict[int, _Entry] = {}
        self._chunks: dict[int, Sim3] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def reset(self) -> None:
        self._frames.clear()
        self._chunks.clear()

    def set_chunk_pose(self, chunk_id: int, g: Sim3) -> None:
        self._chunks[chunk_id] = g

    def chunk_pose(self, chunk_id: int) -> Sim3:
        return self._chunks[chunk_id]

    def set_frame(self, frame_id: int, stamp_ns: int, chunk_id: int, c2w_local: np.ndarray) -> None:
        self._frames[frame_id] = _Entry(int(stamp_ns), chunk_id, np.asarray(c2w_local, float))

    def owner(self, frame_id: int) -> int:
        return self._frames[frame_id].chunk_id

    def frame_ids(self) -> np.ndarray:
        return np.array(sorted(self._frames), dtype=np.int64)

    def frames_of_chunk(self, chunk_id: int) -> np.ndarray:
        return np.array(
            sorted(f for f, e in self._frames.items() if e.chunk_id == chunk_id), dtype=np.int64
        )

    def pose(self, frame_id: int) -> np.ndarray:
        e = self._frames[frame_id]
        return self._chunks[e.chunk_id].apply_pose(e.c2w_local)

    def poses(self, frame_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(stamps_ns (N,), c2w (N, 4, 4)) in the map frame, sorted by frame index."""
        ids = self.frame_ids() if frame_ids is None else np.asarray(frame_ids, np.int64)
        stamps = np.array([self._frames[int(i)].stamp_ns for i in ids], dtype=np.int64)
        c2w = np.stack([self.pose(int(i)) for i in ids]) if len(ids) else np.zeros((0, 4, 4))
        return stamps, c2w

    def save(self, path: str | Path, fmt: str = "tum") -> None:
        stamps, c2w = self.poses()
        write_poses(path, stamps, c2w, fmt)


def write_poses(path: str | Path, stamps_ns: np.ndarray, c2w: np.ndarray, fmt: str = "tum") -> None:
    """Write poses as TUM (``t x y z qx qy qz qw``, t in s) or KITTI (3x4 row-major).

    Both are the plain-text formats ``evo`` reads (``evo_ape tum|kitti``). Rotations are
    re-orthonormalised so a Sim(3)-scaled matrix never leaks into the file.
    """
    fmt = fmt.lower()
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


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
