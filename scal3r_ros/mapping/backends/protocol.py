"""The engine's only view of the network: a small ``Backend`` protocol.

Why a protocol: the engine must be testable against exact ground truth (the oracle
backend over a synthetic scene) and must run the real Scal3R network in production,
with the same code path in between. A backend turns the images of one chunk into a
``ChunkPrediction`` in the chunk's reference camera frame (the first image given is
the reference, as the network's reordering makes it), arbitrary scale.

GCS (global context synchronisation) is the backend's business, the engine only
keeps the state object between chunks:

- ``causal``: ``state = backend.new_gcs_state("causal")`` once; every ``infer`` call
  reads it and updates it in place (running per-layer gradient sums).
- ``exact``: the engine collects all chunk inputs and calls ``infer_exact`` once at the
  end of a recorded sequence; it yields one prediction per chunk, in order.
- ``off``: ``state`` is None; chunks are independent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from scal3r_ros.mapping.frame_store import StoredFrame
    from scal3r_ros.mapping.windowing import ChunkSpec
import torch

Array = np.ndarray | torch.Tensor  # a prediction's maps: on the backend's device or numpy
GCS_MODES = ("causal", "exact", "off")


@dataclass
class ChunkInput:
    """Images of one chunk in network order (index 0 = reference frame).

    ``images``: (S, h, w, 3) uint8 RGB at the backend's working resolution (what
    ``Backend.prepare`` returned). ``frame_ids`` / ``stamps_ns`` / ``camera_ids``
    identify the frames (the oracle uses the stamps to look up ground truth).
    """

    chunk_id: int
    frame_ids: np.ndarray
    stamps_ns: np.ndarray
    images: np.ndarray
    intrinsics: np.ndarray | None = None  # (S, 3, 3) at working resolution, when known
    camera_ids: tuple[str, ...] = ()
    is_loop: bool = False

    @staticmethod
    def from_stored(spec: ChunkSpec, get: Callable[[int], StoredFrame]) -> ChunkInput:
        """The network input of a window from stored frames (``get(frame_id)``), reference
        frame first: the engine's windows and loop chunks, and distributed ranks'."""
        fids = [spec.frame_ids[k] for k in spec.network_order]
        stored = [get(f) for f in fids]
        Ks = [s.intrinsics for s in stored]
        return ChunkInput(
            chunk_id=spec.chunk_id,
            frame_ids=np.array(fids, dtype=np.int64),
            stamps_ns=np.array([s.stamp_ns for s in stored], dtype=np.int64),
            images=np.stack([s.image for s in stored]),
            intrinsics=None if any(k is None for k in Ks) else np.stack(Ks),  # type: ignore[arg-type]
            camera_ids=tuple(s.camera_id for s in stored),
            is_loop=spec.is_loop,
        )


@dataclass
class ChunkPrediction:
    """Network output for one chunk, same frame order as the ``ChunkInput``.

    Poses are camera-to-world (4x4, rigid) in the chunk's coordinate frame, in which
    the reference camera is (nominally) the identity; depth is z-depth.

    The per-frame maps and poses are torch tensors on the backend's device (the Scal3R
    backend: its GPU, so the geometry after the network runs there) or numpy arrays (the
    oracle); the engine accepts both (``tensors.as_tensor``). Descriptors are numpy.
    """

    c2w: Array  # (S, 4, 4) float64
    intrinsics: Array  # (S, 3, 3) float64, at depth resolution
    depth: Array  # (S, h, w) float32
    depth_conf: Array  # (S, h, w) float32, >= 1 for the real network
    points: Array | None = None  # (S, h, w, 3) float32, chunk frame (point head)
    points_conf: Array | None = None  # (S, h, w)
    descriptors: np.ndarray | None = None  # (S, D) float32 global descriptors (loops)
    extras: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.c2w)

    def take(self, order: Sequence[int]) -> ChunkPrediction:
        """A copy with frames permuted/selected by ``order`` (tensors stay on their device)."""
        idx = np.asarray(order, dtype=np.int64)

        def sel(a: Any) -> Any:
            if a is None:
                return None
            if isinstance(a, torch.Tensor):
                return a[torch.from_numpy(idx).to(a.device)]
            return a[idx]

        return ChunkPrediction(
            c2w=sel(self.c2w),
            intrinsics=sel(self.intrinsics),
            depth=sel(self.depth),
            depth_conf=sel(self.depth_conf),
            points=sel(self.points),
            points_conf=sel(self.points_conf),
            descriptors=sel(self.descriptors),
            extras=self.extras,
        )


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a network (or an oracle)."""

    def prepare(
        self, frame_image: np.ndarray, intrinsics: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resize/crop one HxWx3 uint8 image to the working resolution (called once per
        frame on arrival, so only small images are kept); returns (image, scaled K)."""
        ...

    def new_gcs_state(self, mode: str) -> Any:
        """A fresh GCS state for ``mode`` (None for ``off`` or when not applicable)."""
        ...

    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        """Predict one chunk; in ``causal`` mode update ``gcs_state`` in place."""
        ...

    def infer_exact(self, chunks: Sequence[Callable[[], ChunkInput]]) -> Iterator[ChunkPrediction]:
        """Official layer-synchronous schedule over all chunks of a recorded sequence.

        ``chunks`` are loaders so that the backend can re-read images when it
        recomputes instead of keeping every chunk's tokens in memory.
        """
        ...

    def gcs_state_nbytes(self, gcs_state: Any) -> int:
        """Host + device bytes held by the state (reported in stats)."""
        ...
