"""Bounded store of past frames at working resolution (for loop chunks, exact GCS).

Why: loop chunks and the offline ``exact`` GCS schedule need images of frames that
have left the sliding window. Keeping them all in RAM is what made the official
pipeline run out of host memory, so recent frames stay in RAM (``ram_frames``), older
ones are spilled to ``.npy`` files in a private temporary directory, and beyond
``max_frames`` the oldest are forgotten (a loop back to a forgotten frame is then
impossible; the default keeps everything on disk: ~240 kB per KITTI-sized frame).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FrameStoreConfig:
    ram_frames: int = 128
    spill: bool = True  # spill to disk beyond ram_frames (else forget)
    max_frames: int | None = None  # hard cap on remembered frames (None: unlimited on disk)
    spill_dir: str | None = None  # parent directory for the temporary spill folder


@dataclass
class StoredFrame:
    image: np.ndarray  # (h, w, 3) uint8, working resolution
    stamp_ns: int
    camera_id: str
    intrinsics: np.ndarray | None


class FrameStore:
    def __init__(self, config: FrameStoreConfig | None = None) -> None:
        self.config = config or FrameStoreConfig()
        self._ram: OrderedDict[int, StoredFrame] = OrderedDict()
        self._disk: OrderedDict[int, tuple[int, str, np.ndarray | None]] = OrderedDict()
        self._dir: Path | None = None

    def __contains__(self, frame_id: int) -> bool:
        return frame_id in self._ram or frame_id in self._disk

    def __len__(self) -> int:
        return len(self._ram) + len(self._disk)

    def put(self, frame_id: int, frame: StoredFrame) -> None:
        self._ram[frame_id] = frame
        while len(self._ram) > self.config.ram_frames:
            fid, old = self._ram.popitem(last=False)
            if self.config.spill:
                np.save(self._spill_dir() / f"{fid}.npy", old.image)
                self._disk[fid] = (old.stamp_ns, old.camera_id, old.intrinsics)
        cap = self.config.max_frames
        while cap is not None and len(self) > cap:
            if self._disk:
                fid, _ = self._disk.popitem(last=False)
                (self._spill_dir() / f"{fid}.npy").unlink(missing_ok=True)
            else:
                self._ram.popitem(last=False)

    def get(self, frame_id: int) -> StoredFrame:
        f = self._ram.get(frame_id)
        if f is not None:
            return f
        if frame_id in self._disk:
            stamp, cam, K = self._disk[frame_id]
            img = np.load(self._spill_dir() / f"{frame_id}.npy")
            return StoredFrame(img, stamp, cam, K)
        raise KeyError(f"frame {frame_id} is not stored (evicted or never seen)")

    def ram_nbytes(self) -> int:
        return sum(f.image.nbytes for f in self._ram.values())

    def disk_frames(self) -> int:
        return len(self._disk)

    def reset(self) -> None:
        self._ram.clear()
        self._disk.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def close(self) -> None:
        self.reset()

    def __del__(self) -> None:
        try:
            self.reset()
        except Exception:
            pass

    def _spill_dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="scal3r_frames_", dir=self.config.spill_dir))
        return self._dir
