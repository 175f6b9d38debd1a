"""Server configuration: one table of environment variables, each with a CLI flag.

The table (``SETTINGS``) is the single source for the CLI flags, the defaults
and the README's configuration table, so the three cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True)
class Setting:
    name: str  # attribute of ServerSettings, which holds the type and default
    env: str
    flag: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "IB_HOST", "--host", "address to listen on"),
    Setting("port", "IB_PORT", "--port", "port to listen on (Weaviate's default)"),
    Setting("model", "IB_MODEL", "--model",
            "preset name or config.json of constructor arguments"),
    Setting("checkpoint", "IB_CHECKPOINT", "--checkpoint",
            "weights file (default ~/.cache/ib_vectorizer/imagebind_huge.pth)"),
    Setting("random_weights", "IB_RANDOM_WEIGHTS", "--random-weights",
            "random weights instead of a checkpoint (benchmarks only)"),
    Setting("enable_cuda", "ENABLE_CUDA", "--enable-cuda",
            "as in Weaviate's containers: 1 runs on CUDA_CORE (default: CUDA if present)"),
    Setting("cuda_core", "CUDA_CORE", "--cuda-core",
            "the CUDA device ENABLE_CUDA uses"),
    Setting("device", "IB_DEVICE", "--device",
            "one device (cpu, cuda, cuda:1); overrides ENABLE_CUDA"),
    Setting("devices", "IB_DEVICES", "--devices",
            "comma-separated devices, one model replica each (cuda:0,cuda:1)"),
    Setting("dtype", "IB_DTYPE", "--dtype",
            "float16, bfloat16 or float32 (default float16 on CUDA, float32 on CPU)"),
    Setting("compile", "IB_COMPILE", "--compile", "torch.compile the encoders"),
    Setting("max_batch", "IB_MAX_BATCH", "--max-batch",
            "largest batch, counted in views (audio item = 3, video item = 15)"),
    Setting("max_wait_ms", "IB_MAX_WAIT_MS", "--max-wait-ms",
            "longest an idle replica waits to fill a batch"),
    Setting("max_queue", "IB_MAX_QUEUE", "--max-queue",
            "items admitted at once (decoding or queued); beyond it 503"),
    Setting("max_body_mb", "IB_MAX_BODY_MB", "--max-body-mb",
            "largest request body in MiB; beyond it 413"),
    Setting("max_items", "IB_MAX_ITEMS", "--max-items",
            "most items in one request; beyond it 413"),
    Setting("max_video_seconds", "IB_MAX_VIDEO_SECONDS", "--max-video-seconds",
            "longest video accepted"),
    Setting("max_audio_seconds", "IB_MAX_AUDIO_SECONDS", "--max-audio-seconds",
            "longest audio accepted"),
    Setting("request_timeout_s", "IB_REQUEST_TIMEOUT_S", "--request-timeout-s",
            "a request still waiting after this gets 504"),
    Setting("normalize", "IB_NORMALIZE", "--normalize",
            "unit vectors (1) or the reference's logit-scaled vectors (0)"),
    Setting("preprocess_workers", "IB_PREPROCESS_WORKERS", "--preprocess-workers",
            "threads decoding media (default: CPU count)"),
    Setting("torch_threads", "IB_TORCH_THREADS", "--torch-threads",
            "PyTorch threads for CPU replicas (default: cores / (CPU replicas + 1))"),
    Setting("api_key", "IB_API_KEY", "--api-key",
            "if set, all but /.well-known/* need 'Authorization: Bearer KEY'"),
    Setting("mode", "IB_MODE", "--mode",
            "batched, or baseline: one request at a time, like the reference container"),
)  # fmt: skip


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    model: str = "imagebind_huge"
    checkpoint: str | None = None
    random_weights: bool = False
    enable_cuda: bool | None = None
    cuda_core: str = "cuda:0"
    device: str | None = None
    devices: str | None = None
    dtype: str | None = None
    compile: bool = False
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_body_mb: float = 64.0
    max_items: int = 256
    max_video_seconds: float = 600.0
    max_audio_seconds: float = 600.0
    request_timeout_s: float = 60.0
    normalize: bool = True
    preprocess_workers: int | None = None
    torch_threads: int | None = None
    api_key: str | None = None
    mode: str = "batched"

    def __post_init__(self) -> None:
        if self.mode not in ("batched", "baseline"):
            raise ValueError(f"IB_MODE must be 'batched' or 'baseline', not {self.mode!r}")
        if self.dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"IB_DTYPE must be float16, bfloat16 or float32, not {self.dtype!r}")
        for name in ("max_batch", "max_queue", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

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


def _kind(name: str) -> type:
    """The scalar type of a ServerSettings field, read from its annotation."""
    annotation = str(next(f.type for f in fields(ServerSettings) if f.name == name))
    for kind in (bool, int, float):
        if kind.__name__ in annotation:
            return kind
    return str


def _default(name: str):
    default = next(f.default for f in fields(ServerSettings) if f.name == name)
    return None if default is MISSING else default


def _convert(setting: Setting, raw: str):
    kind = _kind(setting.name)
    if kind is bool:
        return parse_bool(raw)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{setting.env}: expected {kind.__name__}, got {raw!r}") from None


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags fall back to the environment, then the default."""
    for s in SETTINGS:
        kind = _kind(s.name)
        parser.add_argument(
            s.flag,
            dest=s.name,
            default=None,
            metavar="BOOL" if kind is bool else kind.__name__.upper(),
            help=f"{s.help} (env {s.env})",
        )


def settings_from(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Flags win over the environment, which wins over the defaults."""
    env = os.environ if env is None else env
    values = {}
    for s in SETTINGS:
        raw = getattr(args, s.name, None) if args is not None else None
        if raw is None and env.get(s.env, "") != "":
            raw = env[s.env]
        if raw is not None:
            values[s.name] = _convert(s, raw) if isinstance(raw, str) else raw
    return ServerSettings(**values)


def settings_table() -> str:
    """The README's configuration table, in Markdown."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = _default(s.name)
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `{s.env}` | `{s.flag}` | {shown} | {s.help} |")
    return "\n".join(rows)
