"""Server configuration: every setting is an environment variable with a CLI flag.

Each setting is declared once, as a field of :class:`ServerSettings` (name,
type, default, environment variable, help; the flag comes from the name).
The model options (``IB_MODEL``, ``IB_CHECKPOINT``, ``IB_DEVICE``, ...) are
:class:`~ib_vectorizer.options.ModelOptions`, shared with every other command.
The flags, the environment and the README's table are all made from these
declarations.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from ..options import (
    ModelOptions,
    Option,
    add_flags,
    from_sources,
    option,
    options_of,
    options_table,
)

MODES = ("batched", "baseline")
WARM_UP_MODES = ("auto", "modalities", "weights", "none")


@dataclass(frozen=True)
class ServerSettings(ModelOptions):
    host: str = option("0.0.0.0", "IB_HOST", "address to listen on")
    port: int = option(8080, "IB_PORT", "port to listen on (Weaviate's default)")
    enable_cuda: bool | None = option(
        None, "ENABLE_CUDA", "as in Weaviate's containers: 1 runs on CUDA_CORE"
    )
    cuda_core: str = option("cuda:0", "CUDA_CORE", "the CUDA device ENABLE_CUDA uses")
    devices: str | None = option(
        None, "IB_DEVICES", "comma-separated devices, one model replica each (cuda:0,cuda:1)"
    )
    compile: bool = option(False, "IB_COMPILE", "torch.compile the encoders")
    warm_up: str = option(
        "auto",
        "IB_WARM_UP",
        "before ready: weights (read into memory), modalities (each run once), or none; "
        "auto: modalities on CUDA or with IB_COMPILE, else weights",
        choices=WARM_UP_MODES,
    )
    max_batch: int = option(
        32, "IB_MAX_BATCH", "largest batch, counted in views (audio item = 3, video item = 15)"
    )
    max_wait_ms: float = option(
        5.0, "IB_MAX_WAIT_MS", "longest an idle replica waits to fill a batch"
    )
    max_queue: int = option(
        1024, "IB_MAX_QUEUE", "items admitted at once (decoding or queued); beyond it 503"
    )
    max_body_mb: float = option(
        64.0, "IB_MAX_BODY_MB", "largest request body in MiB; beyond it 413"
    )
    max_items: int = option(256, "IB_MAX_ITEMS", "most items in one request; beyond it 413")
    memory_budget_mb: int = option(
        4096,
        "IB_MEMORY_BUDGET_MB",
        "memory all requests may hold at once (bodies, decoding, decoded inputs; one request "
        "at most half); beyond it bodies get 503 and decoding waits",
    )
    body_timeout_s: float = option(
        10.0, "IB_BODY_TIMEOUT_S", "a request body that sends nothing for this long gets 408"
    )
    max_video_seconds: float = option(600.0, "IB_MAX_VIDEO_SECONDS", "longest video accepted")
    max_audio_seconds: float = option(600.0, "IB_MAX_AUDIO_SECONDS", "longest audio accepted")
    request_timeout_s: float = option(
        60.0, "IB_REQUEST_TIMEOUT_S", "a request still waiting after this gets 504"
    )
    normalize: bool = option(
        True, "IB_NORMALIZE", "unit vectors (1) or the reference's logit-scaled vectors (0)"
    )
    preprocess_workers: int | None = option(
        None, "IB_PREPROCESS_WORKERS", "threads decoding media (default: CPU count)"
    )
    torch_threads: int | None = option(
        None,
        "IB_TORCH_THREADS",
        "PyTorch threads for CPU replicas (default: cores / (CPU replicas + 1))",
    )
    api_key: str | None = option(
        None, "IB_API_KEY", "if set, all but /.well-known/* need 'Authorization: Bearer KEY'"
    )
    mode: str = option(
        "batched",
        "IB_MODE",
        "batched, or baseline: one request at a time, like the reference container",
        choices=MODES,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_batch", "max_queue", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.body_timeout_s <= 0:
            raise ValueError(f"IB_BODY_TIMEOUT_S must be positive, not {self.body_timeout_s:g}")
        if self.max_item_mb + self.max_body_mb > self.memory_budget_mb:
            raise ValueError(
                f"IB_MEMORY_BUDGET_MB ({self.memory_budget_mb}) must hold a body "
                f"(IB_MAX_BODY_MB {self.max_body_mb:g}) and an item's decoding "
                f"(IB_MAX_ITEM_MB {self.max_item_mb}): raise it, or lower those"
            )

    def device_list(self, cuda_available: bool) -> list[str]:
        """Where the replicas run: IB_DEVICES, else IB_DEVICE, else ENABLE_CUDA/CUDA_CORE."""
        if self.devices:
            return [d.strip() for d in self.devices.split(",") if d.strip()]
        if self.device:
            return [self.device]
        if self.enable_cuda is True:
            return [self.cuda_core]
        if self.enable_cuda is False:
            return ["cpu"]
        return [self.cuda_core if cuda_available else "cpu"]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mb << 20


SETTINGS: tuple[Option, ...] = options_of(ServerSettings)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ServerSettings)


def settings_from(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Flags win over the environment, which wins over the defaults."""
    return from_sources(ServerSettings, args, env)


def settings_table() -> str:
    """The README's configuration table, in Markdown."""
    return options_table(ServerSettings)
