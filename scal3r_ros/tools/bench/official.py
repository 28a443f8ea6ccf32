"""The official forward in the same process (``scal3r_bench --official PATH``).

``scal3r.pipelines.backend.forward`` (release preprocessing, layer-synchronous GCS over
all windows, all heads, fp32) runs on the windows our engine forms from the same frames,
so the ratio to our pipeline is measured in one run, not quoted. It needs the official
dependencies (einops, rich, pypose, ...); without ``--official`` nothing of it is imported.
"""

from __future__ import annotations

import gc
import importlib
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scal3r_ros.mapping.events import Frame
from scal3r_ros.mapping.windowing import ChunkScheduler, WindowConfig
from scal3r_ros.model.preprocess import compute_target_size
from scal3r_ros.tools.bench.memory import (
    gpu_peaks,
    peak_rss_bytes,
    reset_gpu_peaks,
    rss_bytes,
    sync,
)
from scal3r_ros.tools.bench.runs import BenchConfig, RunResult


class _StandIn(types.ModuleType):
    """Stands in for a module that the official package imports at module level but its
    forward never uses: every attribute is a function that raises, so no use goes unseen."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise ImportError(
                f"{self.__name__}.{attr}: {self.__name__} is not installed "
                "(scal3r_bench registered a stand-in for the official imports)"
            )

        return unavailable


# the official package imports OpenCV at module level for image I/O (not in the forward);
# its wheel is too large to carry to a GPU machine that lacks it
OFFICIAL_STAND_INS = ("cv2",)


def run_official(checkout: Path, cfg: BenchConfig, frames: list[Frame], device: str) -> RunResult:
    """The official forward (release preprocessing, layer-synchronous GCS, all heads, fp32)
    over the same windows our engine forms from the same frames."""
    sys.path.insert(0, str(checkout.resolve()))
    stand_ins = []
    for name in OFFICIAL_STAND_INS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _StandIn(name)
            stand_ins.append(name)
    import yaml
    from scal3r.models.scal3r import Scal3R as OfficialScal3R
    from scal3r.pipelines import backend as official_backend
    from scal3r.utils.base_utils import DotDict as dotdict

    from scal3r_ros.model.preprocess import preprocess_image_reference

    if cfg.model != "scal3r-1b":
        raise ValueError("--official is supported for --model scal3r-1b only")
    sampler = yaml.safe_load((checkout / "configs/models/scal3r.yaml").read_text())
    sampler = sampler["model_cfg"]["sampler_cfg"]
    sampler["use_checkpoint"] = False  # activation checkpointing is a training option
    torch.manual_seed(cfg.seed)
    model = OfficialScal3R(dotdict(sampler)).to(device).eval()
    reset_gpu_peaks(device)

    sched = ChunkScheduler(WindowConfig(cfg.chunk, cfg.overlap))
    specs = [s for s in (sched.push() for _ in frames) if s is not None]
    last = sched.flush()
    specs += [last] if last is not None else []

    t0 = time.perf_counter()
    h, w = frames[0].image.shape[:2]
    target = compute_target_size(h, w, 518, 14)
    imgs = np.stack([preprocess_image_reference(f.image, target, 14)[0] for f in frames])
    t_prep = time.perf_counter() - t0
    th, tw = target
    batches = []
    for spec in specs:
        order = [spec.frame_ids[k] for k in spec.network_order]
        rgb = torch.from_numpy(imgs[order]).float()[None]  # (1, S, H, W, 3)
        meta = dotdict(
            rgb=rgb.reshape(1, len(order), th * tw, 3).contiguous(),
            H=torch.tensor([th]),
            W=torch.tensor([tw]),
        )
        batches.append(dotdict(meta=meta))
    args = dotdict(device=device, streaming_state=0, offload_batches=0, offload_outputs=0)
    with torch.no_grad():  # warm-up: one full window, as our columns get
        official_backend.forward(model, batches[:1], args)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        official_backend.forward(model, batches, args)
    sync(device)
    t_net = time.perf_counter() - t0
    n = len(frames)
    peaks = gpu_peaks(device)
    del model
    gc.collect()
    return RunResult(
        name="official",
        description="official scal3r.pipelines.backend.forward: release preprocessing, "
        "layer-synchronous GCS over all windows (offline), all heads, fp32",
        worker="offline",
        frames=n,
        windows=len(specs),
        steady_windows=len(specs),
        steady_new_frames=n,
        wall_s=t_prep + t_net,
        fps=n / (t_prep + t_net),  # every frame once, all windows (offline: no first window)
        fps_wall=n / (t_prep + t_net),
        steady_window_ms=1e3 * (t_prep + t_net) / len(specs),
        window_ms=[],
        stages_ms={"preprocess": 1e3 * t_prep / len(specs), "infer": 1e3 * t_net / len(specs)},
        stages_ms_window0={},
        outside_ms=None,
        preprocess_ms_per_frame=1e3 * t_prep / n,
        network_ms_per_window=1e3 * t_net / len(specs),
        network_fps=n / t_net,
        overlap_ms={},
        loops={},
        latency_s={},
        peak_gpu_bytes=peaks.allocated_bytes,
        peak_gpu_reserved_bytes=peaks.reserved_bytes,
        host_peak_rss_bytes=peak_rss_bytes(),
        rss_at_windows_max_bytes=rss_bytes(),
        map_points=0,
        gcs_state_bytes=0.0,
        extra={
            "note": "network and preprocessing only (no alignment/map/messages); one "
            "full window ran untimed first (warm-up)",
            "stand_ins": stand_ins,
        },
    )
