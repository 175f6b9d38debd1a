"""Options declared once, and the model options every command shares.

An option is a dataclass field made with :func:`option`: its name, type and
default are the field's own, and the field carries its environment variable
and help. From that one declaration :func:`add_flags` makes the argparse
flags, :func:`from_sources` reads flags, then the environment, then the
defaults, and :func:`options_table` writes the README's table, so the three
cannot drift apart.

:class:`ModelOptions` (``--model``, ``--checkpoint``, ``--random-weights``,
``--device``, ``--dtype``, ``--quantize``, ``--image-decode``,
``--decode-processes``) is the one description of "which ImageBind, on which
device, in which precision, fed how", used by ``ib-vectorizer embed``, the
server, its benchmark, the local stack and the Beam pipeline.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from .choices import IMAGE_DECODE_MODES, QUANTIZE_MODES

if TYPE_CHECKING:
    import torch

    from .model import ImageBind, ImageBindConfig

_META_KEY = "option"
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})
DTYPES = ("float32", "float16", "bfloat16")

Options = TypeVar("Options")


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True)
class _Declared:
    env: str
    help: str
    choices: tuple[str, ...] | None


def option(default: Any, env: str, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that is also a flag (from its name) and an environment variable."""
    return field(default=default, metadata={_META_KEY: _Declared(env, help, choices)})


@dataclass(frozen=True)
class Option:
    """One option as the command line, the environment and the README see it."""

    name: str
    env: str
    help: str
    kind: type  # bool, int, float or str
    default: Any
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, raw: str) -> Any:
        """A flag's or variable's text → a value of the option's type, or ValueError."""
        if self.kind is bool:
            try:
                return parse_bool(raw)
            except ValueError as err:
                raise ValueError(f"{self.env}: {err}") from None
        try:
            value = self.kind(raw)
        except ValueError:
            raise ValueError(f"{self.env}: expected {self.kind.__name__}, got {raw!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.env} must be one of {', '.join(self.choices)}, not {raw!r}")
        return value


def _scalar(annotation: Any) -> type:
    """``int | None`` → ``int``; the option types are bool, int, float and str."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation not in (bool, int, float, str):
        raise TypeError(f"an option must be bool, int, float or str, not {annotation!r}")
    return annotation


def options_of(cls: type) -> tuple[Option, ...]:
    """The options a dataclass declares, in field order."""
    hints = typing.get_type_hints(cls)
    declared = []
    for f in fields(cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            continue
        default = None if f.default is MISSING else f.default
        declared.append(
            Option(f.name, meta.env, meta.help, _scalar(hints[f.name]), default, meta.choices)
        )
    return tuple(declared)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per option; an unset flag falls back to the environment, then the default.

    A boolean flag alone means true (``--random-weights``); it also takes a value
    (``--random-weights 0``).
    """
    for opt in options_of(cls):
        default = "" if opt.default is None else f"; default {opt.default}"
        help_text = f"{opt.help}{default} (env {opt.env})"
        extra: dict[str, Any] = {"metavar": opt.kind.__name__.upper()}
        if opt.kind is bool:
            extra = {"metavar": "BOOL", "nargs": "?", "const": "1"}
        elif opt.choices:
            extra = {"choices": opt.choices}
        parser.add_argument(
            opt.flag,
            dest=opt.name,
            default=None,
            help=help_text,
            **extra,
        )


