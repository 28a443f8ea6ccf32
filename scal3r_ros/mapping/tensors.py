"""The one conversion helper between the network's tensors and the host's arrays.

Why: the geometry after the network (unprojection, alignment, the map's voxel step, loop
geometry) runs in torch on the device the prediction lives on, so a GPU backend's depth
never makes a full-resolution trip to the host. Backends may still hand over numpy
arrays (the oracle does): ``as_tensor`` takes both, ``to_numpy`` brings the small,
selected results back for events and host stores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def device_of(*xs: Any) -> torch.device:
    """Device of the first torch tensor among ``xs`` (CPU when there is none)."""
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def as_tensor(
    x: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``x`` (tensor, numpy array or nested sequence) as a tensor on ``device`` (default:
    where it is; CPU for arrays) with ``dtype`` (default: its own). No copy when nothing
    changes; numpy arrays are shared, not copied, when they can be."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device or x.device, dtype=dtype or x.dtype)
    a = np.asarray(x)
    if not a.flags.writeable or any(s < 0 for s in a.strides):
        a = a.copy()  # torch refuses negative strides and warns on read-only memory
    return torch.from_numpy(a).to(device=device or "cpu", dtype=dtype)


def to_numpy(x: Any, copy: bool = False) -> np.ndarray:
    """A host numpy array of ``x`` (tensor or array); ``copy`` guarantees fresh memory
    (a CPU tensor's ``numpy()`` otherwise shares it)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            return t.cpu().numpy()  # already a fresh copy
        return t.numpy().copy() if copy else t.numpy()
    return np.array(x, copy=True) if copy else np.asarray(x)


def full_precision(device: torch.device) -> torch.autocast:
    """A context with autocast off: float32 geometry (a rigid transform, a grey conversion)
    stays float32 even when a caller's autocast region (bf16 network) is still open."""
    return torch.autocast(device_type=device.type, enabled=False)


def median(x: torch.Tensor) -> float:
    """``np.median`` of a non-empty 1-D tensor: for an even size the mean of the two middle
    values in the tensor's dtype (``torch.median`` would return the lower one)."""
    n = x.numel()
    hi = torch.kthvalue(x, n // 2 + 1).values
    if n % 2:
        return float(hi)
    lo = torch.kthvalue(x, n // 2).values
    return float((lo + hi) / 2)


def cuda_tensors(obj: Any) -> list[torch.Tensor]:
    """The CUDA tensors among a dataclass's fields (a prediction's maps)."""
    import dataclasses

    if not dataclasses.is_dataclass(obj):
        return []
    values = (getattr(obj, f.name) for f in dataclasses.fields(obj))
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_cuda]


def mark_ready(obj: Any) -> torch.cuda.Event | None:
    """On the producing thread: an event on the current CUDA stream after ``obj`` 's
    tensors were computed (None when it holds no CUDA tensor)."""
    tensors = cuda_tensors(obj)
    if not tensors:
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(tensors[0].device))
    return event


class StageStream:
    """A pipeline stage's own CUDA stream. Why: the placement thread's small host copies
    (``.cpu()``) synchronise with their stream; on the network's (default) stream they
    would wait for every kernel the next window has queued, and the two stages would run
    one after the other again. The stage's stream waits for the window's ``ready`` event
    instead, and the window's tensors are marked as used on it (``record_stream``) so the
    caching allocator does not hand their memory to the network while they are read."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def run(self, obj: Any, ready: torch.cuda.Event | None):
        """Context: the stage's work on ``obj`` on its own stream (a no-op on the CPU)."""
        import contextlib

        tensors = cuda_tensors(obj)
        if not tensors:
            return contextlib.nullcontext()
        device = tensors[0].device
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        if ready is not None:
            stream.wait_event(ready)
        for t in tensors:
            t.record_stream(stream)
        return torch.cuda.stream(stream)
