"""Memory of one Scal3R window on a device: the figures issue 14 sets targets for.

``python -m scal3r_ros.model.memcheck --device cuda`` builds ``scal3r-1b`` the way the node does
(only the camera and depth heads; under bf16 autocast the trunk's Linear/Conv weights held in
bf16; built on the device: random weights, or a checkpoint streamed tensor by tensor) and runs
one causal window (60 frames of a 1242x375 camera = 154x518 at the network) after a warm-up
window. It prints, as text and as one JSON line (``MEMCHECK {...}``):

* host RSS growth of the build (``VmHWM``, restarted before it) and the host RSS after it
  (random weights built on the device, or a checkpoint: ``--checkpoint``, or a random one
  written first with ``--random-checkpoint``; the baseline then loads it as the factory did
  before issue 14, on the host first),
* device memory of the weights, and the allocated / reserved peaks of the window,
* with ``--baseline``: the same window with the model as before issue 14 (fp32 weights, all
  three heads) for comparison,
* with ``--gcm-check`` (run from a source checkout): one GCM gradient at the window's real size,
  its allocated peak, and whether it is bitwise equal to the written-out form kept in
  ``test/model/gcm_reference.py``.

``--estimate`` needs no device: it sizes the same window under ``FakeTensorMode``
(:func:`estimate_window`: weights plus the peak of live activations, i.e. the allocated peak).

Nothing here runs in the node; it is the device check's memory probe (``scripts/device_check.sh``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .checkpoint import CheckpointError, load_scal3r
from .gcs import GCSState
from .preprocess import compute_target_size
from .scal3r import Scal3R

__all__ = [
    "MemcheckConfig",
    "PeakLiveBytes",
    "estimate_window",
    "host_rss",
    "main",
    "measure_window",
    "peak_live_bytes",
]

MIB = 2**20
KEPT_HEADS = ("camera", "depth")  # what the engine reads (it aligns with depth)


@dataclass
class MemcheckConfig:
    device: str = "cuda"
    frames: int = 60
    camera_hw: tuple[int, int] = (375, 1242)  # KITTI-sized camera
    model: str = "scal3r-1b"
    checkpoint: str | None = None  # None: random weights (memory does not depend on values)
    random_checkpoint: str | None = None  # write a random checkpoint here (once), load it
    bf16: bool = True
    baseline: bool = False  # also the pre-issue-14 model (fp32 weights, all heads)
    gcm_check: bool = False  # GCM gradient peak + bitwise check against the test reference
    seed: int = 0


def _storage_key(t: Tensor) -> int:
    """The identity of a tensor's storage (its StorageImpl), also for meta and fake tensors."""
    return t.untyped_storage()._cdata


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the mode and still alive (CPU or GPU).

    Why: torch has no allocator statistics on the CPU and tracemalloc does not see its buffers.
    Under ``FakeTensorMode`` (entered first) it sizes a computation without running it.
    Every op's outputs pass through here; a storage first seen as an output (not one of the op's
    inputs or a storage already counted) is a new allocation, counted until the last tensor
    object on it is garbage collected. In-place results and views add no bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owned: dict[int, list[int]] = {}  # storage key -> [tensor objects, nbytes]
        self._seen: set[int] = set()  # ids of tensor objects already counted

    def _release(self, ptr: int) -> None:
        entry = self._owned.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._owned[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            _storage_key(t) for t in tree_leaves((args, kwargs or {})) if isinstance(t, Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, Tensor) or id(t) in self._seen:
                continue
            storage = t.untyped_storage()
            ptr = _storage_key(t)
            if ptr in self._owned:
                self._owned[ptr][0] += 1
            elif ptr in inputs or storage.nbytes() == 0:
                continue  # a view / in-place result of a tensor made outside the mode
            else:
                self._owned[ptr] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._seen.add(id(t))
            weakref.finalize(t, self._forget, id(t), ptr)
        return out

    def _forget(self, ident: int, ptr: int) -> None:
        self._seen.discard(ident)
        self._release(ptr)


def peak_live_bytes(fn, *args, **kwargs) -> tuple[int, object]:
    """``(peak bytes allocated and alive during fn(*args), result)``; see PeakLiveBytes."""
    with PeakLiveBytes() as mode:
        result = fn(*args, **kwargs)
    return mode.peak, result


def host_rss() -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of this process in bytes (0, 0 where /proc is missing)."""
    got = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in got:
                got[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return got["VmRSS:"], got["VmHWM:"]


def reset_peak_rss() -> bool:
    """Restart this process's ``VmHWM`` at its current RSS (Linux ``clear_refs``), so a later
    peak belongs to what ran after; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def write_random_checkpoint(path: str | Path, cfg: MemcheckConfig) -> Path:
    """A random-weight checkpoint of ``cfg.model`` in the release format (plain fp32 state
    dict), built on ``cfg.device`` and saved from there tensor by tensor, so the streamed
    loader can be measured without the real file (memory does not depend on the values)."""
    path = Path(path)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    with torch.device(dev):
        model = Scal3R(cfg.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    del model
    _reset_peak(dev)
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _allocated(dev: torch.device) -> dict[str, float]:
    if dev.type != "cuda":
        return {}
    return {
        "allocated_mib": torch.cuda.memory_allocated(dev) / MIB,
        "peak_allocated_mib": torch.cuda.max_memory_allocated(dev) / MIB,
        "peak_reserved_mib": torch.cuda.max_memory_reserved(dev) / MIB,
    }


def build_model(cfg: MemcheckConfig, slim: bool) -> tuple[Scal3R, dict[str, float]]:
    """The model as the node builds it (``slim``) or as before issue 14; with the host RSS
    growth of the build (peak and after) and its time."""
    dev = torch.device(cfg.device)
    heads = KEPT_HEADS if slim else None
    low = torch.bfloat16 if (slim and cfg.bf16) else None
    gc.collect()
    reset_peak_rss()
    rss0, _ = host_rss()
    t0 = time.perf_counter()
    if cfg.checkpoint and slim:  # streamed onto the device (this issue)
        model, _ = load_scal3r(
            cfg.checkpoint, cfg.model, device=dev, heads=heads, autocast_dtype=low
        )
    elif cfg.checkpoint:  # as the factory did before: the whole fp32 model on the host first
        model, _ = load_scal3r(cfg.checkpoint, cfg.model, device="cpu")
        model = model.to(dev)
    else:
        torch.manual_seed(cfg.seed)
        with torch.device(dev):
            model = Scal3R(cfg.model)
        if heads is not None:
            model.drop_heads(heads)
        if low is not None:
            model.hold_autocast_weights(low)
        model.eval()
    _sync(dev)
    rss1, hwm = host_rss()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return model, {
        "build_s": time.perf_counter() - t0,
        "host_rss_growth_peak_mib": (hwm - rss0) / MIB,
        "host_rss_after_mib": rss1 / MIB,
        "weights_mib": weights / MIB,
    }


def run_window(model: Scal3R, cfg: MemcheckConfig, heads: tuple[str, ...]) -> dict[str, float]:
    """One causal window after a warm-up one; the device peaks of the measured window."""
    dev = torch.device(cfg.device)
    h, w = compute_target_size(*cfg.camera_hw, 518, 14)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    images = torch.rand(1, cfg.frames, 3, h, w, generator=g, device=dev)
    state = GCSState()
    amp = torch.bfloat16 if cfg.bf16 else None
    with torch.inference_mode():
        model.forward_chunk(images, sync=state.sync, heads=heads, autocast_dtype=amp)
        _reset_peak(dev)
        t0 = time.perf_counter()
        out = model.forward_chunk(images, sync=state.sync, heads=heads, autocast_dtype=amp)
        _sync(dev)
        seconds = time.perf_counter() - t0
    del out
    return {"network_input_hw": [h, w], "window_s": seconds, **_allocated(dev)}


def gcm_gradient_check(model: Scal3R, cfg: MemcheckConfig) -> dict[str, Any]:
    """One GCM gradient at the window's real size: allocated peak of the current code and of the
    written-out reference (from ``test/model`` of a source checkout), and bitwise equality."""
    dev = torch.device(cfg.device)
    agg = model.agg_regator
    layer = agg.gcm(agg.gcm_layers[0])
    h, w = compute_target_size(*cfg.camera_hw, 518, 14)
    gh, gw = h // agg.patch_size, w // agg.patch_size
    g = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    x = torch.randn(1, cfg.frames * gh * gw, layer.dim, generator=g, device=dev)
    pos = agg.position_getter(cfg.frames, gh, gw, device=dev).reshape(1, -1, 2) + 1
    tables = layer.rope_tables(pos, max(gh, gw) + 1)
    out: dict[str, Any] = {"tokens": x.shape[1]}
    with torch.inference_mode():
        _reset_peak(dev)
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        new = layer.gradient(x, tables)
        _sync(dev)
        if dev.type == "cuda":
            out["new_peak_mib"] = (torch.cuda.max_memory_allocated(dev) - base) / MIB
        here = Path(__file__).resolve().parents[2] / "test" / "model"
        if not (here / "gcm_reference.py").is_file():
            out["reference"] = "not found (run from a source checkout)"
            return out
        sys.path.insert(0, str(here))
        try:
            from gcm_reference import reference_apply, reference_gradient
        finally:
            sys.path.remove(str(here))
        _reset_peak(dev)
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        ref = reference_gradient(layer, x, tables)
        _sync(dev)
        if dev.type == "cuda":
            out["reference_peak_mib"] = (torch.cuda.max_memory_allocated(dev) - base) / MIB
        out["bitwise_equal"] = all(torch.equal(a, b) for a, b in zip(new, ref, strict=True))
        del ref
        fast = layer.update(new)
        out["apply_bitwise_equal"] = torch.equal(
            layer.apply(x, fast, tables), reference_apply(layer, x, fast, tables)
        )
    return out


def estimate_window(cfg: MemcheckConfig, slim: bool = True) -> dict[str, float]:
    """Device-free estimate of one window's device memory, in MiB: the model (``slim``: as the
    node builds it; otherwise fp32 weights and all heads, as before issue 14) is built on the
    meta device and one window runs under ``FakeTensorMode`` (shapes and dtypes only, nothing
    computed, seconds on a CPU), CPU autocast standing in for the GPU's, while
    :class:`PeakLiveBytes` counts what is allocated and alive.

    Not modelled: the caching allocator's rounding and fragmentation (``reserved``), kernel
    workspaces, and where CUDA autocast's policy differs from the CPU's (layer norms on bf16
    input; in this trunk their inputs are the fp32 residual stream). Checked against the H200
    figures of issue 14 (60 frames, 1242x375, bf16): the pre-issue-14 code (written-out GCM
    gradient, fp32 weights, all heads) estimates 10,579 MiB (measured 10,575), with the
    early-free gradient 8,210 (quick GPU test 8,352), and with bf16-held weights 6,479 (6,659).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    h, w = compute_target_size(*cfg.camera_hw, 518, 14)
    heads = KEPT_HEADS if slim else ("camera", "depth", "points")
    with torch.device("meta"):
        model = Scal3R(cfg.model).eval()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        model.agg_regator.reset_buffers("cpu")
        if slim:
            model.drop_heads(heads)
            if cfg.bf16:
                model.hold_autocast_weights(torch.bfloat16)
        weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        images = torch.empty(1, cfg.frames, 3, h, w)
        amp = torch.bfloat16 if cfg.bf16 else None
        with torch.inference_mode(), PeakLiveBytes() as peak:
            model.forward_chunk(images, sync=GCSState().sync, heads=heads, autocast_dtype=amp)
    return {
        "weights_mib": weights / MIB,
        "activations_peak_mib": peak.peak / MIB,
        "peak_allocated_mib": (weights + peak.peak) / MIB,
    }


def measure_window(cfg: MemcheckConfig) -> dict[str, Any]:
    """All figures of the memory probe (see the module docstring)."""
    dev = torch.device(cfg.device)
    result: dict[str, Any] = {"config": asdict(cfg)}
    if dev.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(dev)
    if cfg.random_checkpoint:
        if not Path(cfg.random_checkpoint).is_file():
            write_random_checkpoint(cfg.random_checkpoint, cfg)
        cfg = replace(cfg, checkpoint=cfg.random_checkpoint)
    model, build = build_model(cfg, slim=True)
    result["slim"] = {"build": build, "window": run_window(model, cfg, KEPT_HEADS)}
    if cfg.gcm_check:
        result["gcm_gradient"] = gcm_gradient_check(model, cfg)
    del model
    _reset_peak(dev)
    if cfg.baseline:
        model, build = build_model(cfg, slim=False)
        result["before_issue14"] = {
            "build": build,
            "window": run_window(model, cfg, ("camera", "depth", "points")),
        }
        del model
        _reset_peak(dev)
    return result


def _print(result: dict[str, Any]) -> None:
    for name in ("slim", "before_issue14"):
        if name not in result:
            continue
        b, w = result[name]["build"], result[name]["window"]
        print(
            f"{name}: weights {b['weights_mib']:.0f} MiB, build {b['build_s']:.1f} s, host RSS "
            f"growth peak {b['host_rss_growth_peak_mib']:.0f} MiB (after: "
            f"{b['host_rss_after_mib']:.0f} MiB); window {w['window_s'] * 1e3:.0f} ms, "
            f"peak allocated {w.get('peak_allocated_mib', float('nan')):.0f} MiB, "
            f"peak reserved {w.get('peak_reserved_mib', float('nan')):.0f} MiB"
        )
    if "gcm_gradient" in result:
        print(f"gcm_gradient: {result['gcm_gradient']}")
    print("MEMCHECK " + json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scal3r_ros.model.memcheck", description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--camera", default="1242x375", help="camera WIDTHxHEIGHT")
    p.add_argument("--model", default="scal3r-1b")
    p.add_argument("--checkpoint", default=None)
    p.add_argument(
        "--random-checkpoint",
        default=None,
        metavar="PATH",
        help="write a random-weight checkpoint to PATH (unless it exists) and load it the "
        "node's way (streamed) and, with --baseline, the old way (host first)",
    )
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--baseline", action="store_true", help="also the pre-issue-14 model")
    p.add_argument("--gcm-check", action="store_true", help="GCM gradient peak + bitwise check")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="no device needed: size one window under FakeTensorMode (allocated peak only)",
    )
    a = p.parse_args(argv)
    try:
        width, height = (int(v) for v in a.camera.lower().split("x"))
        if a.frames < 2 or width < 14 or height < 14:
            raise ValueError
    except ValueError:
        p.error(
            f"--camera must be WIDTHxHEIGHT (at least 14x14) and --frames >= 2, got "
            f"{a.camera!r} and {a.frames}"
        )
    if a.estimate:
        cfg = MemcheckConfig(
            device="cpu", frames=a.frames, camera_hw=(height, width), model=a.model, bf16=not a.fp32
        )
        try:
            result = {"config": asdict(cfg), "estimate": estimate_window(cfg, slim=True)}
            if a.baseline:
                result["estimate_before_issue14_weights"] = estimate_window(cfg, slim=False)
        except KeyError as e:
            print(f"memcheck: {e}", file=sys.stderr)
            return 2
        for k, v in result.items():
            if k != "config":
                print(f"{k}: " + ", ".join(f"{n} {x:.0f}" for n, x in v.items()))
        print("MEMCHECK " + json.dumps(result))
        return 0
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("memcheck: CUDA is not available here", file=sys.stderr)
        return 2
    cfg = MemcheckConfig(
        device=a.device,
        frames=a.frames,
        camera_hw=(height, width),
        model=a.model,
        checkpoint=a.checkpoint,
        random_checkpoint=a.random_checkpoint,
        bf16=not a.fp32,
        baseline=a.baseline,
        gcm_check=a.gcm_check,
    )
    try:
        _print(measure_window(cfg))
    except (CheckpointError, KeyError) as e:
        print(f"memcheck: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
