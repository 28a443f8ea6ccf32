"""Per-window geometry kept for loop closure: subsampled, newest in RAM, older on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scal3r_ros.mapping.spill import SpillBudget, SpillStore
from scal3r_ros.mapping.tensors import as_tensor, to_numpy

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class ChunkGeometry:
    """Subsampled per-frame geometry of one chunk in its local frame (for loops)."""

    chunk_id: int
    frame_ids: np.ndarray  # (F,) time order
    points: np.ndarray  # (F, h, w, 3) float32
    conf: np.ndarray  # (F, h, w) float32
    valid: np.ndarray  # (F, h, w) bool
    c2w: np.ndarray  # (F, 4, 4) local poses
    descriptors: np.ndarray | None  # (F, D)


class ChunkGeometryStore:
    """``ChunkGeometry`` by chunk id: the newest ``ram_chunks`` in RAM, older ones spilled
    to the frames' folder under the same disk cap (a deleted one makes loops to its chunk
    fail as "evicted" instead of growing the disk without bound)."""

    def __init__(
        self, stride: int, ram_chunks: int, spill_dir: str | None, budget: SpillBudget
    ) -> None:
        self.stride = max(1, stride)
        self.ram_chunks = ram_chunks
        self._ram: dict[int, ChunkGeometry] = {}
        self._disk = SpillStore("geom", spill_dir, budget)

    def __contains__(self, chunk_id: int) -> bool:
        return chunk_id in self._ram or chunk_id in self._disk

    def __len__(self) -> int:
        """Chunks stored (RAM and disk)."""
        return len(self._ram) + len(self._disk)

    def put(
        self,
        chunk_id: int,
        frame_ids: np.ndarray,
        points: ArrayLike,
        conf: ArrayLike,
        valid: ArrayLike,
        c2w: ArrayLike,
        descriptors: np.ndarray | None,
    ) -> None:
        """Keep a window's geometry (every ``stride``-th pixel); spill the oldest. The maps
        may be tensors on any device: they are subsampled there, and only the subsample is
        copied to the host."""
        s = self.stride

        def sub(x: ArrayLike) -> np.ndarray:
            return to_numpy(as_tensor(x)[:, ::s, ::s], copy=True)  # one copy

        self._ram[chunk_id] = ChunkGeometry(
            chunk_id,
            frame_ids.copy(),
            sub(points),
            sub(conf),
            sub(valid),
            to_numpy(c2w, copy=True),
            None if descriptors is None else to_numpy(descriptors, copy=True),
        )
        while len(self._ram) > self.ram_chunks:
            old_id = min(self._ram)
            old = self._ram.pop(old_id)
            arrays = {
                "frame_ids": old.frame_ids,
                "points": old.points,
                "conf": old.conf,
                "valid": old.valid,
                "c2w": old.c2w,
            }
            if old.descriptors is not None:
                arrays["descriptors"] = old.descriptors
            try:  # age: the chunk's first frame (evicted along with the frames' images)
                self._disk.put(
                    old_id, int(old.frame_ids[0]), ".npz", lambda p, a=arrays: _save_npz(p, a)
                )
            except OSError:  # disk full: loops to this chunk are then rejected
                pass

    def get(self, chunk_id: int) -> ChunkGeometry:
        """A past chunk's geometry (RAM or disk); KeyError when it was never kept or the
        disk cap deleted it."""
        g = self._ram.get(chunk_id)
        if g is not None:
            return g
        path = self._disk.path(chunk_id)
        if path is None:
            raise KeyError(f"no geometry stored for chunk {chunk_id} (or deleted to bound disk)")
        z = np.load(path)
        return ChunkGeometry(
            chunk_id,
            z["frame_ids"],
            z["points"].astype(np.float32),
            z["conf"].astype(np.float32),
            z["valid"],
            z["c2w"],
            z["descriptors"] if "descriptors" in z.files else None,
        )

    def clear(self) -> None:
        """Forget every chunk (RAM and the spilled files)."""
        self._ram.clear()
        self._disk.clear()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # np.savez(path) would append ".npz" to other names
        np.savez(f, **arrays)
