"""Milliseconds per window of each geometry stage after the network, at the real size.

``python -m scal3r_ros.tools.bench.geometry`` builds two consecutive 60/30 windows of a
KITTI-like synthetic drive at the network's depth resolution (518x154; 30 overlap frames
= ~2.4 M points for the alignment) and times, in the same run, the numpy implementation
the package used before issue 14 (``test/mapping/reference_geometry.py``, found when run
from a source checkout) against the torch one on the CPU, and on CUDA when available:

- unproject: depth -> points, validity (``WindowPoints.from_prediction``)
- align: overlap gathering + robust Sim(3) (``PreviousWindow.align``'s two calls)
- map: confidence filter + voxel step of the 45 frames a window owns (``MapStore.insert``)
- loop: the loop store's subsampling to the host + thumbnail descriptors of the window

The oracle stands in for the network, so no model or GPU is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from scal3r_ros.mapping.alignment import align_points, gather_overlap, unproject_depth
from scal3r_ros.mapping.loop_closure import thumbnail_descriptors
from scal3r_ros.mapping.map_store import MapStore
from scal3r_ros.mapping.placement import WindowPoints
from scal3r_ros.mapping.sim.windows import kitti_like_windows
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import as_tensor, to_numpy

STAGES = ("unproject", "align", "map", "loop")


def load_reference() -> ModuleType | None:
    """The numpy reference from the source checkout's tests (None when not installed)."""
    for parent in Path(__file__).resolve().parents:
        path = parent / "test" / "mapping" / "reference_geometry.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("reference_geometry", path)
            if spec is None or spec.loader is None:
                return None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def _timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall milliseconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _reference_stages(ref: ModuleType, data: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """The pre-issue-14 numpy path of each stage (as placement/engine/loop code ran it)."""
    pa, pb, s = data["pred_a"], data["pred_b"], data["stride"]
    n_ov, own = data["overlap"], data["owned"]

    def unproject() -> Any:
        pts = ref.unproject_depth(pb.depth, pb.intrinsics, pb.c2w)
        valid = np.isfinite(pb.depth) & (pb.depth > 0) & np.isfinite(pts).all(-1)
        return pts, valid

    pts_a, valid_a = ref.unproject_depth(pa.depth, pa.intrinsics, pa.c2w), data["valid_a_np"]
    pts_b, valid_b = unproject()
    tail = slice(len(pa.depth) - n_ov, None)

    def align() -> Any:
        a, b, ca, cb = ref.gather_overlap(
            pts_a[tail],
            pts_b[:n_ov],
            pa.depth_conf[tail],
            pb.depth_conf[:n_ov],
            valid_a[tail],
            valid_b[:n_ov],
        )
        return ref.align_points(b, a, cb, ca)

    def insert() -> Any:
        store = ref.ReferenceMapStore()
        conf = np.where(valid_b[own], pb.depth_conf[own], np.nan)
        return store.insert(
            1, data["pose"], pts_b[own], data["rgb"], conf, data["fids"][own], pb.depth[own]
        )

    def loop() -> Any:
        sub = [x[:, ::s, ::s].copy() for x in (pts_b, pb.depth_conf, valid_b)]
        return sub, ref.thumbnail_descriptors(data["images"])

    return {"unproject": unproject, "align": align, "map": insert, "loop": loop}


def _torch_stages(data: dict[str, Any], device: str) -> dict[str, Callable[[], Any]]:
    """The package's torch path of each stage, the prediction's maps on ``device``."""

    def on(pred: Any) -> Any:
        return replace(
            pred,
            c2w=as_tensor(pred.c2w, device),
            intrinsics=as_tensor(pred.intrinsics, device),
            depth=as_tensor(pred.depth, device),
            depth_conf=as_tensor(pred.depth_conf, device),
            points=None,
            points_conf=None,
        )

    spec_a, spec_b = data["spec_a"], data["spec_b"]
    net_a = on(data["pred_a"].take(spec_a.network_order))
    net_b = on(data["pred_b"].take(spec_b.network_order))
    s, n_ov, own = data["stride"], data["overlap"], data["owned"]
    images = as_tensor(data["images"], device)
    wa = WindowPoints.from_prediction(spec_a, net_a, False)
    wb = WindowPoints.from_prediction(spec_b, net_b, False)
    tail = slice(len(wa.frame_ids) - n_ov, None)

    def unproject() -> Any:
        return WindowPoints.from_prediction(spec_b, net_b, False)

    def align() -> Any:
        a, b, ca, cb = gather_overlap(
            wa.points[tail],
            wb.points[:n_ov],
            wa.conf[tail],
            wb.conf[:n_ov],
            wa.valid[tail],
            wb.valid[:n_ov],
        )
        return align_points(b, a, cb, ca)

    def insert() -> Any:
        store = MapStore()
        conf = torch.where(wb.valid[own], wb.conf[own], torch.nan)
        fids, depth = data["fids"][own], wb.pred.depth[own]
        return store.insert(1, data["pose"], wb.points[own], data["rgb"], conf, fids, depth)

    def loop() -> Any:
        maps = (wb.points, wb.conf, wb.valid)
        sub = [to_numpy(x[:, ::s, ::s], copy=True) for x in maps]
        return sub, thumbnail_descriptors(images)

    return {"unproject": unproject, "align": align, "map": insert, "loop": loop}


def _data(chunk: int, overlap: int, hw: tuple[int, int], seed: int) -> dict[str, Any]:
    win = kitti_like_windows(2, chunk, overlap, hw, seed)
    spec_a, spec_b = win.specs
    back_a = np.argsort(np.asarray(spec_a.network_order))
    back_b = np.argsort(np.asarray(spec_b.network_order))
    pred_a, pred_b = win.preds[0].take(back_a), win.preds[1].take(back_b)  # time order
    pts_a = to_numpy(unproject_depth(pred_a.depth, pred_a.intrinsics, pred_a.c2w))
    valid_a = np.isfinite(pred_a.depth) & (pred_a.depth > 0) & np.isfinite(pts_a).all(-1)
    return {
        "spec_a": spec_a,
        "spec_b": spec_b,
        "pred_a": pred_a,
        "pred_b": pred_b,
        "valid_a_np": valid_a,
        "images": win.inputs[1].images[back_b],
        "rgb": win.inputs[1].images[back_b][overlap // 2 :],
        "owned": list(range(overlap // 2, chunk)),  # the official hand-over's frames
        "fids": np.asarray(spec_b.frame_ids, np.int64),
        "overlap": overlap,
        "stride": 2,  # EngineConfig.loop_geometry_stride
        "pose": Sim3(1.3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk-size", type=int, default=60)
    p.add_argument("--overlap", type=int, default=30)
    p.add_argument("--width", type=int, default=518, help="depth map width (network)")
    p.add_argument("--height", type=int, default=154, help="depth map height (network)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per stage (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA column")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    a = p.parse_args(argv)
    if (
        not (2 <= a.overlap < a.chunk_size)
        or a.repeats < 1
        or min(a.width, a.height) < 8
        or (a.threads is not None and a.threads < 1)
    ):
        need = "2 <= overlap < chunk-size, repeats >= 1, size >= 8, threads >= 1"
        print(f"scal3r_bench.geometry: need {need}", file=sys.stderr)
        return 2
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    data = _data(a.chunk_size, a.overlap, (a.height, a.width), a.seed)
    n_align = a.overlap * a.width * a.height
    columns: dict[str, dict[str, float]] = {}
    ref = load_reference()
    if ref is not None:
        stages = _reference_stages(ref, data)
        columns["numpy"] = {k: _timed(stages[k], a.repeats, lambda: None) for k in STAGES}
    stages = _torch_stages(data, "cpu")
    columns["torch cpu"] = {k: _timed(stages[k], a.repeats, lambda: None) for k in STAGES}
    if torch.cuda.is_available() and not a.no_cuda:
        stages = _torch_stages(data, "cuda")
        columns["torch cuda"] = {
            k: _timed(stages[k], a.repeats, torch.cuda.synchronize) for k in STAGES
        }
    print(
        f"geometry per {a.chunk_size}/{a.overlap} window at {a.width}x{a.height} "
        f"({n_align / 1e6:.2f} M overlap pixels), median of {a.repeats}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "torch cuda" in columns else "")
    )
    names = list(columns)
    head = f"| stage | {' | '.join(f'{n} ms' for n in names)} |"
    if "numpy" in columns:
        head += " numpy / torch cpu |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    rows = [*STAGES, "total"]
    for k in rows:
        vals = {
            n: (sum(columns[n][s] for s in STAGES) if k == "total" else columns[n][k])
            for n in names
        }
        line = f"| {k} | " + " | ".join(f"{vals[n]:,.1f}" for n in names) + " |"
        if "numpy" in columns:
            line += f" {vals['numpy'] / vals['torch cpu']:.2f}x |"
        print(line)
    if ref is None:
        print("(numpy reference not found: run from a source checkout for the comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
