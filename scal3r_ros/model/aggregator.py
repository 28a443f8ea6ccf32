"""The Scal3R trunk ("aggregator"): DINOv2 patch embedding + alternating frame/global attention
with GCM (test-time-training) layers, driven layer by layer.

Token layout per frame: ``[camera (1), registers (4), patches (h*w)]``; the first frame of a chunk
gets the "first-frame" camera/register tokens (index 0), all other frames index 1. RoPE positions
are the (y, x) patch grid + 1 for patches and (0, 0) for special tokens. ImageNet normalisation
is done here, on ``[0, 1]`` RGB input.

All methods run without autograd (inference only). Layer-by-layer API (mirrors the official
release path ``Aggregator.prepare / forward_layer / ttt_gradient / ttt_update / ttt_apply`` that
``scal3r.pipelines.backend.forward`` drives):

* :meth:`Aggregator.prepare` -> :class:`ChunkState` (tokens, RoPE tables, stored features)
* :meth:`Aggregator.forward_layer` (frame block ``j`` then global block ``j``, no GCM; stores
  ``cat(frame_out, global_out)`` for the head layers)
* :meth:`Aggregator.gcm_gradient` / :meth:`Aggregator.gcm_update` / :meth:`Aggregator.gcm_apply`
  (the GCM residual is added in place to the chunk's tokens and the global half of the stored
  feature of that layer is replaced by the post-GCM tokens)

Cross-chunk scheduling (which gradient sum a chunk uses) lives in :mod:`scal3r_ros.model.gcs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import TrunkConfig
from .gcm import FastWeights, GCMGrads, GCMLayer
from .layers.block import Block
from .layers.rope import PositionGetter, RopeTables, RotaryPositionEmbedding2D
from .layers.vision_transformer import DinoVisionTransformer

__all__ = ["Aggregator", "ChunkState", "slice_expand_and_flatten"]

_RESNET_MEAN = (0.485, 0.456, 0.406)
_RESNET_STD = (0.229, 0.224, 0.225)


@dataclass
class ChunkState:
    """Everything the trunk keeps for one chunk between layers (all on the input's device).

    ``tokens`` is ``(B*S, P, C)``; ``features`` maps head layer index -> ``(B, S, P, 2C)``.
    ``next_layer`` is the index of the next trunk layer to run.
    """

    tokens: Tensor
    B: int
    S: int
    P: int
    C: int
    grid: tuple[int, int]  # (h, w) patches
    image_size: tuple[int, int]  # (H, W) pixels
    rope: RopeTables | None
    patch_pos: Tensor | None  # (B, S*h*w, 2) positions of the patch tokens (+1 offset)
    features: dict[int, Tensor] = field(default_factory=dict)
    next_layer: int = 0
    _gcm_rope: dict[int, RopeTables | None] = field(default_factory=dict, repr=False)

    def patch_view(self) -> Tensor:
        """Tokens as ``(B, S, P, C)`` (a view)."""
        return self.tokens.view(self.B, self.S, self.P, self.C)


def slice_expand_and_flatten(token: Tensor, B: int, S: int) -> Tensor:
    """(1, 2, X, C) special tokens -> (B*S, X, C): index 0 for frame 0, index 1 for the rest."""
    if token.shape[1] == 2:
        query = token[:, 0:1].expand(B, 1, *token.shape[2:])
        others = token[:, 1:].expand(B, S - 1, *token.shape[2:])
        combined = torch.cat([query, others], dim=1)
    else:
        combined = token.expand(B, S, *token.shape[2:])
    return combined.reshape(B * S, *combined.shape[2:])


class Aggregator(nn.Module):
    def __init__(self, cfg: TrunkConfig) -> None:
        super().__init__()
        if cfg.dino.embed_dim != cfg.embed_dim:
            raise ValueError("the DINOv2 width must equal the trunk width")
        self.cfg = cfg
        d = cfg.dino
        self.patch_embed = DinoVisionTransformer(
            img_size=d.img_size,
            patch_size=d.patch_size,
            embed_dim=d.embed_dim,
            depth=d.depth,
            num_heads=d.num_heads,
            mlp_ratio=d.mlp_ratio,
            init_values=d.init_values,
            num_register_tokens=d.num_register_tokens,
            interpolate_antialias=d.interpolate_antialias,
            interpolate_offset=d.interpolate_offset,
        )
        self.rope = (
            RotaryPositionEmbedding2D(frequency=cfg.rope_freq) if cfg.rope_freq > 0 else None
        )
        self.position_getter = PositionGetter() if self.rope is not None else None

        def make_block() -> Block:
            return Block(
                dim=cfg.embed_dim,
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                proj_bias=True,
                ffn_bias=True,
                init_values=cfg.init_values,
                qk_norm=cfg.qk_norm,
                rope=self.rope,
            )

        self.frame_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        g = cfg.gcm
        for i in g.layers:
            if not 0 <= i < cfg.depth:
                raise ValueError(f"GCM layer {i} outside 0..{cfg.depth - 1}")
            self.global_blocks[i].ttt = GCMLayer(
                cfg.embed_dim,
                num_heads=g.num_heads,
                qk_norm=cfg.qk_norm,
                rope=self.rope,
                base_lr=g.base_lr,
                inter_multi=g.inter_multi,
                muon_update_steps=g.muon_update_steps,
                use_modulation=g.use_modulation,
            )
        self.gcm_layers: tuple[int, ...] = tuple(sorted(g.layers))
        self.depth = cfg.depth
        self.patch_size = d.patch_size
        self.intermediate_layer_idx = tuple(cfg.intermediate_layer_idx)
        if cfg.depth - 1 not in self.intermediate_layer_idx:
            raise ValueError("the last trunk layer must be a head layer (camera head input)")
        self.camera_token = nn.Parameter(torch.randn(1, 2, cfg.num_camera_tokens, cfg.embed_dim))
        self.register_token = nn.Parameter(
            torch.randn(1, 2, cfg.num_register_tokens, cfg.embed_dim)
        )
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)
        self.patch_start_idx = cfg.num_camera_tokens + cfg.num_register_tokens
        self.register_buffer(
            "_resnet_mean", torch.tensor(_RESNET_MEAN).view(1, 1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_resnet_std", torch.tensor(_RESNET_STD).view(1, 1, 3, 1, 1), persistent=False
        )

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create the non-persistent normalisation buffers (needed after building on the
        meta device and loading with ``assign=True``)."""
        device = self.camera_token.device if device is None else device
        if torch.device(device).type == "meta":
            device = "cpu"
        self._resnet_mean = torch.tensor(_RESNET_MEAN, device=device).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(_RESNET_STD, device=device).view(1, 1, 3, 1, 1)

    # ------------------------------------------------------------------ stages
    def gcm(self, index: int) -> GCMLayer:
        try:
            return self.global_blocks[index].ttt
        except AttributeError:
            raise KeyError(
                f"global layer {index} has no GCM layer (GCM layers: {self.gcm_layers})"
            ) from None

    @torch.no_grad()
    def prepare(self, images: Tensor) -> ChunkState:
        """Images ``(B, S, 3, H, W)`` in ``[0, 1]`` -> initial :class:`ChunkState`."""
        if images.ndim == 4:
            images = images.unsqueeze(0)
        B, S, c_in, H, W = images.shape
        if c_in != 3:
            raise ValueError(f"Expected 3 input channels, got {c_in}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of {self.patch_size}")
        images = (images - self._resnet_mean) / self._resnet_std
        patch_tokens = self.patch_embed(images.reshape(B * S, c_in, H, W))
        camera_token = slice_expand_and_flatten(self.camera_token, B, S)
        register_token = slice_expand_and_flatten(self.register_token, B, S)
        tokens = torch.cat(
            [
                camera_token.to(patch_tokens.dtype),
                register_token.to(patch_tokens.dtype),
                patch_tokens,
            ],
            dim=1,
        )
        h, w = H // self.patch_size, W // self.patch_size
        _, P, C = tokens.shape
        rope = None
        patch_pos = None
        if self.rope is not None:
            pos = self.position_getter(B * S, h, w, device=images.device) + 1
            patch_pos = pos.reshape(B, S * h * w, 2)
            if self.patch_start_idx > 0:
                special = torch.zeros(
                    B * S, self.patch_start_idx, 2, device=images.device, dtype=pos.dtype
                )
                pos = torch.cat([special, pos], dim=1)
            rope = self.rope.tables(
                pos, C // self.cfg.num_heads, self.camera_token.dtype, max(h, w) + 1
            )
        return ChunkState(
            tokens=tokens,
            B=B,
            S=S,
            P=P,
            C=C,
            grid=(h, w),
            image_size=(H, W),
            rope=rope,
            patch_pos=patch_pos,
        )

    @torch.no_grad()
    def forward_layer(self, state: ChunkState, index: int | None = None) -> ChunkState:
        """Frame block ``index`` then global block ``index`` (no GCM). Updates ``state``."""
        j = state.next_layer if index is None else index
        B, S, P, C = state.B, state.S, state.P, state.C
        tokens = state.tokens.reshape(B * S, P, C)
        tokens = self.frame_blocks[j](tokens, pos=state.rope)
        frame_out = tokens
        g_rope = state.rope.reshape_tokens(B, S * P) if state.rope is not None else None
        tokens = self.global_blocks[j](tokens.reshape(B, S * P, C), pos=g_rope)
        state.tokens = tokens.reshape(B * S, P, C)
        if j in self.intermediate_layer_idx:
            state.features[j] = torch.cat(
                [frame_out.reshape(B, S, P, C), tokens.reshape(B, S, P, C)], dim=-1
            )
        state.next_layer = j + 1
        return state

    def _gcm_inputs(self, state: ChunkState, index: int) -> tuple[Tensor, RopeTables | None]:
        B, C = state.B, state.C
        x = state.patch_view()[:, :, self.patch_start_idx :].reshape(B, -1, C)
        layer = self.gcm(index)
        key = layer.head_dim
        if key not in state._gcm_rope:
            state._gcm_rope[key] = (
                layer.rope_tables(state.patch_pos, max(state.grid) + 1)
                if state.patch_pos is not None
                else None
            )
        return x, state._gcm_rope[key]

    @torch.no_grad()
    def gcm_gradient(self, state: ChunkState, index: int) -> GCMGrads:
        """Raw fast-weight gradients of this chunk at GCM layer ``index`` (vs. the learned init)."""
        x, rope = self._gcm_inputs(state, index)
        return self.gcm(index).gradient(x, rope)

    @torch.no_grad()
    def gcm_update(self, index: int, grads: GCMGrads, lr: float | None = None) -> FastWeights:
        """Fast weights of GCM layer ``index`` from a gradient (sum): ``renorm(W + NS5(G))``."""
        return self.gcm(index).update(grads, lr=lr)

    @torch.no_grad()
    def gcm_apply(self, state: ChunkState, index: int, fast: FastWeights) -> ChunkState:
        """Add the GCM residual (fast weights ``fast``) to the chunk's patch tokens, in place, and
        refresh the global half of the stored feature of this layer."""
        x, rope = self._gcm_inputs(state, index)
        out = self.gcm(index).apply(x, fast, rope)
        B, S, P, C = state.B, state.S, state.P, state.C
        view = state.patch_view()
        view[:, :, self.patch_start_idx :] += out.reshape(B, S, P - self.patch_start_idx, C).to(
            view.dtype
        )
        if index in state.features:
            state.features[index][..., C:] = view
        return state
