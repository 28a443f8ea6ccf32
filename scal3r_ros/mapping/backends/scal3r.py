"""``Backend`` over the Scal3R network (``scal3r_ros.model``), with the three GCS modes.

- ``causal``: the engine keeps a ``model.gcs.GCSState`` (running per-GCM-layer gradient
  sums, constant size); each chunk adds its own gradient and uses the sum so far.
- ``exact``: the official layer-synchronous schedule over a recorded sequence, with
  bounded host memory by *recomputation*: for each GCM layer in turn, every chunk is
  re-run from its images up to that layer (earlier GCM layers use the already final
  sums) and its gradient is added to the layer's sum; a last pass runs every chunk
  through all layers and the heads with the final sums. Only one chunk's activations
  exist at a time; the cost is ``n_gcm_layers + 1`` partial forward passes per chunk.
  The sums are accumulated in chunk order, in place, like ``gcs.run_synchronous``, so
  the results are the official ones (tested against ``run_synchronous``).
- ``off``: every chunk uses only its own gradient.

Images are preprocessed once per frame on arrival (official resize/crop, target size
from the first frame) and kept as uint8 at network resolution: lossless, because the
official path quantises to 8 bits anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.loop_closure import thumbnail_descriptors
from scal3r_ros.mapping.tensors import as_tensor
from scal3r_ros.model.config import Scal3RConfig
from scal3r_ros.model.gcm import GCMGrads
from scal3r_ros.model.gcs import GCSState
from scal3r_ros.model.preprocess import (
    PreprocessConfig,
    compute_target_size,
    plan_resize_crop,
    preprocess_batch,
    preprocess_image_reference,
)
from scal3r_ros.model.scal3r import Scal3R, Scal3ROutput

GradCombine = Callable[[int, Iterator[GCMGrads]], GCMGrads]


def sum_in_order(layer: int, grads: Iterator[GCMGrads]) -> GCMGrads:
    """``G = g(0); G += g(1); ...`` in place (the official accumulation)."""
    total: GCMGrads | None = None
    for g in grads:
        total = g if total is None else total.add_(g)
    if total is None:
        raise ValueError(f"no chunk gradients for GCM layer {layer}")
    return total


class _PendingSums:
    """A `GCSState` sync that adds a window's gradients to copies and commits at the end."""

    def __init__(self, state: GCSState) -> None:
        self.state = state
        self.new: dict[int, GCMGrads] = {}

    def __call__(self, layer: int, grads: GCMGrads) -> GCMGrads:
        old = self.state.sums.get(layer)
        self.new[layer] = grads.clone() if old is None else old + grads
        return self.new[layer]

    def commit(self) -> None:
        self.state.sums.update(self.new)
        self.state.count += 1


