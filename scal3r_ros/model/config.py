"""Configuration presets for the Scal3R network (plain dataclasses, no YAML).

``scal3r-1b`` reproduces the official release exactly (``configs/models/scal3r.yaml`` of
zju3dv/Scal3R plus the Aggregator/head defaults it relies on): DINOv2 ViT-L/14 with 4 registers,
24 frame + 24 global blocks of width 1024 (16 heads, qk-norm, 2D RoPE base 100, LayerScale 0.01),
GCM (test-time-training) layers after global blocks 14/17/20/23, heads reading layers
4/11/17/23. Built on the meta device its state_dict matches ``test/data/scal3r_state_dict.tsv``
(1451 tensors, 1,266,142,756 parameters).

``tiny`` keeps every block kind (DINOv2-with-registers patch embedding with pos-embed
interpolation, frame/global blocks with qk-norm + RoPE, two GCM layers at global layers 1 and 3,
camera head with a transformer trunk, both DPT heads reading layers 0-3) at a width small enough
that its random state_dict (213,318 parameters) fits in the < 2 MB parity fixture: width 32,
2 heads (head dim 16), 4 trunk layers with MLP ratio 2, a 1-block DINOv2 with a 5x5 pos-embed
grid, GCM hidden width 64, a 1-block camera head (MLP ratio 1), DPT heads with 8 features.
scripts/make_parity_fixtures.py builds the official model with the same numbers.

Use :func:`get_config` (``get_config("scal3r-1b")``, ``get_config("tiny")``); configs are frozen,
derive variants with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = [
    "CameraHeadConfig",
    "DPTHeadConfig",
    "DinoConfig",
    "GCMConfig",
    "PRESETS",
    "Scal3RConfig",
    "TrunkConfig",
    "get_config",
]


@dataclass(frozen=True)
class DinoConfig:
    """DINOv2 patch-embedding backbone (``agg_regator.patch_embed``)."""

    img_size: int = 518  # pos-embed grid = img_size // patch_size (37 x 37 for the release)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    init_values: float = 1.0  # LayerScale init used when the official code builds it
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0


@dataclass(frozen=True)
class GCMConfig:
    """Global Context Memory (TTT fast-weight SwiGLU) placed after some global blocks."""

    layers: tuple[int, ...] = (14, 17, 20, 23)  # global-block indices carrying a GCM layer
    num_heads: int = 1
    inter_multi: int = 4  # hidden width = head_dim * inter_multi
    base_lr: float = 0.01
    muon_update_steps: int = 5
    use_modulation: bool = True


@dataclass(frozen=True)
class TrunkConfig:
    """The aggregator: alternating frame/global attention over DINOv2 patch tokens."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_camera_tokens: int = 1
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    dino: DinoConfig = field(default_factory=DinoConfig)
    gcm: GCMConfig = field(default_factory=GCMConfig)

    @property
    def patch_size(self) -> int:
        return self.dino.patch_size

    @property
    def patch_start_idx(self) -> int:
        return self.num_camera_tokens + self.num_register_tokens


@dataclass(frozen=True)
class CameraHeadConfig:
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: int = 4
    init_values: float = 0.01
    num_iterations: int = 4


@dataclass(frozen=True)
class DPTHeadConfig:
    """Shared by the depth head (``dpt_decoder``) and the point head (``xyz_decoder``)."""

    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    frames_chunk_size: int = 8


@dataclass(frozen=True)
class Scal3RConfig:
    name: str = "scal3r-1b"
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    camera_head: CameraHeadConfig = field(default_factory=CameraHeadConfig)
    dpt_head: DPTHeadConfig = field(default_factory=DPTHeadConfig)

    @property
    def head_dim_in(self) -> int:
        """Width of the stored trunk features (frame half + global half)."""
        return 2 * self.trunk.embed_dim


SCAL3R_1B = Scal3RConfig()

TINY = Scal3RConfig(
    name="tiny",
    trunk=TrunkConfig(
        embed_dim=32,
        depth=4,
        num_heads=2,  # head dim 16 (RoPE needs a multiple of 4)
        mlp_ratio=2.0,
        intermediate_layer_idx=(0, 1, 2, 3),
        dino=DinoConfig(img_size=70, embed_dim=32, depth=1, num_heads=2),  # 5x5 pos-embed grid
        gcm=GCMConfig(layers=(1, 3), inter_multi=2),  # fast weights 32x64 / 64x32
    ),
    camera_head=CameraHeadConfig(trunk_depth=1, num_heads=2, mlp_ratio=1),
    dpt_head=DPTHeadConfig(features=8, out_channels=(8, 16, 16, 16)),
)

PRESETS: dict[str, Scal3RConfig] = {"scal3r-1b": SCAL3R_1B, "tiny": TINY}


def get_config(name: str | Scal3RConfig = "scal3r-1b", **overrides) -> Scal3RConfig:
    """Return a preset by name (``"scal3r-1b"`` or ``"tiny"``), optionally with top-level
    field overrides (``get_config("tiny", camera_head=CameraHeadConfig(...))``)."""
    if isinstance(name, Scal3RConfig):
        cfg = name
    else:
        try:
            cfg = PRESETS[name]
        except KeyError:
            raise KeyError(f"unknown Scal3R preset {name!r}; known: {sorted(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg
