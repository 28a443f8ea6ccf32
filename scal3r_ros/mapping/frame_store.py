"""Bounded store of past frames at working resolution (for loop chunks, exact GCS).

Why: loop chunks and the offline ``exact`` GCS schedule need images of frames that
have left the sliding window. Keeping them all in RAM is what made the official
pipeline run out of host memory, so recent frames stay in RAM (``ram_frames``), older
ones are spilled to ``.npy`` files in this process's spill folder (see
:mod:`scal3r_ros.mapping.spill`: one folder per process, folders of dead processes are
removed at the next start), and beyond ``max_spill_bytes`` on disk (shared with the
engine's loop geometry) or ``max_frames`` in all, the oldest images are deleted. A loop
back to a frame whose image is gone is then rejected (``evicted``), never a crash.
Frames a window still to run needs are never deleted (``protect_from``).

A deleted frame's stamp and camera id stay known (:meth:`FrameStore.info`), like its
pose in the trajectory: a few dozen bytes a frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scal3r_ros.mapping.spill import SpillBudget, SpillStore, process_spill_dir

# default disk cap of frames + loop geometry. Measured 0.83 MiB a frame at KITTI size
# (518x154, 60/30 windows: image + loop geometry in two windows), so ~9700 frames: a
# KITTI-00 drive (4541 frames) keeps every loop; ~2 MiB a frame at 518x392
DEFAULT_MAX_SPILL_BYTES = 8 << 30


@dataclass
class FrameStoreConfig:
    ram_frames: int = 128
    spill: bool = True  # spill to disk beyond ram_frames (else forget)
    max_frames: int | None = None  # hard cap on remembered frames (None: unlimited on disk)
    spill_dir: str | None = None  # parent of the per-process spill folder (None: $TMPDIR)
    # disk cap shared with the engine's spilled loop geometry; oldest deleted first
    max_spill_bytes: int | None = DEFAULT_MAX_SPILL_BYTES

    def __post_init__(self) -> None:
        if self.ram_frames < 0:
            raise ValueError(f"ram_frames must be >= 0, got {self.ram_frames}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {self.max_frames}")
        if self.max_spill_bytes is not None and self.max_spill_bytes < 0:
            raise ValueError(f"max_spill_bytes must be >= 0 or None, got {self.max_spill_bytes}")


@dataclass
class StoredFrame:
    image: np.ndarray  # (h, w, 3) uint8, working resolution
    stamp_ns: int
    camera_id: str
    intrinsics: np.ndarray | None


class FrameStore:
    def __init__(
        self, config: FrameStoreConfig | None = None, budget: SpillBudget | None = None
    ) -> None:
        """``budget``: the disk cap shared with other spill stores (default: its own,
        ``config.max_spill_bytes``)."""
        self.config = config or FrameStoreConfig()
        self.budget = budget if budget is not None else SpillBudget(self.config.max_spill_bytes)
        # frames from this id on are never deleted (windows still to run need them)
        self.protect_from: Callable[[], int] | None = None
        self._ram: OrderedDict[int, StoredFrame] = OrderedDict()
        self._disk: dict[int, tuple[int, str, np.ndarray | None]] = {}
        self._gone: dict[int, tuple[int, str]] = {}  # deleted frames: stamp, camera id
        self._cameras: dict[str, str] = {}  # one string per camera id
        self.evicted = 0  # images deleted by the caps
        self.spill_errors = 0  # images that could not be written (then forgotten)
        self._spill = SpillStore(
            "frames", self.config.spill_dir, self.budget, self._protected, self._on_evict
        )
        if self.config.spill:
            try:  # claim the spill folder now: removes those of dead processes at start
                process_spill_dir(self.config.spill_dir)
            except OSError:
                pass  # reported at the first spill, if it comes to that

    def __contains__(self, frame_id: int) -> bool:
        return frame_id in self._ram or frame_id in self._disk

    def __len__(self) -> int:
        return len(self._ram) + len(self._disk)

    def put(self, frame_id: int, frame: StoredFrame) -> None:
        self._ram[frame_id] = frame
        while len(self._ram) > self.config.ram_frames:
            fid, old = self._ram.popitem(last=False)
            if not self.config.spill:
                self._forget(fid, old.stamp_ns, old.camera_id)
                continue
            meta = (old.stamp_ns, self._camera(old.camera_id), old.intrinsics)
            self._disk[fid] = meta  # before the write: the budget may evict it at once
            try:
                self._spill.put(fid, fid, ".npy", lambda p, im=old.image: _save_npy(p, im))
            except OSError:
                self._disk.pop(fid, None)
                self.spill_errors += 1
                self._forget(fid, old.stamp_ns, old.camera_id)
        cap = self.config.max_frames
        while cap is not None and len(self) > cap:
            if self._disk and self._spill.oldest_evictable() is not None:
                self._spill.evict_oldest()
            elif self._ram and not self._protected(next(iter(self._ram))):
                fid, old = self._ram.popitem(last=False)
                self._forget(fid, old.stamp_ns, old.camera_id)
            else:
                break  # every frame left is needed by a window still to run

    def get(self, frame_id: int) -> StoredFrame:
        f = self._ram.get(frame_id)
        if f is not None:
            return f
        if frame_id in self._disk:
            stamp, cam, K = self._disk[frame_id]
            img = np.load(self._spill.path(frame_id))
            return StoredFrame(img, stamp, cam, K)
        why = "deleted to bound the store" if frame_id in self._gone else "never seen"
        raise KeyError(f"frame {frame_id} is not stored ({why})")

    def info(self, frame_id: int) -> tuple[int, str]:
        """``(stamp_ns, camera_id)`` of any frame seen since the last reset, stored or
        not (no disk read)."""
        f = self._ram.get(frame_id)
        if f is not None:
            return f.stamp_ns, f.camera_id
        if frame_id in self._disk:
            return self._disk[frame_id][:2]
        if frame_id in self._gone:
            return self._gone[frame_id]
        raise KeyError(f"frame {frame_id} was never seen")

    def intrinsics(self, frame_id: int) -> np.ndarray | None:
        """The K stored with a frame in RAM or on disk (no disk read); KeyError when the
        frame is not stored."""
        f = self._ram.get(frame_id)
        if f is not None:
            return f.intrinsics
        if frame_id in self._disk:
            return self._disk[frame_id][2]
        raise KeyError(f"frame {frame_id} is not stored")

    @property
    def n_forgotten(self) -> int:
        """Deleted frames whose stamp and camera are still on record."""
        return len(self._gone)

    def drop_before(self, frame_id: int) -> None:
        """Delete every frame older than ``frame_id`` (RAM and disk) and every record of
        it: a run that never looks back (localisation) keeps a flat store."""
        for f in [f for f in self._disk if f < frame_id]:
            del self._disk[f]
            self._spill.discard(f)
        for f in [f for f in self._ram if f < frame_id]:
            del self._ram[f]
        for f in [f for f in self._gone if f < frame_id]:
            del self._gone[f]

    def camera_id(self, frame_id: int) -> str:
        return self.info(frame_id)[1]

    def ram_nbytes(self) -> int:
        return sum(f.image.nbytes for f in self._ram.values())

    def disk_frames(self) -> int:
        return len(self._disk)

    def disk_nbytes(self) -> int:
        return self._spill.nbytes

    def reset(self) -> None:
        self._ram.clear()
        self._disk.clear()
        self._gone.clear()
        self._spill.clear()

    def close(self) -> None:
        self.reset()

    def __del__(self) -> None:
        try:
            self.reset()
        except Exception:
            pass

    # ------------------------------------------------------------ internals
    def _protected(self, frame_id: int) -> bool:
        return self.protect_from is not None and frame_id >= self.protect_from()

    def _on_evict(self, frame_id: int) -> None:
        stamp, cam, _ = self._disk.pop(frame_id)
        self._forget(frame_id, stamp, cam)

    def _forget(self, frame_id: int, stamp_ns: int, camera_id: str) -> None:
        self._gone[frame_id] = (stamp_ns, self._camera(camera_id))
        self.evicted += 1

    def _camera(self, camera_id: str) -> str:
        return self._cameras.setdefault(camera_id, camera_id)


def _save_npy(path, image: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to other names
        np.save(f, image)
