"""``ib-vectorizer``: embed and classify files, fetch weights, serve Weaviate, benchmark the server.

Each subcommand is a ``add_<name>_parser`` that registers its flags and a
``run_<name>`` that does the work and returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .logs import LOG_FORMAT, quiet_ffmpeg_logs
from .modalities import MODALITY_METAVAR, Modality, modality_arg
from .options import ModelOptions, add_flags, from_sources

log = logging.getLogger("ib_vectorizer")

EXIT_BAD_INPUT = 2
EXIT_SETUP = 1


def load_embedder(args: argparse.Namespace, normalize: bool):
    """Model + embedder from the model flags; raises ValueError/CheckpointError with advice."""
    from .embedder import Embedder

    return Embedder.from_options(from_sources(ModelOptions, args), normalize=normalize)


def add_modality_flag(parser: argparse.ArgumentParser) -> None:
    """``--modality``: the names users write (``image``; ``vision`` too); an unknown name
    is a usage error listing the valid ones."""
    parser.add_argument(
        "--modality",
        required=True,
        type=modality_arg,
        metavar=MODALITY_METAVAR,
        help="what the INPUTs are: image (or vision), text, audio, video, depth, thermal or imu",
    )


def add_embed_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "embed",
        help="embed files (or texts) of one modality into an .npy array",
        description="Embed INPUTs of one modality into float32 (len(INPUT), dim), in input order.",
    )
    add_modality_flag(parser)
    add_flags(parser.add_argument_group("model"), ModelOptions)
    parser.add_argument(
        "--raw-scale",
        action="store_true",
        help="the reference's outputs (unit vector × the modality's logit scale) "
        "instead of unit vectors",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="items per model call (default 8)"
    )
    parser.add_argument("--output", required=True, type=Path, help="where to write the .npy array")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="file paths; for text, the texts"
    )
    parser.set_defaults(run=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .embedder import NonFiniteVectors
    from .errors import InputError

    modality = args.modality
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    embedder = load_embedder(args, normalize=not args.raw_scale)
    vectors = []
    batches = range(0, len(args.inputs), args.batch_size)
    for start in tqdm(
        batches, desc=f"embedding {modality.label}", unit="batch", disable=len(batches) < 2
    ):
        names = args.inputs[start : start + args.batch_size]
        try:
            items = (
                names
                if modality is Modality.TEXT
                else [_read(name, modality, start + i) for i, name in enumerate(names)]
            )
            batch = embedder.preprocessor.load_batch(modality, items, first_index=start)
            try:
                vectors.append(embedder.embed_tensors(modality, batch).numpy())
            except NonFiniteVectors as err:
                row = min(err.reasons)
                raise InputError(modality.value, start + row, err.reasons[row]) from None
        except InputError as err:
            source = args.inputs[err.index]
            where = f"text {err.index}" if modality is Modality.TEXT else source
            print(f"error: {where}: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    result = np.concatenate(vectors).astype(np.float32)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, result)
    log.info("wrote %s: %d × %d float32", args.output, *result.shape)
    return 0


def _read(path: str, modality: Modality, index: int) -> bytes:
    from .errors import InputError

    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InputError(modality.value, index, f"cannot read file ({err.strerror})") from None


def add_classify_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "classify",
        help="zero-shot: the likeliest of a list of labels for each file (or text)",
        description="Rank LABELS for each INPUT of one modality with ImageBind's zero-shot "
        "classification (see docs/zero-shot.md): probabilities from a softmax over the labels.",
    )
    add_modality_flag(parser)
    parser.add_argument("--labels", required=True, help="a text file: one label per line")
    parser.add_argument(
        "--label-template",
        action="append",
        dest="label_templates",
        metavar="TEMPLATE",
        help="a prompt holding {} for the label (repeatable; default: the modality's "
        "templates; '{}': each label as it is)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels shown per input (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per input")
    parser.add_argument("--batch-size", type=int, default=8, help="items per model call")
    add_flags(parser.add_argument_group("model"), ModelOptions)
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="file paths; for text, the texts"
    )
    parser.set_defaults(run=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    import json

    from .errors import InputError
    from .zero_shot import read_labels, templates_for, top_labels

    modality = args.modality
    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top-k and --batch-size must be at least 1")
    labels = read_labels(args.labels)
    templates = templates_for(modality, args.label_templates)
    embedder = load_embedder(args, normalize=True)
    try:
        items = (
            args.inputs
            if modality is Modality.TEXT
            else [_read(name, modality, i) for i, name in enumerate(args.inputs)]
        )
        logits = embedder.zero_shot_logits(modality, items, labels, templates, args.batch_size)
    except InputError as err:
        where = f"text {err.index}" if modality is Modality.TEXT else args.inputs[err.index]
        print(f"error: {where}: {err.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rankings = top_labels(logits, labels, args.top_k)
    for name, ranked in zip(args.inputs, rankings, strict=True):
        if args.json:
            names, scores = [label for label, _ in ranked], [round(p, 6) for _, p in ranked]
            print(json.dumps({"input": name, "labels": names, "scores": scores}))
            continue
        print(name)
        for rank, (label, probability) in enumerate(ranked, start=1):
            print(f"  {rank:>2}. {probability:6.1%}  {label}")
    return 0


def add_download_parser(commands: argparse._SubParsersAction) -> None:
    from .checkpoints import DEFAULT_WEIGHTS, WEIGHTS

    parser = commands.add_parser(
        "download",
        help="fetch the model weights (resumable)",
        description="Download a checkpoint; an interrupted download resumes where it stopped.",
    )
    parser.add_argument("--name", default=DEFAULT_WEIGHTS, choices=sorted(WEIGHTS))
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="destination (default: IB_CHECKPOINT or the cache path)",
    )
    parser.add_argument(
        "--url", default=None, help="a mirror to fetch from instead of the registry URL"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_download)


def run_download(args: argparse.Namespace) -> int:
    from .checkpoints import ensure_downloaded

    path = ensure_downloaded(args.name, dest=args.output, url=args.url, progress=not args.quiet)
    print(path)
    return 0


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    from .serving.settings import add_server_flags

    parser = commands.add_parser(
        "serve",
        help="run the multi2vec-bind inference server for Weaviate",
        description="Serve Weaviate's multi2vec-bind protocol. Every flag has an environment "
        "variable; flags win.",
    )
    add_server_flags(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .serving.server import serve
    from .serving.settings import settings_from

    return asyncio.run(serve(settings_from(args)))


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    from .bench import add_bench_parser as add

    add(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ib-vectorizer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("IB_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    add_embed_parser(commands)
    add_classify_parser(commands)
    add_download_parser(commands)
    add_serve_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import CheckpointError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    quiet_ffmpeg_logs()
    try:
        return args.run(args)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
