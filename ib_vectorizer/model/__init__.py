"""ImageBind in plain PyTorch: config presets, the network, and a factory."""

from .config import ImageBindConfig, get_config, preset_names
from .factory import build_model, create_model
from .imagebind import ENCODERS, ImageBind

__all__ = [
    "ENCODERS",
    "ImageBind",
    "ImageBindConfig",
    "build_model",
    "create_model",
    "get_config",
    "preset_names",
]
