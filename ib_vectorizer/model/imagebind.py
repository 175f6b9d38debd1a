"""ImageBind: six encoders into one embedding space.

Module names mirror Meta's checkpoint (``modality_preprocessors``,
``modality_trunks``, ``modality_heads``, ``modality_postprocessors``) so
``imagebind_huge.pth`` loads unchanged with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImageBindConfig
from .heads import TextHead, cls_head, postprocessor
from .stems import (
    FramePatchStem,
    IMUStem,
    PatchEmbedding,
    PatchStem,
    RepeatFrames,
    TextEmbedding,
)
from .transformer import Trunk

ENCODERS = ("vision", "text", "audio", "depth", "thermal", "imu")

# Dimensions of one item as each encoder takes it; vision takes an image (C, H, W)
# or a two-frame clip (C, T, H, W). One more leading dimension than the largest
# means each item holds several views (audio clips, video clips × crops).
_ITEM_NDIM = {"vision": 4, "text": 1, "audio": 3, "depth": 3, "thermal": 3, "imu": 2}


def _grid(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class ImageBind(nn.Module):
    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": self._vision_embedding(c),
                "text": TextEmbedding(c.vocab_size, c.context_length, c.text_embed_dim),
                "audio": self._conv_embedding(
                    "rgbt_stem",
                    c.audio_embed_dim,
                    c.audio_kernel_size,
                    c.audio_stride,
                    (c.audio_num_mel_bins, c.audio_target_len),
                ),
                "depth": self._conv_embedding(
                    "depth_stem",
                    c.depth_embed_dim,
                    c.depth_kernel_size,
                    c.depth_kernel_size,
                    (c.image_size, c.image_size),
                ),
                "thermal": self._conv_embedding(
                    "rgbt_stem",
                    c.thermal_embed_dim,
                    c.thermal_kernel_size,
                    c.thermal_kernel_size,
                    (c.image_size, c.image_size),
                ),
                "imu": PatchEmbedding(
                    "imu_stem",
                    IMUStem(c.imu_channels, c.imu_kernel_size, c.imu_embed_dim),
                    num_patches=c.imu_samples // c.imu_kernel_size,
                    dim=c.imu_embed_dim,
                    own_pos_embed=True,
                ),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                name: Trunk(
                    enc.embed_dim,
                    enc.num_blocks,
                    enc.num_heads,
                    enc.add_bias_kv,
                    pre_norm=name == "vision",
                    causal=name == "text",
                )
                for name in ENCODERS
                for enc in [c.encoder(name)]
            }
        )
        out = c.out_embed_dim
        self.modality_heads = nn.ModuleDict(
            {
                "vision": cls_head(c.vision_embed_dim, out),
                "text": TextHead(c.text_embed_dim, out),
                "audio": cls_head(c.audio_embed_dim, out),
                "depth": cls_head(c.depth_embed_dim, out),
                "thermal": cls_head(c.thermal_embed_dim, out),
                "imu": cls_head(c.imu_embed_dim, out, dropout=True),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": postprocessor(),
                "text": postprocessor(1 / 0.07, max_scale=c.text_max_logit_scale),
                "audio": postprocessor(c.audio_logit_scale),
                "depth": postprocessor(c.depth_logit_scale),
                "thermal": postprocessor(c.thermal_logit_scale),
                "imu": postprocessor(c.imu_logit_scale),
            }
        )

    @staticmethod
    def _vision_embedding(c: ImageBindConfig) -> PatchEmbedding:
        t, k, _ = c.kernel_size
        conv = nn.Conv3d(
            3, c.vision_embed_dim, kernel_size=c.kernel_size, stride=c.kernel_size, bias=False
        )
        stem = FramePatchStem(nn.Sequential(RepeatFrames(c.video_frames), conv))
        patches = (c.video_frames // t) * (c.image_size // k) ** 2
        return PatchEmbedding("rgbt_stem", stem, patches, c.vision_embed_dim)

    @staticmethod
    def _conv_embedding(
        stem_name: str, dim: int, kernel: int, stride: int, size: tuple[int, int]
    ) -> PatchEmbedding:
        conv = nn.Conv2d(1, dim, kernel_size=kernel, stride=stride, bias=False)
        patches = _grid(size[0], kernel, stride) * _grid(size[1], kernel, stride)
        return PatchEmbedding(stem_name, PatchStem(conv, norm_dim=dim), patches, dim)

    def embed(self, encoder: str, inputs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed a batch for one encoder; only that encoder runs.

        ``inputs`` is a batch of items, or of items with several views each
        (audio (B, 3, 1, 128, 204), video (B, 15, 3, 2, 224, 224)); views are
        embedded, post-processed and averaged, as the reference does.
        ``normalize=False`` returns the reference's outputs exactly: unit vectors
        times the modality's logit scale (none for vision). ``normalize=True``
        returns unit vectors, so a weighted mean in Weaviate means what its
        weights say. Output is float32 (B, out_embed_dim).
        """
        if encoder not in _ITEM_NDIM:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")
        views = inputs.ndim == _ITEM_NDIM[encoder] + 2
        if views:
            batch, num_views = inputs.shape[:2]
            inputs = inputs.flatten(0, 1)
        tokens = self.modality_preprocessors[encoder](inputs)
        tokens = self.modality_trunks[encoder](tokens)
        head = self.modality_heads[encoder]
        pooled = head(tokens, inputs) if encoder == "text" else head(tokens)
        out = self.modality_postprocessors[encoder](pooled.float())
        if views:
            out = out.view(batch, num_views, -1).mean(dim=1)
        return F.normalize(out, dim=-1) if normalize else out

    def forward(
        self, inputs: Mapping[str, torch.Tensor], normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """Embed several encoders' batches at once: ``{"audio": tensor, ...}`` in, same keys out."""
        return {name: self.embed(name, x, normalize=normalize) for name, x in inputs.items()}

    def logit_scale(self, encoder: str) -> float:
        """The factor the reference multiplies ``encoder``'s unit vectors by (1 for vision)."""
        post = self.modality_postprocessors[encoder]
        return float(post[1].scale) if len(post) > 1 else 1.0
