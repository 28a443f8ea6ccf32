"""The node's outputs: one class per group of topics, all with the same interface.

The node (and `scal3r_bench`) hand every batch of engine events to each output in turn
(`Output.on_events`, on the worker thread) and call `Output.reset` after a map reset.
Outputs read engine results only from the events: what they need of the past (every
frame's pose, for a path or a rescale) they keep themselves in a `Track`. The metric
scale, estimated on the ROS side (`ros/scale.py`), reaches them as a `ScaleUpdate`
event in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scal3r_ros.mapping.events import MapUpdate, PosesUpdate
from scal3r_ros.mapping.planning.scale import ScaleEstimate


class Output(Protocol):
    """What the node loops over."""

    def on_events(self, events: list[MapUpdate]) -> None: ...

    def reset(self) -> None: ...


@dataclass
class ScaleUpdate(MapUpdate):
    """The scale source's estimate after a batch (one per batch, ``chunk_id`` -1).

    ``scale``: the scale applied to everything published (metres per engine unit; it
    follows ``estimate.scale`` beyond a tolerance). ``rescaled``: it changed with this
    batch: outputs re-express what they published.
    """

    estimate: ScaleEstimate
    scale: float = 1.0
    rescaled: bool = False


def newest_stamp(events: list[MapUpdate], default: int) -> int:
    """The largest stamp of the batch's poses (``default`` when it has none)."""
    stamps = [int(s) for ev in events if isinstance(ev, PosesUpdate) for s in ev.stamps_ns]
    return max(stamps, default=default)


class Track:
    """Every frame's latest engine pose, stamp and camera, from ``PosesUpdate`` events
    (what ``MappingEngine.poses`` holds: corrections come as events too). Numpy arrays
    grown by doubling: 137 bytes a frame."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.c2w = np.zeros((0, 4, 4))
        self.stamps = np.zeros(0, np.int64)
        self.have = np.zeros(0, bool)
        self.cameras: list[str] = []

    def __len__(self) -> int:
        return int(self.have.sum())

    def add(self, ev: PosesUpdate) -> np.ndarray:
        """Record the event's poses; returns the mask of frames seen for the first time."""
        ids = np.asarray(ev.frame_ids, np.int64)
        if len(ids) and ids.max() >= len(self.have):
            self._grow(int(ids.max()) + 1)
        new = ~self.have[ids]
        self.c2w[ids], self.stamps[ids], self.have[ids] = ev.c2w, ev.stamps_ns, True
        for fid, cam in zip(ids.tolist(), ev.camera_ids, strict=False):
            self.cameras[fid] = cam
        return new

    def poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame_ids, stamps_ns, c2w) of every frame placed so far."""
        ids = np.flatnonzero(self.have)
        return ids, self.stamps[ids], self.c2w[ids]

    def camera_of(self, frame_id: int) -> str:
        return self.cameras[frame_id] or "cam0"

    def _grow(self, needed: int) -> None:
        n, old = max(needed, 2 * len(self.have), 256), len(self.have)
        self.c2w = np.concatenate([self.c2w, np.tile(np.eye(4), (n - old, 1, 1))])
        self.stamps = np.concatenate([self.stamps, np.zeros(n - old, np.int64)])
        self.have = np.concatenate([self.have, np.zeros(n - old, bool)])
        self.cameras += [""] * (n - old)
