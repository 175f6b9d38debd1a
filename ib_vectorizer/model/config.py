"""Model sizes as data.

A config is built from the reference constructor's keyword arguments
(``vision_embed_dim``, ``audio_num_heads``, ...), which is also the format of
the presets in ``presets/*.json`` and of the parity fixture's ``config.json``.
Anything not given keeps the reference default, so a JSON file lists only what
differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's transformer trunk."""

    embed_dim: int
    num_blocks: int
    num_heads: int
    add_bias_kv: bool
    drop_path: float = 0.0  # training only; kept so configs round-trip


@dataclass(frozen=True)
class ImageBindConfig:
    """Every size the architecture depends on, with ``imagebind_huge`` defaults."""

    out_embed_dim: int = 1024
    # vision (images and videos)
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    video_frames: int = 2
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    # text
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    vocab_size: int = 49408
    context_length: int = 77
    # audio
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_kernel_size: int = 16
    audio_stride: int = 10
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1
    # depth
    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_kernel_size: int = 16
    depth_drop_path: float = 0.0
    # thermal
    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_kernel_size: int = 16
    thermal_drop_path: float = 0.0
    # imu
    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_kernel_size: int = 8
    imu_channels: int = 6
    imu_samples: int = 2000
    imu_drop_path: float = 0.7
    # fixed output scales of the reference (text's is learned, in the checkpoint)
    text_max_logit_scale: float = 100.0
    audio_logit_scale: float = 20.0
    depth_logit_scale: float = 5.0
    thermal_logit_scale: float = 10.0
    imu_logit_scale: float = 5.0

    def encoder(self, modality: str) -> EncoderConfig:
        """The trunk sizes of ``modality`` (one of the six encoders)."""
        return EncoderConfig(
            embed_dim=getattr(self, f"{modality}_embed_dim"),
            num_blocks=getattr(self, f"{modality}_num_blocks"),
            num_heads=getattr(self, f"{modality}_num_heads"),
            add_bias_kv=modality in ("audio", "depth", "thermal", "imu"),
            drop_path=getattr(self, f"{modality}_drop_path", 0.0),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImageBindConfig:
        """Build from reference constructor arguments; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ImageBind config field(s): {', '.join(unknown)}")
        values = dict(values)
        if "kernel_size" in values:
            values["kernel_size"] = tuple(values["kernel_size"])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> ImageBindConfig:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read model config {path}: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"model config {path} must be a JSON object")
        return cls.from_dict(values)


def preset_names() -> list[str]:
    """Names accepted by :func:`get_config`, from the files in ``presets/``."""
    folder = resources.files(__package__) / "presets"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def get_config(name_or_path: str | Path) -> ImageBindConfig:
    """A preset by name (``imagebind_huge``) or a JSON file of constructor arguments."""
    name = str(name_or_path)
    if name in preset_names():
        text = (resources.files(__package__) / "presets" / f"{name}.json").read_text()
        return ImageBindConfig.from_dict(json.loads(text))
    if name.endswith(".json") or Path(name).is_file():
        return ImageBindConfig.from_json(name)
    raise ValueError(
        f"unknown model {name!r}: use a preset ({', '.join(preset_names())}) "
        "or the path of a config.json of constructor arguments"
    )
