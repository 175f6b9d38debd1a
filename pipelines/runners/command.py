"""``ib-runner``: a local Flink or Spark cluster for ``ib-ingest``, one command each.

    ib-runner start flink|spark [--workers N] [--slots S] [--job-port P] --dir D
    ib-runner status --dir D
    ib-runner stop --dir D

``start`` prints what runs where, then, as its last line, the ``ib-ingest``
flags that send a job to the cluster.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..command import CommandParser, console_logging, fail
from .cluster import ENGINES, RunnerError, load_cluster, start_cluster

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="ib-runner",
        description="A Flink or Spark cluster on this machine with Beam's job server, to run "
        "ib-ingest on a real distributed runner before sending it to your own cluster.",
    )
    commands = parser.add_subparsers(dest="action", required=True)
    start = commands.add_parser(
        "start",
        help="provision what is missing, start the cluster, print the ib-ingest flags",
    )
    start.add_argument("engine", choices=ENGINES)
    start.add_argument("--workers", type=int, default=2, help="TaskManagers or workers (2)")
    start.add_argument("--slots", type=int, default=2, help="task slots or cores each (2)")
    start.add_argument(
        "--job-port", type=int, default=8099, help="Beam's job server port (default 8099)"
    )
    for action in (start, commands.add_parser("stop", help="stop everything start started")):
        action.add_argument("--dir", required=True, type=Path, help="the cluster's folder")
    commands.add_parser("status", help="what runs, and the flags").add_argument(
        "--dir", required=True, type=Path
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.action == "start":
            cluster, what = start_cluster(
                args.engine, args.dir, args.workers, args.slots, args.job_port
            )
            log.info("%s cluster %s", cluster.engine, what)
        else:
            cluster = load_cluster(args.dir.resolve())
            if cluster is None:
                print(f"no cluster in {args.dir}")
                return 0 if args.action == "stop" else 1
            if args.action == "stop":
                stopped = cluster.stop()
                print(f"stopped {cluster.engine}: {', '.join(stopped) or 'nothing was running'}")
                return 0
            if not cluster.running():
                down = [p.role for p in cluster.processes if not p.alive()]
                print(f"{cluster.engine} in {args.dir} is partly down: {', '.join(down)}")
                return 1
    except RunnerError as err:
        return fail("ib-runner", str(err))
    print(
        f"{cluster.engine}: {cluster.workers} workers x {cluster.slots} slots; web UI "
        f"{cluster.web_ui}; job server {cluster.job_endpoint}; logs {cluster.directory}/logs"
    )
    print(" ".join(shlex.quote(flag) for flag in cluster.ingest_flags()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
