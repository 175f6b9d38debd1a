"""Floating-point operations per item, from the model's config (no weights needed).

Achieved TFLOP/s is items/s times these counts, so they must follow the
architecture rather than a constant: token counts and widths are read from a
model built on the meta device (which allocates nothing). Counted: the
matrix products (2 FLOPs per multiply-add) of the stems, the trunks (input
projection, attention scores and their weighted sum, output projection, the
MLP) and the heads. LayerNorm, softmax, GELU and additions are left out,
as is usual. For ViT-H/14 at 224 px this gives about 334 GFLOP per image.
"""

from __future__ import annotations

from functools import cache

from ib_vectorizer.modalities import Modality
from ib_vectorizer.model import ImageBindConfig, build_model, get_config

MLP_RATIO = 4


def block_flops(tokens: int, keys: int, dim: int) -> int:
    """One pre-norm block over ``tokens`` queries and ``keys`` keys of width ``dim``.

    Projections: q/k/v (3·D²), output (D²) and the MLP (2·4·D²) per token,
    so 24·N·D² FLOPs; attention: scores and weighted sum, 4·N·K·D.
    """
    projections = 2 * tokens * dim * dim * (3 + 1 + 2 * MLP_RATIO)
    attention = 4 * tokens * keys * dim
    return projections + attention


@cache
def _geometry(config: ImageBindConfig) -> dict[str, dict[str, int]]:
    """Tokens per view and stem weights per encoder, read off a meta-device model."""
    model = build_model(config, device="meta")
    geometry = {}
    for encoder, stem in model.modality_preprocessors.items():
        positions = stem.pos_embed if encoder == "text" else stem.positions
        weight = 0 if encoder == "text" else getattr(stem, stem.stem_name).proj
        if encoder == "vision":
            weight = weight[1].weight  # Sequential(RepeatFrames, Conv3d)
        elif encoder != "text":
            weight = weight.weight
        geometry[encoder] = {
            "tokens": positions.shape[1],
            "stem_weights": 0 if encoder == "text" else weight.numel(),
            "frames_per_kernel": weight.shape[2] if encoder == "vision" else 1,
        }
    return geometry


def view_flops(config: ImageBindConfig, encoder: str, clip: bool = False) -> int:
    """FLOPs of one view through ``encoder``; ``clip``: a video clip rather than a still image.

    A still image goes through the vision stem as a 2-D convolution (the time
    kernel folded), a clip through the 3-D one: twice the stem's work.
    """
    geometry = _geometry(config)[encoder]
    enc = config.encoder(encoder)
    tokens = geometry["tokens"]
    patches = tokens if encoder == "text" else tokens - 1  # all but the CLS token
    stem_weights = geometry["stem_weights"]
    if encoder == "vision" and not clip:
        stem_weights //= geometry["frames_per_kernel"]
    stem = 2 * patches * stem_weights
    keys = tokens + (1 if enc.add_bias_kv else 0)
    trunk = enc.num_blocks * block_flops(tokens, keys, enc.embed_dim)
    head = 2 * enc.embed_dim * config.out_embed_dim
    return stem + trunk + head


def item_flops(config: ImageBindConfig, modality: Modality) -> int:
    """FLOPs of one item: its views (audio 3 clips, video 15 clip crops) through its encoder."""
    per_view = view_flops(config, modality.encoder, clip=modality is Modality.VIDEO)
    return per_view * modality.views_per_item


def flops_table(model: str) -> dict[str, float]:
    """GFLOP per item of every modality of ``model`` (preset or config path)."""
    config = get_config(model)
    return {m.value: item_flops(config, m) / 1e9 for m in Modality}


def tflops(items_per_s: float, gflop_per_item: float) -> float:
    """Achieved TFLOP/s at ``items_per_s`` items of ``gflop_per_item`` each."""
    return items_per_s * gflop_per_item / 1e3
