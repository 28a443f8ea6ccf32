"""Exact GCS over ``torch.distributed`` ranks: the official layer-synchronous schedule with
the windows split across processes (issue 19).

Why: the exact schedule (``Scal3RBackend.exact_grad_sums``) touches every window once per
GCM layer, so its time grows with the sequence; the only coupling between windows is the
per-layer gradient *sum*. Rank ``r`` therefore owns a contiguous range of windows
(:class:`WindowPlan`), computes its windows' gradients at each GCM layer (one window's
activations in memory at a time, recomputing the trunk, as on one process), and the ranks
combine their partial sums with **one collective per GCM layer** (fp32, the dtype of the
official sums). Every rank then holds the same sum, makes the same fast-weight update and
goes on to the next layer. Last, each rank predicts its own windows with the final sums;
rank 0 receives the other ranks' predictions in window order (point-to-point, the owner
sends when rank 0 reaches the window) and its engine places them exactly as on one
process. Ranks other than 0 keep their finished predictions in their private spill
folder until rank 0 asks for them, so neither side holds more than one prediction in RAM.

Two ways to combine (``--dist-reduce``):

- ``ordered`` (default): bitwise equal to one process. The partial sum travels along the
  ranks as a prefix (rank ``r`` receives the sum of all earlier windows, adds its own
  windows' gradients in window order, sends it on) and the last rank broadcasts the
  total: the same fp32 additions in the same order as one process. Per layer each rank
  receives and sends the sum once and takes part in one broadcast of it (about the bytes
  of a ring all-reduce), but the prefix passes the ranks one after the other, and ranks
  other than 0 keep their windows' gradients of the layer in host RAM until it arrives
  (``windows x 3 h d dh x 4`` bytes: 48 MiB a window for scal3r-1b). Bitwise as long as
  every rank computes a window's gradient as the single process would (same device
  kind, library versions and dtype settings); the additions themselves are IEEE fp32
  adds, the same on CPU and GPU.
- ``allreduce``: ``all_reduce(SUM)`` of the ranks' partial sums, one collective of
  ``3 h d dh x 4`` bytes per GCM layer, no extra memory. It reassociates the fp32
  additions (``(g0 + g1) + (g2 + g3)`` instead of ``((g0 + g1) + g2) + g3``), and the
  fast-weight update casts the sum to bfloat16 (official Newton-Schulz), where a last-bit
  difference can become a bf16 step: not bitwise (measured on the tiny network: 0.0 on
  small inputs, trajectories 8e-4 m apart at 280 px, see docs/benchmarks.md).

Faults: every collective runs under the process group's timeout, and a failed collective
is turned into :class:`RankFailure`, which names the rank(s) that stopped answering (a
rank that died, was killed or hangs) using the rendezvous store: each rank that sees a
failure, finishes or fails on its own writes a key there, the ones missing after a
short grace are named.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.frame_store import StoredFrame
from scal3r_ros.mapping.windowing import ChunkScheduler, ChunkSpec, WindowConfig
from scal3r_ros.model.gcm import GCMGrads

__all__ = [
    "REDUCE_MODES",
    "DistributedExactBackend",
    "RankFailure",
    "RankGroup",
    "WindowPlan",
    "exact_window_specs",
    "serve_windows",
]

REDUCE_MODES = ("ordered", "allreduce")
_KEY = "scal3r_ros/"  # prefix of this module's keys in the rendezvous store


class RankFailure(RuntimeError):
    """A collective failed or timed out; the message names the rank(s) behind it."""


# ---------------------------------------------------------------- the split
@dataclass(frozen=True)
class WindowPlan:
    """Contiguous, balanced ownership of ``n_windows`` windows by ``world_size`` ranks: the
    first ``n_windows % world_size`` ranks get one window more. With more ranks than
    windows the last ranks own none and only take part in the collectives (their partial
    sums are zeros, which change no fp32 sum)."""

    n_windows: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.n_windows < 0:
            raise ValueError(f"bad plan: {self.n_windows} windows on {self.world_size} ranks")

    def owned(self, rank: int) -> range:
        base, extra = divmod(self.n_windows, self.world_size)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (1 if rank < extra else 0))

    def owner(self, window: int) -> int:
        for r in range(self.world_size):
            if window in self.owned(r):
                return r
        raise IndexError(f"window {window} of {self.n_windows}")

    @property
    def idle_ranks(self) -> list[int]:
        return [r for r in range(self.world_size) if not self.owned(r)]


def exact_window_specs(n_frames: int, window: WindowConfig) -> list[ChunkSpec]:
    """The windows the engine runs in exact mode for ``n_frames`` frames (the same
    scheduler: every frame pushed, then the end-of-stream flush)."""
    sched = ChunkScheduler(window)
    specs = [s for _ in range(n_frames) if (s := sched.push()) is not None]
    if (last := sched.flush()) is not None:
        specs.append(last)
    return specs


# ---------------------------------------------------------------- the process group
def _flat(g: GCMGrads) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in g])


def _unflat(flat: torch.Tensor, like: GCMGrads) -> GCMGrads:
    out, at = [], 0
    for t in like:
        out.append(flat[at : at + t.numel()].view(t.shape))
        at += t.numel()
    return GCMGrads(*out)


def _cpu(pred: ChunkPrediction) -> ChunkPrediction:
    """A prediction whose tensors (if a backend returns any) live on the host."""
    kw = {}
    for f in fields(pred):
        v = getattr(pred, f.name)
        kw[f.name] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
    return ChunkPrediction(**kw)


class RankGroup:
    """This process's view of the run: rank, world, the store and the collectives.

    ``comm_device``: where message tensors live (``cpu`` for gloo, ``cuda:N`` for NCCL).
    ``grace_s``: how long a rank that saw a failure waits for the others to report before
    naming the silent ones.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        store: Any,
        comm_device: torch.device | str = "cpu",
        reduce: str = "ordered",
        grace_s: float = 10.0,
    ) -> None:
        if reduce not in REDUCE_MODES:
            raise ValueError(f"reduce must be one of {REDUCE_MODES}, got {reduce!r}")
        self.rank, self.world_size = rank, world_size
        self.store = dist.PrefixStore(_KEY, store) if store is not None else None
        self.comm_device = torch.device(comm_device)
        self.reduce = reduce
        self.grace_s = grace_s
        self.bytes_sent = 0  # message bytes this rank sent (GCM sums and predictions)
        self.layer_bytes: dict[int, int] = {}  # GCM layer -> bytes of its sum message
        self.comm_s = 0.0  # seconds in collectives (transfer + waiting for slower ranks)

    # ------------------------------------------------------------ setup / teardown
    @classmethod
    def from_env(
        cls,
        comm_device: torch.device | str = "cpu",
        reduce: str = "ordered",
        timeout_s: float = 1800.0,
        grace_s: float = 10.0,
    ) -> RankGroup:
        """Join the run described by the torchrun variables (RANK, WORLD_SIZE,
        MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on CUDA, every collective under
        ``timeout_s``."""
        device = torch.device(comm_device)
        timeout = timedelta(seconds=timeout_s)
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timeout, **kw
        )
        return cls(rank, world, store, device, reduce, grace_s)

    def close(self, ok: bool = True, error: str = "") -> None:
        """Say how this rank ended (so others do not wait for it) and leave the group."""
        self._mark("finished" if ok else "error", error or "ok")
        if dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------ failure naming
    def _mark(self, what: str, value: str) -> None:
        if self.store is None:
            return
        try:
            self.store.set(f"{what}/{self.rank}", value)
        except Exception:  # the store's host is gone: nothing to tell
            pass

    def _leave_group(self) -> None:
        """Close this rank's connections now (gloo), so that peers blocked on it fail at
        once and report, while the store is still up."""
        if dist.is_initialized() and dist.get_backend() == "gloo":
            try:
                dist.destroy_process_group()
            except Exception:
                pass

    def _diagnose(self, what: str, exc: BaseException) -> str:
        """Name the ranks that did not report after a failure seen during ``what``."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        head = f"rank {self.rank}: {what} failed ({first})"
        self._mark("failed", what)
        self._leave_group()
        if self.store is None:
            return head
        known: dict[int, str] = {self.rank: "failed"}
        errors: dict[int, str] = {}
        lost = False
        # rank 0 hosts the store unless torchrun's agent does: it waits longest, so that
        # the other ranks can finish asking
        grace = self.grace_s * (1.5 if self.rank == 0 else 1.0)
        deadline = time.monotonic() + grace
        while len(known) < self.world_size and time.monotonic() < deadline:
            try:
                for q in range(self.world_size):
                    for state in ("failed", "finished", "error"):
                        if q not in known and self.store.check([f"{state}/{q}"]):
                            known[q] = state
                    if known.get(q) == "error" and q not in errors:
                        errors[q] = self.store.get(f"error/{q}").decode(errors="replace")
            except Exception:  # the store went away with its host
                lost = True
                break
            time.sleep(0.2)
        silent = [q for q in range(self.world_size) if q not in known]
        parts = [head]
        for q, msg in sorted(errors.items()):
            parts.append(f"rank {q} failed: {msg}")
        if silent:
            who = ", ".join(str(q) for q in silent)
            parts.append(
                f"rank{'s' if len(silent) > 1 else ''} {who} stopped answering "
                "(died, was killed or hangs past the timeout)"
            )
        if lost:
            parts.append("the rendezvous store went away (rank 0 or the launcher ended)")
        return "; ".join(parts)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run collectives; any failure becomes a `RankFailure` that names ranks."""
        t0 = time.perf_counter()
        try:
            yield
        except RankFailure:
            raise
        except Exception as exc:  # DistBackendError, DistNetworkError, RuntimeError (gloo)
            raise RankFailure(self._diagnose(what, exc)) from exc
        finally:
            self.comm_s += time.perf_counter() - t0

    # ------------------------------------------------------------ collectives
    def agree_windows(self, n_windows: int) -> None:
        """All ranks must plan the same windows (rank 0 counted the frames it read)."""
        t = torch.tensor([n_windows, -n_windows], dtype=torch.int64, device=self.comm_device)
        with self.guard("agreeing on the window count"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        hi, lo = int(t[0]), -int(t[1])
        if hi != lo:
            raise RankFailure(
                f"ranks disagree on the number of windows ({lo} to {hi}): every rank "
                "must read the same input with the same settings"
            )

    def combiner(self, backend: Any) -> Callable[[int, Iterator[GCMGrads]], GCMGrads]:
        """The ``combine(layer, own_gradients)`` of ``Scal3RBackend.exact_grad_sums``:
        this rank's windows' gradients in window order in, the global sum out."""

        def zeros(layer: int) -> GCMGrads:
            g = backend.model.agg_regator.gcm(layer)
            return GCMGrads(*(torch.zeros_like(w) for w in (g.w0, g.w1, g.w2)))

        def combine(layer: int, grads: Iterator[GCMGrads]) -> GCMGrads:
            if self.reduce == "ordered":
                return self._ordered(layer, grads, zeros)
            total: GCMGrads | None = None
            for g in grads:
                total = g if total is None else total.add_(g)
            if total is None:
                total = zeros(layer)
            flat = _flat(total).to(self.comm_device)
            self.layer_bytes[layer] = flat.numel() * flat.element_size()
            with self.guard(f"all-reduce of the GCM sums at layer {layer}"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            self.bytes_sent += self.layer_bytes[layer]
            return _unflat(flat.to(total.g0.device), total)

        return combine

    def _ordered(
        self, layer: int, grads: Iterator[GCMGrads], zeros: Callable[[int], GCMGrads]
    ) -> GCMGrads:
        """Prefix chain: rank r adds its windows to the sum of all earlier windows, in
        window order (the single-process additions), then the last rank broadcasts."""
        like = zeros(layer)
        nbytes = sum(t.numel() * t.element_size() for t in like)
        self.layer_bytes[layer] = nbytes
        if self.rank == 0:
            total: GCMGrads | None = None
            for g in grads:
                total = g if total is None else total.add_(g)
            prefix = _flat(total if total is not None else like)
        else:
            own = [GCMGrads(*(t.cpu() for t in g)) for g in grads]  # kept until the prefix
            n = sum(t.numel() for t in like)
            prefix = torch.empty(n, dtype=like.g0.dtype, device=self.comm_device)
            src = self.rank - 1
            with self.guard(f"receiving the GCM prefix sum of layer {layer} from rank {src}"):
                dist.recv(prefix, src=self.rank - 1)
            acc = _unflat(prefix.cpu(), like)
            for g in own:
                acc.add_(g)
            prefix = _flat(acc)
        prefix = prefix.to(self.comm_device)
        last = self.world_size - 1
        if self.rank < last:
            dst = self.rank + 1
            with self.guard(f"sending the GCM prefix sum of layer {layer} to rank {dst}"):
                dist.send(prefix, dst=self.rank + 1)
            self.bytes_sent += nbytes
        with self.guard(f"broadcast of the GCM sums of layer {layer}"):
            dist.broadcast(prefix, src=last)
        if self.rank == last and self.world_size > 1:
            self.bytes_sent += nbytes
        return _unflat(prefix.to(like.g0.device), like)

    def send_bytes(self, data: bytes, window: int, dst: int = 0) -> None:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm_device)
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        with self.guard(f"sending window {window} to rank {dst}"):
            dist.send(size, dst=dst)
            dist.send(buf, dst=dst)
        self.bytes_sent += len(data) + 8

    def recv_prediction(self, window: int, src: int) -> ChunkPrediction:
        size = torch.zeros(1, dtype=torch.int64, device=self.comm_device)
        with self.guard(f"receiving window {window} from rank {src}"):
            dist.recv(size, src=src)
            buf = torch.empty(int(size), dtype=torch.uint8, device=self.comm_device)
            dist.recv(buf, src=src)
        # peers of one run are trusted processes of the same job (torchrun rendezvous)
        return pickle.loads(buf.cpu().numpy().tobytes())


# ---------------------------------------------------------------- the two roles
def _own_predictions(
    backend: Any, loaders: Sequence[Callable[[], ChunkInput]], group: RankGroup
) -> Iterator[ChunkPrediction]:
    return backend.infer_exact(loaders, combine=group.combiner(backend))


class DistributedExactBackend:
    """Rank 0's backend: the engine's ``infer_exact`` over all windows, of which this
    rank runs its own and receives the rest from their owners, in window order. Every
    other call goes to the wrapped backend (loop verification runs locally)."""

    def __init__(self, backend: Any, group: RankGroup) -> None:
        if not hasattr(backend, "exact_grad_sums"):
            raise ValueError("distributed exact mode needs the Scal3R network backend")
        self._backend = backend
        self.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def own_windows(self, n_windows: int) -> int:
        """How many of ``n_windows`` this rank runs (its progress bar's share)."""
        return len(WindowPlan(n_windows, self.group.world_size).owned(self.group.rank))

    def infer_exact(self, chunks: Sequence[Callable[[], ChunkInput]]) -> Iterator[ChunkPrediction]:
        g = self.group
        g.agree_windows(len(chunks))
        plan = WindowPlan(len(chunks), g.world_size)
        if not chunks:
            return
        own = plan.owned(g.rank)
        yield from _own_predictions(self._backend, [chunks[i] for i in own], g)
        for w in range(own.stop, plan.n_windows):
            yield g.recv_prediction(w, plan.owner(w))


def serve_windows(
    backend: Any,
    specs: Sequence[ChunkSpec],
    get: Callable[[int], StoredFrame],
    group: RankGroup,
    spill_dir: Path,
) -> int:
    """A rank other than 0: take part in the layer schedule with its own windows, keep its
    predictions on disk, then send them to rank 0 in window order. Returns the number of
    windows it ran."""
    group.agree_windows(len(specs))
    plan = WindowPlan(len(specs), group.world_size)
    own = plan.owned(group.rank)
    loaders = [lambda s=specs[w]: ChunkInput.from_stored(s, get) for w in own]
    if not specs:
        return 0
    spill_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for w, pred in zip(own, _own_predictions(backend, loaders, group), strict=True):
        path = spill_dir / f"window_{w:06d}.pkl"
        with open(path, "wb") as f:
            pickle.dump(_cpu(pred), f, protocol=pickle.HIGHEST_PROTOCOL)
        paths.append(path)
        del pred
    for w, path in zip(own, paths, strict=True):
        group.send_bytes(path.read_bytes(), w, dst=0)
        path.unlink()
    return len(own)
