"""Top-level Scal3R network: aggregator (trunk + GCM) and the camera / depth / point heads.

State-dict prefixes match the official release: ``agg_regator.*``, ``cam_decoder.*``,
``xyz_decoder.*`` (point head), ``dpt_decoder.*`` (depth head).

Entry points (all inference-only):

* :meth:`Scal3R.forward` / :meth:`Scal3R.forward_chunk` — one chunk ``(B, S, 3, H, W)`` in
  ``[0, 1]``; GCM synchronisation chosen by ``sync`` / ``grad_sums`` (see :mod:`.gcs`). Without
  either, a chunk uses its own gradient only (schedule (c), identical to the official result for
  a sequence that is a single chunk).
* :func:`scal3r_ros.model.gcs.run_synchronous` — the official layer-synchronous multi-chunk run.
* layer-level driving: ``model.agg_regator.prepare / forward_layer / gcm_gradient / gcm_update /
  gcm_apply`` and :meth:`Scal3R.decode`.

dtype policy (as the official, ``--test_use_amp`` off): everything fp32 except the Newton-Schulz
iteration of the GCM update (bf16). ``autocast_dtype=torch.bfloat16`` runs the trunk blocks under
autocast (official AMP path); the GCM work and the heads always run with autocast disabled.
Under autocast every trunk Linear/Conv weight is cast to bf16 at each call anyway, so
:meth:`Scal3R.hold_autocast_weights` may keep those weights in bf16 (half their memory, no cast
copies, bitwise the same results); everything else (GCM fast weights and projections, norms,
LayerScale, tokens, pos-embed, heads) stays fp32. A model holding bf16 weights only runs with
``autocast_dtype=torch.bfloat16``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .aggregator import Aggregator, ChunkState
from .config import Scal3RConfig, get_config
from .gcm import FastWeights, GCMGrads
from .gcs import SyncFn
from .heads.camera_head import CameraHead
from .heads.dpt_head import DPTHead
from .pose_encoding import pose_encoding_to_extri_intri

__all__ = ["HEAD_MODULES", "HEADS", "Scal3R", "Scal3ROutput", "autocast_weight_names"]

HEADS = ("camera", "depth", "points")
HEAD_MODULES = {"camera": "cam_decoder", "depth": "dpt_decoder", "points": "xyz_decoder"}


def autocast_weight_names(model: nn.Module) -> list[str]:
    """Parameter names autocast casts to its lower precision at every call: the weight and bias
    of each ``nn.Linear``/``nn.Conv2d`` of the trunk (``agg_regator``: DINOv2 patch embedding and
    blocks, frame/global blocks) except the GCM layers, which run with autocast disabled (the
    official keeps them, their fast weights and updates fp32). The heads run without autocast.
    Works on a meta-device model (the loader uses it to pick each tensor's dtype)."""
    names = []
    for mod_name, mod in model.named_modules():
        if not mod_name.startswith("agg_regator.") or ".ttt." in f"{mod_name}.":
            continue
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            names += [f"{mod_name}.{p}" for p, t in mod.named_parameters(recurse=False)]
    return names


@dataclass
class Scal3ROutput:
    """Per-chunk predictions (batch-first; ``None`` for heads that were skipped).

    * ``pose_enc`` ``(B, S, 9)``: ``[t(3), quat xyzw (4), fov_h, fov_w]`` of the last refinement
      iteration (world-to-camera; world = camera of frame 0 of the chunk);
      ``pose_enc_list`` all iterations.
    * ``extrinsics`` ``(B, S, 3, 4)`` world-to-camera, ``intrinsics`` ``(B, S, 3, 3)`` at the
      network resolution (decoded from ``pose_enc``).
    * ``depth`` ``(B, S, H, W, 1)`` and ``depth_conf`` ``(B, S, H, W)`` (depth head);
      ``world_points`` ``(B, S, H, W, 3)`` and ``world_points_conf`` ``(B, S, H, W)`` (point head,
      in the chunk's reference camera frame).
    * ``gcm_grads`` (this chunk's raw gradients per GCM layer), ``gcm_fast_weights`` (the fast
      weights it used), ``gcm_grad_sums`` (the sums they came from) when ``return_gcm=True``.
    """

    pose_enc: Tensor | None = None
    pose_enc_list: list[Tensor] | None = None
    extrinsics: Tensor | None = None
    intrinsics: Tensor | None = None
    depth: Tensor | None = None
    depth_conf: Tensor | None = None
    world_points: Tensor | None = None
    world_points_conf: Tensor | None = None
    image_size: tuple[int, int] | None = None
    gcm_grads: dict[int, GCMGrads] = field(default_factory=dict)
    gcm_fast_weights: dict[int, FastWeights] = field(default_factory=dict)
    gcm_grad_sums: dict[int, GCMGrads] = field(default_factory=dict)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Scal3R(nn.Module):
    def __init__(self, cfg: Scal3RConfig | str = "scal3r-1b") -> None:
        super().__init__()
        cfg = get_config(cfg)
        self.cfg = cfg
        t = cfg.trunk
        dim_in = cfg.head_dim_in
        self.agg_regator = Aggregator(t)
        ch = cfg.camera_head
        self.cam_decoder = CameraHead(
            dim_in=dim_in,
            trunk_depth=ch.trunk_depth,
            num_heads=ch.num_heads,
            mlp_ratio=ch.mlp_ratio,
            init_values=ch.init_values,
        )
        dh = cfg.dpt_head
        common = dict(
            dim_in=dim_in,
            patch_size=t.patch_size,
            features=dh.features,
            out_channels=list(dh.out_channels),
            intermediate_layer_idx=list(t.intermediate_layer_idx),
            conf_activation="expp1",
        )
        self.xyz_decoder = DPTHead(output_dim=4, activation="inv_log", **common)
        self.dpt_decoder = DPTHead(output_dim=2, activation="exp", **common)
        self.held_dtype: torch.dtype | None = None  # see hold_autocast_weights

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def hold_autocast_weights(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Keep the trunk weights autocast would cast (:func:`autocast_weight_names`) in
        ``dtype``; returns the bytes saved. Results under ``autocast_dtype=dtype`` are bitwise
        those of the fp32 weights (autocast's cast and this one round alike), with half the
        weight memory and no per-call cast copies. Afterwards the model refuses to run without
        that autocast (the fp32 path would need the dropped precision)."""
        if self.held_dtype not in (None, dtype):
            raise ValueError(f"weights are already held in {self.held_dtype}")
        params = dict(self.named_parameters())
        saved = 0
        for name in autocast_weight_names(self):
            p = params[name]
            if p.dtype != dtype:
                saved += p.numel() * (p.element_size() - dtype.itemsize)
                p.data = p.data.to(dtype)
        self.held_dtype = dtype
        return saved

    def check_autocast(self, autocast_dtype: torch.dtype | None) -> None:
        """Raise when weights held in a lower precision would run outside their autocast."""
        if self.held_dtype is not None and autocast_dtype != self.held_dtype:
            raise ValueError(
                f"the trunk weights are held in {self.held_dtype} (hold_autocast_weights): run "
                f"with autocast_dtype={self.held_dtype}, not {autocast_dtype}"
            )

    def drop_heads(self, keep: Sequence[str]) -> list[str]:
        """Remove the heads not in ``keep`` (names from :data:`HEADS`) to free their memory;
        returns the removed head names. A removed head cannot be decoded any more."""
        unknown = set(keep) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {HEADS}")
        dropped = []
        for head, attr in HEAD_MODULES.items():
            if head not in keep and getattr(self, attr, None) is not None:
                setattr(self, attr, None)
                dropped.append(head)
        return dropped

    def available_heads(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if getattr(self, HEAD_MODULES[h], None) is not None)

    # ------------------------------------------------------------------ heads
    @torch.no_grad()
    def decode(self, state: ChunkState, heads: Sequence[str] | None = None) -> Scal3ROutput:
        """Run the requested heads (default: all the model has) on a chunk whose trunk has
        finished."""
        heads = self.available_heads() if heads is None else tuple(heads)
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {HEADS}")
        missing = set(heads) - set(self.available_heads())
        if missing:
            raise ValueError(f"heads {sorted(missing)} were dropped from this model (drop_heads)")
        agg = self.agg_regator
        if state.next_layer != agg.depth:
            raise RuntimeError(f"trunk stopped at layer {state.next_layer} of {agg.depth}")
        feats = dict(state.features)
        feats[-1] = feats[agg.depth - 1]
        B, S = state.B, state.S
        H, W = state.image_size
        device = state.tokens.device
        # the DPT heads only read the shape/device of ``images``
        images = torch.zeros((), device=device).expand(B, S, 3, H, W)
        out = Scal3ROutput(image_size=(H, W))
        with torch.autocast(device_type=device.type, enabled=False):
            if "camera" in heads:
                enc_list = self.cam_decoder(
                    feats, num_iterations=self.cfg.camera_head.num_iterations
                )
                out.pose_enc_list = enc_list
                out.pose_enc = enc_list[-1]
                out.extrinsics, out.intrinsics = pose_encoding_to_extri_intri(out.pose_enc, (H, W))
            fcs = self.cfg.dpt_head.frames_chunk_size
            if "points" in heads:
                out.world_points, out.world_points_conf = self.xyz_decoder(
                    feats,
                    images=images,
                    patch_start_idx=agg.patch_start_idx,
                    frames_chunk_size=fcs,
                )
            if "depth" in heads:
                out.depth, out.depth_conf = self.dpt_decoder(
                    feats,
                    images=images,
                    patch_start_idx=agg.patch_start_idx,
                    frames_chunk_size=fcs,
                )
        return out

    # ------------------------------------------------------------------ one chunk
    def forward_chunk(
        self,
        images: Tensor,
        sync: SyncFn | None = None,
        *,
        grad_sums: dict[int, GCMGrads] | None = None,
        heads: Sequence[str] | None = None,
        return_gcm: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> Scal3ROutput:
        """Run one chunk through all layers and the heads.

        At each GCM layer ``j``: if ``grad_sums`` has ``j``, fast weights come from
        ``grad_sums[j]`` (the chunk's own gradient is then only computed for ``return_gcm``);
        otherwise the chunk's own gradient ``g`` is computed and ``sync(j, g)`` (default:
        identity) gives the sum to use.
        """
        if images.ndim == 4:
            images = images.unsqueeze(0)
        self.check_autocast(autocast_dtype)
        agg = self.agg_regator
        own: dict[int, GCMGrads] = {}
        used: dict[int, GCMGrads] = {}
        fast: dict[int, FastWeights] = {}
        with _autocast(images.device, autocast_dtype):
            state = agg.prepare(images)
            for j in range(agg.depth):
                agg.forward_layer(state, j)
                if j not in agg.gcm_layers:
                    continue
                given = grad_sums.get(j) if grad_sums is not None else None
                g = agg.gcm_gradient(state, j) if (given is None or return_gcm) else None
                if return_gcm:
                    own[j] = g.clone() if sync is not None else g
                if given is not None:
                    total = given
                elif sync is not None:
                    total = sync(j, g)
                else:
                    total = g
                weights = agg.gcm_update(j, total)
                agg.gcm_apply(state, j, weights)
                if return_gcm:
                    used[j], fast[j] = total, weights
        out = self.decode(state, heads=heads)
        if return_gcm:
            out.gcm_grads, out.gcm_fast_weights, out.gcm_grad_sums = own, fast, used
        return out

    forward = forward_chunk  # a model call is one chunk (inference only, no autograd)
