"""What ``ib-stack``, ``ib-query``, ``ib-ingest`` and ``ib-tag`` share as commands.

A start-up problem (a bad flag, a missing checkpoint, a Weaviate that does not
answer) is one line on stderr naming the problem and what to do, exit status
1, found before anything is started. Logging goes to stderr in one format
even though importing Beam has already configured the root logger.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ib_vectorizer.logs import LOG_FORMAT, quiet_ffmpeg_logs
from ib_vectorizer.options import ModelOptions
from ib_vectorizer.server_process import http_status

from .connection import CONSISTENCY_LEVELS
from .paths import has_scheme

OUR_LOGGERS = ("ib_ingest", "ib_tag", "ib_vectorizer", "pipelines")
STACK_LOGGER = "pipelines.stack"
DATA_DIR_HELP = (
    "the local stack's data directory: the ib-stack running there is used, else a stack is "
    "started for this command"
)


class CommandError(Exception):
    """A problem worth one line to the user: what is wrong and what to do."""


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit status 1 (not usage and 2).

    Flags are never abbreviated: ``ib-ingest`` passes the flags it does not know
    to Beam, and ``--runner`` must reach Beam, not match ``--runner-metrics-url``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_weaviate_flags(parser, consistency_help: str, url_group=None) -> None:
    """``--weaviate-url`` (in ``url_group`` if given), ``--grpc-port``, ``--consistency-level``,
    ``--weaviate-api-key``.

    Several nodes of a cluster are ``URL,URL,...`` with one gRPC port for all
    or one per URL; :func:`pipelines.connection.parse_nodes` reads them.
    """
    (url_group or parser).add_argument(
        "--weaviate-url",
        help="a running Weaviate (default: the local stack); several nodes of a cluster as "
        "URL,URL,...: the first that answers, the next when one fails",
    )
    parser.add_argument(
        "--grpc-port",
        default="50051",
        help="Weaviate's gRPC port, or one per --weaviate-url in the same order (default 50051)",
    )
    parser.add_argument(
        "--consistency-level",
        choices=CONSISTENCY_LEVELS,
        default=None,
        help=f"{consistency_help} (Weaviate's default: QUORUM)",
    )
    parser.add_argument(
        "--weaviate-api-key",
        default=os.environ.get("WEAVIATE_API_KEY"),
        help="Weaviate's API key, when it requires one (default: $WEAVIATE_API_KEY)",
    )


def add_target_flags(parser, consistency_help: str) -> None:
    """Where a job's collection is: a running Weaviate (:func:`add_weaviate_flags`) or the
    local stack on ``--data-dir``, one or the other."""
    where = parser.add_mutually_exclusive_group()
    add_weaviate_flags(parser, consistency_help, url_group=where)
    where.add_argument("--data-dir", help=DATA_DIR_HELP)


def add_label_flags(group, required: bool = False) -> None:
    """``--labels FILE``, ``--label-template``, ``--top-k``, ``--min-score``: the zero-shot
    tags of ib-ingest and ib-tag (:class:`pipelines.labels.LabelSet`)."""
    group.add_argument(
        "--labels",
        required=required,
        metavar="FILE",
        help="tag every object with the labels of this file (one per line)",
    )
    group.add_argument(
        "--label-template",
        help="the prompt a label is put into, e.g. 'a photo of a {}.' ('{}': the label as it "
        "is; default: each modality's templates)",
    )
    group.add_argument("--top-k", type=int, default=5, help="labels kept per object (default 5)")
    group.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="keep only labels at least this likely (0 to 1, default 0)",
    )


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (test runners swap it and close the old)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console_logging(level: int = logging.INFO) -> None:
    """Our own log lines on stderr at ``level``, whatever logging an import set up first.

    A library that logs at import time (Beam does) leaves the root logger with a
    plain stderr handler at WARNING, so ``logging.basicConfig`` does nothing and
    INFO lines vanish. Libraries stay at WARNING: their INFO lines (HTTP calls,
    runner chatter) say nothing a user of these commands needs. Which local
    stack a command starts or uses, and how long a start took, is said at any
    ``level``: otherwise a query would sit silent for the 20 s of a start.
    """
    root = logging.getLogger()
    formatter = logging.Formatter(LOG_FORMAT)
    to_stderr = [h for h in root.handlers if type(h) in (logging.StreamHandler, _StderrHandler)]
    if not to_stderr:
        to_stderr = [_StderrHandler()]
        root.addHandler(to_stderr[0])
    for handler in to_stderr:
        handler.setFormatter(formatter)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger(STACK_LOGGER).setLevel(min(level, logging.INFO))
    for logger_name, message in BEAM_NOISE:
        beam_logger = logging.getLogger(logger_name)
        if not any(getattr(f, "message", None) == message for f in beam_logger.filters):
            beam_logger.addFilter(_DropMessage(message))
    quiet_ffmpeg_logs()


# Beam log lines that say nothing a user can act on: (logger, how the message starts).
BEAM_NOISE = (
    # Beam 2.70 flags every generator ``process`` with a bare ``return`` by scanning its
    # source, though a bare ``return`` only ends the generator.
    ("apache_beam.transforms.core", "Using yield and return in the process method"),
    # The failures file of the previous run is replaced: the summary names the new one.
    ("apache_beam.io.filebasedsink", "Deleting "),
    # RunInference's memory metric, on a platform without ``resource`` (logged on the root).
    ("root", "Resource module is not available"),
)


class _DropMessage(logging.Filter):
    """Drop the records of one logger whose message starts with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.message)