def from_sources(
    cls: type[Options],
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Options:
    """Flags win over the environment, which wins over the defaults; ``overrides`` win over all."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for opt in options_of(cls):
        raw = getattr(args, opt.name, None) if args is not None else None
        if raw is None and env.get(opt.env, "") != "":
            raw = env[opt.env]
        if raw is not None:
            values[opt.name] = opt.parse(raw) if isinstance(raw, str) else raw
    return cls(**{**values, **overrides})


def check_choices(instance: Any) -> None:
    """ValueError naming the variable when a field holds a value outside its option's choices.

    Flags and variables are checked as they are parsed; this covers instances
    built in code, with the same message.
    """
    for opt in options_of(type(instance)):
        value = getattr(instance, opt.name)
        if opt.choices is not None and value is not None and value not in opt.choices:
            raise ValueError(f"{opt.env} must be one of {', '.join(opt.choices)}, not {value!r}")


def options_table(cls: type) -> str:
    """The options as a Markdown table: variable, flag, default, meaning."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for opt in options_of(cls):
        shown = "—" if opt.default is None else f"`{opt.default}`"
        rows.append(f"| `{opt.env}` | `{opt.flag}` | {shown} | {opt.help} |")
    return "\n".join(rows)


def as_env(instance: Any) -> dict[str, str]:
    """The environment that gives a child process these options (unset ones left out)."""
    env = {}
    for opt in options_of(type(instance)):
        value = getattr(instance, opt.name)
        if value is not None:
            env[opt.env] = ("1" if value else "0") if opt.kind is bool else str(value)
    return env


def as_flags(instance: Any) -> list[str]:
    """The command-line flags that give another command these options (unset ones left out)."""
    flags = []
    for opt in options_of(type(instance)):
        value = getattr(instance, opt.name)
        if value is not None:
            shown = ("1" if value else "0") if opt.kind is bool else str(value)
            flags += [opt.flag, shown]
    return flags


# ------------------------------------------------------------------------------------ model


def default_dtype(device: torch.device | str) -> str:
    """float16 on CUDA (half the memory, tensor cores), float32 on the CPU."""
    kind = device.type if not isinstance(device, str) else device.split(":")[0]
    return "float16" if kind == "cuda" else "float32"


@dataclass(frozen=True)
class ModelOptions:
    """Which ImageBind to run, with which weights, on which device, in which precision
    (float dtype, optionally int8 trunks), and how its inputs are decoded."""

    model: str = option(
        "imagebind_huge", "IB_MODEL", "preset name or config.json of constructor arguments"
    )
    checkpoint: str | None = option(
        None, "IB_CHECKPOINT", "weights file (default ~/.cache/ib_vectorizer/imagebind_huge.pth)"
    )
    random_weights: bool = option(
        False, "IB_RANDOM_WEIGHTS", "random weights instead of a checkpoint (benchmarks only)"
    )
    device: str | None = option(None, "IB_DEVICE", "cpu, cuda or cuda:N (default: CUDA if present)")
    dtype: str | None = option(
        None, "IB_DTYPE", "weights dtype (default float16 on CUDA, float32 on CPU)", choices=DTYPES
    )

    quantize: str = option(
        "none",
        "IB_QUANTIZE",
        "int8: the trunks' Linear layers in dynamic int8 (CPU, float32 only; a large "
        "checkpoint's int8 weights are kept beside it as CHECKPOINT.int8 for later loads)",
        choices=QUANTIZE_MODES,
    )

    image_decode: str = option(
        "exact",
        "IB_IMAGE_DECODE",
        "exact: every pixel, as the reference; fast: large JPEGs decoded at 1/2-1/8 scale",
        choices=IMAGE_DECODE_MODES,
    )

    decode_processes: int = option(
        0,
        "IB_DECODE_PROCESSES",
        "processes that decode audio and video off the GIL (0: in the decoding threads)",
    )

    max_item_mb: int = option(
        1024,
        "IB_MAX_ITEM_MB",
        "most memory one item's decoding may take, judged from its header; beyond it refused",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.decode_processes < 0:
            raise ValueError(f"IB_DECODE_PROCESSES must be 0 or more, not {self.decode_processes}")
        if self.max_item_mb < 1:
            raise ValueError(f"IB_MAX_ITEM_MB must be at least 1, not {self.max_item_mb}")
        if self.quantize == "int8" and self.dtype not in (None, "float32"):
            raise ValueError(f"IB_QUANTIZE=int8 computes in float32, not IB_DTYPE={self.dtype}")

    @property
    def max_item_bytes(self) -> int:
        return self.max_item_mb << 20

    def config(self) -> ImageBindConfig:
        """The architecture (cheap: reads a JSON file, builds nothing)."""
        from .model import get_config

        return get_config(self.model)

    def resolved_device(self, device: str | None = None) -> torch.device:
        """``device`` or the configured one; none means CUDA when present, else the CPU."""
        import torch

        wanted = device or self.device
        if wanted is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolved = torch.device(wanted)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {wanted!r} requested but CUDA is not available")
        return resolved

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype or default_dtype(device))

    def checkpoint_path(self):
        """The weights file to load (None with random weights), or CheckpointError saying how."""
        from .checkpoints import resolve_checkpoint

        return None if self.random_weights else resolve_checkpoint(self.checkpoint)

    def create(self, device: str | None = None, checkpoint=None) -> ImageBind:
        """The model on its device in its dtype. ``checkpoint`` overrides the resolved path."""
        from .model import create_model

        target = self.resolved_device(device)
        if self.quantize == "int8" and target.type != "cpu":
            raise ValueError(
                f"IB_QUANTIZE=int8 runs on the CPU, not {target}; on a GPU use float16 instead"
            )
        weights = checkpoint if checkpoint is not None else self.checkpoint_path()
        return create_model(
            self.model,
            checkpoint=weights,
            random_seed=0 if weights is None else None,
            device=target,
            dtype=self.torch_dtype(target),
            quantize=self.quantize,
        )
