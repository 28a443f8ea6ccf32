"""A backend that takes a given network time per window: the real engine on a CPU machine.

Why: the pipelined worker overlaps window k's geometry with window k+1's network. On a
machine without a GPU that overlap can only be measured if the network's time is
replayed: ``TimedBackend`` runs any backend (the oracle, the tiny net) and then waits
until ``network_s`` have passed since the call began. The wait sleeps (releases the GIL,
uses no CPU), as a CUDA launch followed by a synchronise would, so the engine's own
work in other threads runs beside it exactly as it would beside a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from scal3r_ros.mapping.backends.protocol import Backend, ChunkInput, ChunkPrediction


class TimedBackend:
    """``inner`` with every ``infer`` lasting at least ``network_s`` seconds."""

    def __init__(self, inner: Backend, network_s: float) -> None:
        if not network_s >= 0.0:
            raise ValueError(f"network time must be >= 0 s, got {network_s!r}")
        self.inner = inner
        self.network_s = float(network_s)
        self.calls = 0
        self.slept_s = 0.0  # total time spent waiting (inner work subtracted)

    def prepare(
        self, frame_image: np.ndarray, intrinsics: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.inner.prepare(frame_image, intrinsics)

    def new_gcs_state(self, mode: str) -> Any:
        return self.inner.new_gcs_state(mode)

    def gcs_state_nbytes(self, gcs_state: Any) -> int:
        return self.inner.gcs_state_nbytes(gcs_state)

    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        t0 = time.perf_counter()
        pred = self.inner.infer(chunk, gcs_state)
        self._wait_until(t0 + self.network_s)
        return pred

    def infer_exact(self, chunks: Sequence[Callable[[], ChunkInput]]) -> Iterator[ChunkPrediction]:
        it = iter(self.inner.infer_exact(chunks))
        while True:
            t0 = time.perf_counter()
            try:
                pred = next(it)
            except StopIteration:
                return
            self._wait_until(t0 + self.network_s)
            yield pred

    def __getattr__(self, name: str) -> Any:
        # optional backend hooks (reset_resolution, ...) are the inner backend's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _wait_until(self, deadline: float) -> None:
        self.calls += 1
        left = deadline - time.perf_counter()
        if left > 0:
            time.sleep(left)
            self.slept_s += left