def check_checkpoint(model: ModelOptions) -> None:
    """The model's weights are where they are said to be (a gs://-style URI is checked later)."""
    from ib_vectorizer.checkpoints import CheckpointError

    if has_scheme(model.checkpoint):
        return
    try:
        model.checkpoint_path()
        model.config()
    except (CheckpointError, ValueError) as err:
        raise CommandError(str(err)) from None


def check_weaviate(url: str) -> None:
    """Weaviate answers at ``url`` (any HTTP answer will do: it may need an API key)."""
    if http_status(url.rstrip("/") + "/v1/.well-known/live", timeout=5.0) is None:
        raise CommandError(
            f"nothing answers at {url}: start Weaviate there, or fix --weaviate-url "
            "(without it, the local stack is started)"
        )


def run_beam_command(module: str, argv: Sequence[str] | None) -> int:
    """Run ``main(argv)`` of the command ``module`` (``pipelines.ingest.command``), whose
    import pulls in Beam, with logging set up first.

    Importing Beam logs a warning about optional Google Cloud client libraries,
    and Google's client libraries warn about their own support dates (this
    Python, grpcio's); none of it says anything about the job, so the import
    runs with those held back and a user's terminal shows only what the job says.
    """
    import importlib
    import warnings

    console_logging()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
            command = importlib.import_module(module)
    finally:
        root.setLevel(level)
    console_logging()
    return command.main(argv)


# Modules that define a runner's options outside Beam's pipeline_options (imported
# with the runner otherwise, which is after the check); those not installed are skipped.
BEAM_OPTION_MODULES = ("apache_beam.runners.render", "apache_beam.runners.dask.dask_runner")


def beam_flags() -> dict[str, int | str | None]:
    """Every flag of every Beam ``PipelineOptions`` subclass, runners' included, with its
    ``nargs`` (0: takes no value; None: one value; ``?``, ``*``, ``+``: argparse's).

    Beam registers each class's flags through its ``_add_argparse_args``; each runs
    here on a scratch parser of its own, so that two classes naming one flag do not clash.
    """
    import contextlib
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    for module in BEAM_OPTION_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    flags: dict[str, int | str | None] = {}
    seen: set[type] = set()
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        if "_add_argparse_args" not in cls.__dict__:
            continue
        parser = _BeamArgumentParser(add_help=False, allow_abbrev=False)
        cls._add_argparse_args(parser)
        for action in parser._actions:
            for flag in action.option_strings:
                flags.setdefault(flag, action.nargs)
    return flags


def check_beam_options(parser: argparse.ArgumentParser, beam_args: Sequence[str]) -> None:
    """What ``parser.parse_known_args`` left over is all Beam's; CommandError names the first
    flag that neither the command nor Beam knows, with the closest known one.

    Beam drops what it cannot parse, so without this a misspelt flag
    (``--segment-secnds 10``) would run the whole job without it. Both
    ``--flag value`` and ``--flag=value``; the next argument is a flag's value
    (even one starting with ``-``) only if the flag takes one, and an argument
    no flag takes (``--streaming true``) is an error too.
    """
    if not beam_args:
        return
    import difflib

    own = {flag: action.nargs for action in parser._actions for flag in action.option_strings}
    known = {**beam_flags(), **own}
    args = list(beam_args)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            before = args[i - 2] if i >= 2 else None
            why = f" ({before} takes no value)" if known.get(before) == 0 else ""
            raise CommandError(f"unexpected argument {arg!r}{why}")
        name, eq, value = arg.partition("=")
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            raise CommandError(
                f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else "")
            )
        nargs = known[name]
        if eq:
            if nargs == 0:
                raise CommandError(f"{name} takes no value, not {value!r}")
        elif nargs is None or nargs == 1:  # its value, whatever it looks like
            if i == len(args):
                raise CommandError(f"{name} needs a value")
            i += 1
        elif nargs != 0:  # ?, *, +, N: the values up to the next flag, as argparse takes them
            start = i
            while i < len(args) and not args[i].startswith("-"):
                i += 1
                if nargs == "?" or i - start == nargs:
                    break
            if nargs == "+" and i == start:
                raise CommandError(f"{name} needs a value")


def fail(prog: str, message: str) -> int:
    """Print the one line and return the exit status."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 1
