"""The model alone, float32 against int8, per modality: ``python -m benchmarks.model_int8``.

For every modality it times the encoder on a batch of ``--items`` inputs
(preprocessed tensors, random but shaped like real ones), once with float32
weights and once with ``IB_QUANTIZE=int8``, at each ``--threads`` count, and
prints items/s, the int8 speed-up and the cosine between the two embeddings
(the lowest over the batch). Items/s at one thread is the per-core figure for
sizing a CPU machine.

Random weights are the default, so imagebind_huge needs no download;
``--checkpoint`` times a weights file loaded the way the server loads it.
Each figure is the median of ``--repeats`` calls after a warm-up; a video
item (15 vision passes) is timed once.

``--reference DIR`` adds Meta's own code, float32, with the same weights:
``DIR`` is the ``imagebind`` package directory of a clone of
facebookresearch/ImageBind (its imports need ``timm``; its data loaders are
not imported). It prints Meta's items/s and ours divided by it.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ib_vectorizer.modalities import Modality, modality_arg

if TYPE_CHECKING:
    from ib_vectorizer.model.imagebind import ImageBind
    from ib_vectorizer.preprocess import Preprocessor

Encode = Callable[[Modality, torch.Tensor], torch.Tensor]


def random_inputs(preprocessor: Preprocessor, modality: Modality, items: int) -> torch.Tensor:
    """Inputs shaped like ``items`` preprocessed ones: normal noise, or token ids for text."""
    shape = preprocessor.example_batch(modality, items).shape
    generator = torch.Generator().manual_seed(0)
    if modality is Modality.TEXT:
        return torch.randint(1, 49407, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def timed_calls(
    encoders: dict[str, Encode],
    modality: Modality,
    batch: torch.Tensor,
    repeats: int,
    warm_up: bool,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Each encoder's median wall time for the batch, and its output.

    The calls are interleaved, so every encoder sees the same load on the
    machine; ``warm_up`` adds one uncounted call each first.
    """
    times: dict[str, list[float]] = {name: [] for name in encoders}
    outputs: dict[str, torch.Tensor] = {}
    if warm_up:
        for encode in encoders.values():
            encode(modality, batch)
    for _ in range(repeats):
        for name, encode in encoders.items():
            started = time.perf_counter()
            outputs[name] = encode(modality, batch)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def ours(model: ImageBind) -> Encode:
    """Our model as an encoder: unit vectors, as the server returns them."""

    @torch.inference_mode()
    def encode(modality: Modality, batch: torch.Tensor) -> torch.Tensor:
        return model.embed(modality.encoder, batch, normalize=True)

    return encode


def load_reference(package_dir: Path) -> Callable[[], torch.nn.Module]:
    """Meta's ``imagebind_huge`` constructor from its package directory, without ``data.py``."""
    if not (package_dir / "models" / "imagebind_model.py").is_file():
        raise SystemExit(f"--reference {package_dir}: no models/imagebind_model.py in it")
    package = types.ModuleType("imagebind")
    package.__path__ = [str(package_dir)]
    sys.modules["imagebind"] = package
    try:
        module = importlib.import_module("imagebind.models.imagebind_model")
    except ImportError as err:
        message = f"--reference: Meta's model code needs {err.name} (pip install it)"
        raise SystemExit(message) from None
    return module.imagebind_huge


def reference(model: torch.nn.Module) -> Encode:
    """Meta's model as an encoder, its outputs normalised like ours."""

    @torch.inference_mode()
    def encode(modality: Modality, batch: torch.Tensor) -> torch.Tensor:
        out = model({modality.encoder: batch})[modality.encoder]
        return torch.nn.functional.normalize(out, dim=-1)

    return encode


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_int8", description=__doc__)
    parser.add_argument("--model", default="imagebind_huge", help="preset name or config.json")
    parser.add_argument("--checkpoint", default=None, help="weights (default: random)")
    parser.add_argument(
        "--modalities",
        nargs="+",
        default=list(Modality),
        type=modality_arg,
        metavar="MODALITY",
        help="image (or vision), text, audio, video, depth, thermal, imu (default: all)",
    )
    parser.add_argument("--items", type=int, default=2, help="items per timed batch")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", type=Path, default=None, help="Meta's imagebind package")
    args = parser.parse_args(argv)

    from ib_vectorizer.bench.report import cpu_model
    from ib_vectorizer.model import create_model
    from ib_vectorizer.preprocess import Preprocessor

    def build(quantize: str) -> ImageBind:
        if args.checkpoint:
            return create_model(args.model, checkpoint=args.checkpoint, quantize=quantize)
        return create_model(args.model, random_seed=0, quantize=quantize)

    fp32 = build("none")
    int8 = build("int8")
    preprocessor = Preprocessor.for_model(fp32.config)
    meta = None
    if args.reference is not None:
        meta = load_reference(args.reference)(pretrained=False).eval()
        meta.load_state_dict(fp32.state_dict(), strict=True)
    encoders = {"fp32": ours(fp32), "int8": ours(int8)}
    if meta is not None:
        encoders["meta"] = reference(meta)

    print(
        f"machine: {cpu_model()}, torch {torch.__version__}, quantized engine "
        f"{torch.backends.quantized.engine}; model {args.model}, {args.items} items per batch, "
        f"median of {args.repeats} (video: 1)"
    )
    header = "| threads | modality | fp32 items/s | int8 items/s | int8 ÷ fp32 | cosine int8·fp32 |"
    rule = "|---:|---|---:|---:|---:|---:|"
    if meta is not None:
        header += " Meta fp32 items/s | ours fp32 ÷ Meta | cosine ours·Meta |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for threads in args.threads:
        torch.set_num_threads(threads)
        warm: set[str] = set()
        for modality in args.modalities:
            batch = random_inputs(preprocessor, modality, args.items)
            # A video item is 15 vision passes: once is enough, and image warmed them up.
            repeats = 1 if modality is Modality.VIDEO else args.repeats
            seconds, outputs = timed_calls(
                encoders, modality, batch, repeats, warm_up=modality.encoder not in warm
            )
            warm.add(modality.encoder)
            rate = {name: args.items / value for name, value in seconds.items()}
            cosine = torch.nn.functional.cosine_similarity(outputs["int8"], outputs["fp32"])
            row = (
                f"| {threads} | {modality.label} | {_rate(rate['fp32'])} | {_rate(rate['int8'])} "
                f"| {rate['int8'] / rate['fp32']:.2f}× | {cosine.min().item():.4f} |"
            )
            if meta is not None:
                agree = torch.nn.functional.cosine_similarity(outputs["fp32"], outputs["meta"])
                row += (
                    f" {_rate(rate['meta'])} | {rate['fp32'] / rate['meta']:.2f}× "
                    f"| {agree.min().item():.6f} |"
                )
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
