"""``ib-query``: near-media, near-text and composed search in a collection, from the command line.

One ``--near-*`` item is embedded by Weaviate's vectorizer module; several
(repeated or mixed, optionally weighted) are embedded by our inference server
and added: :func:`pipelines.near.compose`. Without ``--weaviate-url`` it uses
the local stack on its data directory: the ``ib-stack`` running there, else
one it starts, queries and stops again (:func:`pipelines.stack.stack_for`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from ib_vectorizer.options import ModelOptions, add_flags, from_sources
from ib_vectorizer.retry import Backoff, call_with_retries, first_line

from .command import (
    DATA_DIR_HELP,
    CommandError,
    CommandParser,
    add_weaviate_flags,
    console_logging,
    fail,
)
from .connection import connect_first, node_unreachable, parse_nodes
from .near import (
    NEAR_KINDS,
    NoSuchCollection,
    collection_names,
    hybrid,
    near,
    near_composed,
    open_collection,
    where_filter,
)
from .schema import CONTENT_HASH, SEGMENT_END, SEGMENT_START


class _QueryItem(argparse.Action):
    """``--near-KIND VALUE``: appends ``(KIND, VALUE)`` to ``items``, in the order given."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (self.const, value)])


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="ib-query",
        description="Search a multi2vec-bind collection by media or text, or by several "
        "items at once (their vectors added).",
    )
    parser.add_argument("--collection", required=True)
    for name in NEAR_KINDS:
        metavar = "TEXT" if name == "text" else "FILE"
        parser.add_argument(
            f"--near-{name}",
            action=_QueryItem,
            const=name,
            dest="items",
            metavar=metavar,
            help=f"query by {name} (repeatable; mix kinds to compose a query)",
        )
    parser.add_argument(
        "--weights",
        help="W1,W2,...: one weight per --near-* item, in the order given (negative "
        "subtracts; default all 1)",
    )
    parser.add_argument(
        "--vectorizer-url",
        help="our inference server, which embeds a composed query's items (default: the "
        "local stack's)",
    )
    parser.add_argument(
        "--hybrid",
        type=float,
        metavar="ALPHA",
        help="with one --near-text: Weaviate's hybrid search, keywords (BM25) fused with the "
        "vector search; ALPHA 1 is vector only, 0 keywords only",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="PROP=VALUE",
        help="only objects whose PROP equals VALUE (repeatable, all must hold; on an array "
        "property such as labels, any element)",
    )
    parser.add_argument(
        "--target-vector",
        help="the named vector to search (default: the collection's ImageBind vector)",
    )
    parser.add_argument("--tenant", help="the tenant of a multi-tenant collection")
    parser.add_argument("--limit", type=int, default=10)
    add_weaviate_flags(
        parser, "replicas that must answer alike: ONE keeps answering while nodes are down"
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    add_flags(parser.add_argument_group("the local stack's model"), ModelOptions)
    parser.add_argument("--json", action="store_true", help="one JSON object per hit")
    return parser


def connect(args: argparse.Namespace, resources: ExitStack):
    """A client for --weaviate-url, or for the local stack on --data-dir, running or started
    (and stopped) here, whose server then embeds a composed query's items, unless
    --vectorizer-url says otherwise."""
    if args.weaviate_url:
        nodes = parse_nodes(args.weaviate_url, args.grpc_port)
        try:
            client, _ = connect_first(nodes, args.weaviate_api_key)
        except Exception as err:
            reason = first_line(err)
            raise CommandError(f"cannot reach Weaviate at {args.weaviate_url}: {reason}") from None
    else:
        from .stack import StackBusy, StackError, stack_for

        model = from_sources(ModelOptions, args)
        try:
            stack = resources.enter_context(stack_for(args.data_dir, model, args.weaviate_api_key))
        except StackBusy as err:
            raise CommandError(str(err)) from None
        except StackError as err:
            raise CommandError(f"cannot start the local stack: {err}") from None
        client, _ = connect_first(stack.nodes, stack.api_key)
        args.vectorizer_url = args.vectorizer_url or stack.endpoints.vectorizer
    resources.callback(client.close)
    return client


def search(client, args: argparse.Namespace) -> list[dict]:
    try:
        collection = open_collection(client, args.collection, args.consistency_level)
    except NoSuchCollection as err:
        raise CommandError(f"{err} (collections: {collection_names(client)})") from None
    if args.tenant:
        collection = collection.with_tenant(args.tenant)
    options = {
        "limit": args.limit,
        "filters": where_filter(collection, args.where),
        "target_vector": args.target_vector,
    }
    if args.hybrid is not None:
        if [kind for kind, _ in args.items] != ["text"] or args.weights is not None:
            raise CommandError("--hybrid searches one --near-text (keywords need text)")
        return hybrid(collection, args.items[0][1], args.hybrid, **options)
    items = [(kind, read_item(kind, value)) for kind, value in args.items]
    weights = parse_weights(args.weights, len(items))
    if len(items) == 1 and weights is None:  # Weaviate's vectorizer module embeds it
        kind, value = items[0]
        try:
            return near(collection, kind, value, **options)
        except Exception as err:
            if kind == "text" or transient(err):
                raise
            raise CommandError(
                f"{args.items[0][1]}: Weaviate's vectorizer could not use it as {kind} "
                f"({first_line(err)})"
            ) from None
    if not args.vectorizer_url:
        raise CommandError(
            "a composed query needs its items' vectors: pass --vectorizer-url (the inference "
            "server Weaviate uses), or query the local stack with --data-dir"
        )
    return near_composed(
        collection, items, vectorizer_url=args.vectorizer_url, weights=weights, **options
    )


def read_item(kind: str, value: str) -> str | bytes:
    """A query item's content: the text itself, or the bytes of the file it names."""
    if kind == "text":
        return value
    try:
        return Path(value).read_bytes()
    except OSError as err:
        raise CommandError(f"cannot read {value}: {err.strerror}") from None


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``--weights W1,W2,...`` for ``count`` items; CommandError if it does not fit."""
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise CommandError(f"--weights {text!r}: expected numbers like 1,0.5,-0.3") from None
    if len(weights) != count:
        raise CommandError(f"--weights gives {len(weights)} weights for {count} --near-* items")
    return weights


# A node that has just died is still asked for its shards (and, if it led the Raft
# group, for the schema) until the others notice, seconds later: a query failing
# on the way is asked again rather than reported.
QUERY_BACKOFF = Backoff(attempts=6, base_s=0.5, max_s=8.0)


def transient(err: Exception) -> bool:
    """Worth asking again: a server-side (5xx) or connection failure, not a bad query."""
    from weaviate.exceptions import UnexpectedStatusCodeError

    if isinstance(err, UnexpectedStatusCodeError):
        return err.status_code >= 500
    return node_unreachable(err)


HIDDEN = (CONTENT_HASH,)  # bookkeeping the table leaves out (--json keeps it)


def print_hits(hits: list[dict], as_json: bool) -> None:
    if as_json:
        for hit in hits:
            print(json.dumps(hit, default=str))
        return
    if not hits:
        print("no results")
        return
    measure = "distance" if "distance" in hits[0] else "score"  # hybrid search: a score
    print(f"{'#':>3}  {measure:>9}  {'id':36}  properties")
    for rank, hit in enumerate(hits, start=1):
        properties = {  # a field this object has no value in is left out
            k: v for k, v in hit["properties"].items() if k not in HIDDEN and v is not None
        }
        moment = time_range(properties)
        props = ", ".join(f"{k}={_short(v)}" for k, v in sorted(properties.items()))
        print(f"{rank:>3}  {hit[measure]:9.5f}  {hit['id']:36}  {moment}{props}")


def time_range(properties: dict) -> str:
    """``"t=120–130 s  "`` for a segment (start and end taken out of ``properties``), else ""."""
    start, end = properties.pop(SEGMENT_START, None), properties.pop(SEGMENT_END, None)
    if start is None or end is None:
        return ""
    return f"t={start:g}–{end:g} s  "


def _short(value: object, width: int = 40) -> str:
    """One line of at most ``width`` characters (line breaks shown as ⏎)."""
    text = " ⏎ ".join(str(value).splitlines()) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    console_logging(logging.WARNING)  # stdout: the hits; stderr: what went wrong, and the stack
    args = build_parser().parse_args(argv)
    if args.limit < 1:
        return fail("ib-query", "--limit must be at least 1")
    if not args.items:
        return fail("ib-query", "give what to search for: --near-text, --near-image, ...")
    try:
        with ExitStack() as resources:
            client = connect(args, resources)
            hits = call_with_retries(
                partial(search, client, args),
                retryable=transient,
                backoff=QUERY_BACKOFF,
                what="the query",
            )
    except (CommandError, ValueError) as err:
        return fail("ib-query", str(err))
    except Exception as err:  # weaviate-client errors: one line, not a traceback
        return fail("ib-query", f"{type(err).__name__}: {first_line(err)}")
    print_hits(hits, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
