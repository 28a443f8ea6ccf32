"""Building blocks of the Scal3R trunk (DINOv2 / VGGT layers), re-implemented for inference.

Stable public names (also used by the heads): :class:`Block`, :class:`Mlp`,
:class:`Attention`, :class:`LayerScale`, :class:`PatchEmbed`,
:class:`RotaryPositionEmbedding2D`, :class:`PositionGetter`, :class:`DinoVisionTransformer`.
"""

from .attention import Attention
from .block import Block, NestedTensorBlock
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .rope import PositionGetter, RopeTables, RotaryPositionEmbedding2D
from .vision_transformer import DinoVisionTransformer

__all__ = [
    "Attention",
    "Block",
    "DinoVisionTransformer",
    "LayerScale",
    "Mlp",
    "NestedTensorBlock",
    "PatchEmbed",
    "PositionGetter",
    "RopeTables",
    "RotaryPositionEmbedding2D",
]
