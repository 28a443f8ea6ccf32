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