@dataclass
class Scal3RBackendConfig:
    max_size: int = 518  # official proc_max_size
    align: int = 14  # official proc_align_size
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    autocast_bf16: bool = False  # official default: fp32 (AMP off)
    point_head: bool = False  # also run the point head (engine use_point_head)
    descriptors: bool = True  # thumbnail descriptors for loop retrieval
    # "reference": the official CPU path (PIL, frame by frame); "batch": preprocess_batch on
    # the backend's device (bit-exact on CUDA, within 1/255 with the CPU kernels)
    preprocess: str = "reference"
    # drop the heads this backend never reads and, with autocast_bf16, hold the trunk weights
    # autocast casts anyway in bf16 (same results, less memory); changes the model in place,
    # so a model shared with a backend of other settings must not be slimmed
    slim_model: bool = False

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads this backend reads."""
        return ("camera", "depth", "points") if self.point_head else ("camera", "depth")


class Scal3RBackend:
    """Wraps a constructed (and, in production, checkpoint-loaded) ``Scal3R`` model."""

    def __init__(self, model: Scal3R, config: Scal3RBackendConfig | None = None) -> None:
        self.config = c = config or Scal3RBackendConfig()
        if c.slim_model:  # before the move: only what is kept goes to the device
            model.drop_heads(c.heads)
            if c.autocast_bf16:
                model.hold_autocast_weights(torch.bfloat16)
        model.check_autocast(self._autocast())
        missing = set(c.heads) - set(model.available_heads())
        if missing:
            raise ValueError(f"the model has no {sorted(missing)} head (dropped); rebuild it")
        self.model = model.to(c.device).eval()
        self.target_hw: tuple[int, int] | None = None
        # Frames are prepared on a stream of their own: the host copy that ends `prepare`
        # then waits for the frame's few kernels, not for the window the network is running
        # on the default stream, so frames arriving during a window are prepared meanwhile.
        device = torch.device(c.device)
        self._prep_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @staticmethod
    def from_config(
        model_cfg: str | Scal3RConfig, config: Scal3RBackendConfig | None = None, seed: int = 0
    ) -> Scal3RBackend:
        """Random-weight network (tests, benchmarks); load a checkpoint for real use. Built
        directly on the backend's device (no host copy of a large network; on a GPU the random
        values differ from a CPU build with the same seed)."""
        config = config or Scal3RBackendConfig()
        torch.manual_seed(seed)
        with torch.device(config.device):
            model = Scal3R(model_cfg)
        return Scal3RBackend(model, config)

    # ------------------------------------------------------------ protocol
    def prepare(
        self, frame_image: np.ndarray, intrinsics: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        c = self.config
        if self.target_hw is None:
            h, w = frame_image.shape[:2]
            self.target_hw = compute_target_size(h, w, c.max_size, c.align)
        if c.preprocess == "batch":
            stream = self._prep_stream
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                x, plan = preprocess_batch(
                    frame_image,
                    self.target_hw,
                    PreprocessConfig(c.max_size, c.align),
                    device=c.device,
                )
                img = (x[0].permute(1, 2, 0) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
                img = img.cpu().numpy()  # waits for this stream only
        else:
            rgb, plan = preprocess_image_reference(frame_image, self.target_hw, c.align)
            img = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)  # exact 8-bit values
        K = None if intrinsics is None else np.asarray(plan.intrinsics_to_network(intrinsics))
        return img, K

    def new_gcs_state(self, mode: str) -> Any:
        return GCSState() if mode == "causal" else None

    def gcs_state_nbytes(self, gcs_state: Any) -> int:
        return int(gcs_state.nbytes()) if isinstance(gcs_state, GCSState) else 0

    def reset_resolution(self) -> None:
        self.target_hw = None

    @torch.inference_mode()
    def infer(self, chunk: ChunkInput, gcs_state: Any) -> ChunkPrediction:
        """One window. The causal state only changes when the whole window succeeded, so
        a failure (CUDA out of memory, ...) can be retried without double-counting."""
        pending = _PendingSums(gcs_state) if gcs_state is not None else None
        try:
            out = self.model.forward_chunk(
                self._tensor(chunk.images),
                sync=pending,
                heads=self._heads(),
                autocast_dtype=self._autocast(),
            )
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the retry a defragmented device
            raise
        if pending is not None:
            pending.commit()
        return self._prediction(out, chunk)

    @torch.inference_mode()
    def infer_exact(
        self, chunks: Sequence[Callable[[], ChunkInput]], combine: GradCombine | None = None
    ) -> Iterator[ChunkPrediction]:
        sums = self.exact_grad_sums(chunks, combine)
        for load in chunks:
            chunk = load()
            out = self.model.forward_chunk(
                self._tensor(chunk.images),
                grad_sums=sums,
                heads=self._heads(),
                autocast_dtype=self._autocast(),
            )
            yield self._prediction(out, chunk)

    @torch.inference_mode()
    def exact_grad_sums(
        self, chunks: Sequence[Callable[[], ChunkInput]], combine: GradCombine | None = None
    ) -> dict:
        """Official per-GCM-layer gradient sums over all chunks, one chunk in memory.

        ``combine(layer, gradients)`` turns the chunks' gradients (yielded in order, one
        alive at a time) into the layer's sum; default: in-place accumulation in order.
        The distributed exact mode passes one that adds the other ranks' windows."""
        if not chunks and combine is None:
            return {}
        agg = self.model.agg_regator
        layers = sorted(agg.gcm_layers)
        sums: dict = {}
        fast: dict = {}
        dtype = self._autocast()  # the trunk runs as in the final pass (gcs.run_synchronous)
        device_type = torch.device(self.config.device).type

        def gradients(layer: int) -> Iterator[GCMGrads]:
            for load in chunks:
                amp = torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()
                with amp:
                    st = agg.prepare(self._tensor(load().images))
                    for j in range(layer + 1):
                        agg.forward_layer(st, j)
                        if j in fast:
                            agg.gcm_apply(st, j, fast[j])
                    g = agg.gcm_gradient(st, layer)
                del st
                yield g
                del g

        for layer in layers:
            total = (combine or sum_in_order)(layer, gradients(layer))
            sums[layer] = total
            fast[layer] = agg.gcm_update(layer, total)
        return sums

    # ------------------------------------------------------------ helpers
    def _heads(self) -> tuple[str, ...]:
        return self.config.heads

    def _autocast(self) -> torch.dtype | None:
        return torch.bfloat16 if self.config.autocast_bf16 else None

    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.config.device)
        return (x.permute(0, 3, 1, 2).float() / 255.0).unsqueeze(0)

    def _prediction(self, out: Scal3ROutput, chunk: ChunkInput) -> ChunkPrediction:
        """The heads' output as a prediction that stays on the device (the geometry after
        the network runs there); only the thumbnail descriptors come to the host."""
        w2c = out.extrinsics[0].double()  # (S, 3, 4)
        T = torch.eye(4, dtype=torch.float64, device=w2c.device).repeat(len(w2c), 1, 1)
        T[:, :3, :] = w2c
        pts = pconf = None
        if out.world_points is not None:
            pts = out.world_points[0].float()
            pconf = out.world_points_conf[0].float()
        desc = None
        if self.config.descriptors:
            desc = thumbnail_descriptors(as_tensor(chunk.images, self.config.device))
        return ChunkPrediction(
            c2w=torch.linalg.inv(T),
            intrinsics=out.intrinsics[0].double(),
            depth=out.depth[0, ..., 0].float(),
            depth_conf=out.depth_conf[0].float(),
            points=pts,
            points_conf=pconf,
            descriptors=desc,
        )


__all__ = ["Scal3RBackend", "Scal3RBackendConfig", "plan_resize_crop"]
