"""Global Context Synchronisation (GCS): how chunks share GCM fast-weight gradients.

Contract
--------
The only cross-chunk coupling in Scal3R is the GCM fast-weight update. At each GCM layer ``j``
(global blocks 14/17/20/23 in the release) a chunk ``c`` produces raw gradients
``g_j(c) = (g0, g1, g2)`` of its own patch tokens against the *initial learned* fast weights
(:meth:`Aggregator.gcm_gradient`). A gradient *sum* ``G`` turns into fast weights
``W'_j = renorm(W_j + NS5(G))`` (:meth:`Aggregator.gcm_update`), and a chunk adds
``GCM_j(tokens; W'_j)`` to its tokens (:meth:`Aggregator.gcm_apply`). Which ``G`` a chunk uses
is the schedule:

(a) **synchronous** (the official offline release, ``scal3r.pipelines.backend.forward``):
    :func:`run_synchronous` — for every trunk layer ``j`` all chunks run frame+global block ``j``;
    at a GCM layer the gradients of *all* chunks (list order, fp32, in-place accumulation
    ``G = g(0); G += g(1); ...``) are summed, one update is made, and the same ``W'`` is applied to
    every chunk before any chunk continues to layer ``j+1``. Loop-closure chunks are ordinary
    entries of the list. Output of chunk 0 depends on every other chunk.
(b) **causal** (streaming, not in the official code): :func:`run_chunk` with a
    :class:`GCSState`. Each chunk runs all layers once; at GCM layer ``j`` it adds its own
    gradient to the running sum ``G_j(t) = sum_{c <= t} g_j(c)`` kept in the state and uses
    ``W'(t) = renorm(W + NS5(G_j(t)))`` (its own gradient included, as offline). The state has a
    constant size (three ``(h, d, dh)``-sized matrices per GCM layer plus a chunk count: about
    200 MB fp32 for ``scal3r-1b``) and lives on the device of the input. Earlier chunks are not
    recomputed. The state is updated in place as the chunk runs, and ``count`` is incremented
    when the chunk finishes (a chunk that fails midway leaves partial sums: discard the state).
(c) **none**: :func:`run_chunk` with ``state=None`` — each chunk uses only its own gradient. This
    is exactly what the official code computes for a sequence that forms a single chunk (the
    backend with one chunk, and the first call of the official ``Aggregator.forward``, whose
    ``update-then-apply`` TTT order updates from the chunk's own gradient; note that the official
    ``Aggregator.forward`` additionally caches the updated weights in the module and starts the
    *next* call from them — a hidden cross-call state that the release pipeline never uses and
    that is deliberately not reproduced).

Other uses: :meth:`Scal3R.forward_chunk` accepts ``grad_sums={layer: GCMGrads}`` to run a chunk
with fast weights derived from *given* sums (e.g. replaying a chunk with final sums), or any
``sync(layer, own_grads) -> sum`` callable; with ``return_gcm=True`` the output carries each GCM
layer's own gradient and the fast weights used.

Nothing here synchronises with the host: the loops only launch device work. The functions run
under ``torch.no_grad()`` and return ordinary tensors (wrap calls in ``torch.inference_mode()``
for a little less overhead if the outputs are not modified in place later).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .gcm import FastWeights, GCMGrads

__all__ = ["GCSState", "SyncFn", "run_chunk", "run_synchronous"]

SyncFn = Callable[[int, GCMGrads], GCMGrads]


@dataclass
class GCSState:
    """Running per-GCM-layer gradient sums for the causal schedule (b).

    ``sums[j]`` is ``sum_{c < count} g_j(c)`` once a chunk has finished. ``sync`` is the callable
    used by :meth:`Scal3R.forward_chunk`.
    """

    sums: dict[int, GCMGrads] = field(default_factory=dict)
    count: int = 0

    def sync(self, layer: int, grads: GCMGrads) -> GCMGrads:
        """Add a chunk's own gradient to the running sum of ``layer`` and return the new sum."""
        if layer in self.sums:
            self.sums[layer].add_(grads)
        else:
            self.sums[layer] = grads.clone()
        return self.sums[layer]

    __call__ = sync

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for g in self.sums.values() for t in g)

    def to(self, device: torch.device | str) -> GCSState:
        return GCSState(
            {k: GCMGrads(*(t.to(device) for t in g)) for k, g in self.sums.items()}, self.count
        )

    def state_dict(self) -> dict[str, Tensor | int]:
        out: dict[str, Tensor | int] = {"count": self.count}
        for k, g in self.sums.items():
            for name, t in zip(("g0", "g1", "g2"), g, strict=True):
                out[f"{k}.{name}"] = t
        return out

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor | int]) -> GCSState:
        layers = sorted({int(k.split(".")[0]) for k in sd if k != "count"})
        sums = {j: GCMGrads(sd[f"{j}.g0"], sd[f"{j}.g1"], sd[f"{j}.g2"]) for j in layers}
        return cls(sums, int(sd["count"]))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def run_synchronous(
    model,
    chunks: Sequence[Tensor],
    *,
    heads: Sequence[str] | None = None,
    return_gcm: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> list:
    """Schedule (a): the official layer-synchronous forward over ``chunks`` (each ``(1, S_c, 3,
    H, W)`` or ``(S_c, 3, H, W)``, same H, W). Returns one :class:`Scal3ROutput` per chunk.

    With ``return_gcm=True`` each output has ``gcm_grads`` (that chunk's own gradients) and
    ``gcm_fast_weights`` (the shared ``W'``), and ``gcm_grad_sums`` (the shared sums).
    """
    agg = model.agg_regator
    if len(chunks) == 0:
        return []
    device = chunks[0].device
    model.check_autocast(autocast_dtype)
    own: list[dict[int, GCMGrads]] = [{} for _ in chunks]
    sums: dict[int, GCMGrads] = {}
    fast: dict[int, FastWeights] = {}
    with _autocast(device, autocast_dtype):
        states = [agg.prepare(c) for c in chunks]
        for j in range(agg.depth):
            for st in states:
                agg.forward_layer(st, j)
            if j not in agg.gcm_layers:
                continue
            total: GCMGrads | None = None
            for c, st in enumerate(states):
                g = agg.gcm_gradient(st, j)
                if return_gcm:
                    own[c][j] = g
                if total is None:
                    total = g.clone() if return_gcm else g
                else:
                    total.add_(g)
                del g
            weights = agg.gcm_update(j, total)
            for st in states:
                agg.gcm_apply(st, j, weights)
            if return_gcm:
                sums[j], fast[j] = total, weights
            del total, weights
    outputs = []
    for c, st in enumerate(states):
        out = model.decode(st, heads=heads)
        if return_gcm:
            out.gcm_grads = own[c]
            out.gcm_fast_weights = fast
            out.gcm_grad_sums = sums
        outputs.append(out)
        states[c] = None  # free the chunk's features as soon as it is decoded
    return outputs


@torch.no_grad()
def run_chunk(
    model,
    images: Tensor,
    state: GCSState | None = None,
    *,
    heads: Sequence[str] | None = None,
    return_gcm: bool = False,
    autocast_dtype: torch.dtype | None = None,
):
    """Schedules (b)/(c) for one chunk: causal running sums when ``state`` is a
    :class:`GCSState` (updated in place, ``count`` incremented), no synchronisation when
    ``state`` is None. Returns ``(output, state)``."""
    out = model.forward_chunk(
        images,
        sync=state.sync if state is not None else None,
        heads=heads,
        return_gcm=return_gcm,
        autocast_dtype=autocast_dtype,
    )
    if state is not None:
        state.count += 1
    return out, state
