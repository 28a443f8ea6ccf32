"""Chunk scheduling for a stream, matching the official chunking exactly.

Official (``scal3r/pipelines/backend.py``, ``load_data``): chunk i covers frames
``[i*step, min(i*step + chunk_size, N))`` with ``step = chunk_size - overlap`` and
``n = ceil((N - overlap) / step)`` chunks; a single chunk of all frames when
``N <= chunk_size``. Streaming, a full chunk is ready as soon as its last frame has
arrived (every ``step`` frames after the first ``chunk_size``); at end of stream,
``flush`` emits the one partial chunk the official code would have built (or the
single short chunk of a sequence shorter than one chunk). Hence the streamed chunk
list equals the official list for any N.

The partial chunk starts where the next regular chunk would: it holds the previous
chunk's last ``overlap`` frames (the context the alignment needs) plus the frames that
arrived after it, however few. A flush does not end the schedule: if frames keep
coming (a save in the middle of a stream), the next regular chunk starts at the same
frame as the flushed one and so covers all of its frames again.

Inside a chunk the network sees the frames reordered so that the middle one
(``ceil(n/2) - 1``) comes first: it is the chunk's reference camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowConfig:
    """Chunk length and overlap in frames (official 60/30; low latency 16/8)."""

    chunk_size: int = 60
    overlap: int = 30

    def __post_init__(self) -> None:
        # the schedule itself is the official one for any overlap, 0 included; the engine
        # (EngineConfig) applies the mapping rule of at least one shared frame
        problem = window_problem(self.chunk_size, self.overlap, min_overlap=0)
        if problem:
            raise ValueError(problem)

    @property
    def stride(self) -> int:
        return self.chunk_size - self.overlap

    @staticmethod
    def low_latency() -> WindowConfig:
        return WindowConfig(chunk_size=16, overlap=8)


def window_problem(chunk_size: int, overlap: int, min_overlap: int = 1) -> str | None:
    """The one rule for chunk/overlap of mapping (EngineConfig, so node, offline tool and
    bench): ``chunk_size > overlap >= 1``. Each window is placed on the frames it shares
    with the previous one, so an overlap of 0 leaves nothing to align and every window would
    fall back to its predicted poses. ``min_overlap=0``: the bare schedule (WindowConfig)."""
    if overlap < min_overlap or chunk_size <= overlap:
        return (
            f"need chunk_size > overlap >= {min_overlap}, got chunk_size={chunk_size}, "
            f"overlap={overlap}"
        )
    return None


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk: its id and the engine frame indices it covers, in time order."""

    chunk_id: int
    frame_ids: tuple[int, ...]
    is_loop: bool = False

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def network_order(self) -> tuple[int, ...]:
        """Positions (into ``frame_ids``) in the order fed to the network."""
        return reference_order(len(self.frame_ids))

    @property
    def reference_frame(self) -> int:
        return self.frame_ids[self.network_order[0]]


def reference_order(n: int) -> tuple[int, ...]:
    """Official reordering: ``[m] + [0..m) + (m..n)`` with ``m = ceil(n/2) - 1``."""
    if n <= 0:
        return ()
    m = math.ceil(n / 2) - 1
    return (m, *range(m), *range(m + 1, n))


def official_chunks(n_frames: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """The official [start, end) chunk list for a sequence of ``n_frames`` (reference)."""
    if n_frames <= 0:
        return []
    step = chunk_size - overlap
    if n_frames <= chunk_size:
        return [(0, n_frames)]
    n = math.ceil((n_frames - overlap) / step)
    return [(i * step, min(i * step + chunk_size, n_frames)) for i in range(n)]


class ChunkScheduler:
    """Decides when a chunk is ready; frame ids are consecutive engine indices from 0."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.n_frames = 0
        self.next_chunk_id = 0
        self._next_start = 0  # start index of the next regular chunk
        self._covered_to = 0  # frames [0, covered_to) are in an emitted chunk

    def resume(self, n_frames: int, next_chunk_id: int) -> None:
        """Continue after a loaded session of ``n_frames`` frames and chunk ids below
        ``next_chunk_id``: the next frame is ``n_frames`` and the next window starts there
        (nothing of the loaded session is in it)."""
        if n_frames < 0 or next_chunk_id < 0:
            raise ValueError(f"need n_frames, next_chunk_id >= 0, got {n_frames}, {next_chunk_id}")
        self.n_frames = int(n_frames)
        self.next_chunk_id = int(next_chunk_id)
        self._next_start = self._covered_to = int(n_frames)

    def push(self) -> ChunkSpec | None:
        """Register one more frame; return the chunk that became ready, if any."""
        self.n_frames += 1
        end = self._next_start + self.config.chunk_size
        if self.n_frames == end:
            spec = self._emit(self._next_start, end)
            self._next_start += self.config.stride
            return spec
        return None

    def flush(self) -> ChunkSpec | None:
        """End of stream: the partial chunk ``[next regular start, n)`` over the frames no
        chunk covers yet (all frames when no chunk was emitted); None when all are
        covered. The regular schedule is left as it was (see the module docstring)."""
        if self.n_frames <= self._covered_to:
            return None
        return self._emit(self._next_start, self.n_frames)

    def _emit(self, start: int, end: int) -> ChunkSpec:
        spec = ChunkSpec(self.next_chunk_id, tuple(range(start, end)))
        self.next_chunk_id += 1
        self._covered_to = end
        return spec
