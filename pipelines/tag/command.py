"""``ib-tag``: the command line of the re-tagging job (the flow is :mod:`.pipeline`).

    ib-tag --collection C --labels FILE [--label-template T] [--top-k K] [--min-score P]
           [--tenant T] [Beam options...]

Gives every object of a collection new zero-shot tags from its stored vector:
the label set's prompts are embedded here, once, by the text encoder; the job
reads vectors, scores them and updates ``labels``/``label_scores`` only. Runs
on the same runners as ``ib-ingest`` (DirectRunner here; ``--runner`` and that
runner's options for Prism, Flink, Spark or Dataflow).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions, add_flags, from_sources

from ..beam.failures import write_failures
from ..beam.target import WeaviateTarget
from ..command import (
    CommandError,
    CommandParser,
    add_label_flags,
    add_target_flags,
    check_checkpoint,
    check_weaviate,
    fail,
)
from ..connection import parse_nodes
from ..job_progress import Progress, ProgressReporter, format_seconds
from ..labels import LabelSet, ensure_label_properties, label_scorer
from ..schema import DEFAULT_VECTOR_NAME, MODALITY
from ..stack import StackError
from .pipeline import COUNTERS, NAMESPACE, build

log = logging.getLogger("ib_tag")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="ib-tag",
        description="Tag every object of a collection with zero-shot labels, from the vectors "
        "Weaviate stores (no media is read or embedded). Beam's options "
        "(--runner, ...) are passed on; anything else is an error.",
    )
    p.add_argument("--collection", required=True)
    add_label_flags(p, required=True)
    p.add_argument("--tenant", help="tag this tenant of a multi-tenant collection")
    add_target_flags(p, "replicas that must acknowledge each update")
    p.add_argument(
        "--vector-name",
        default=DEFAULT_VECTOR_NAME,
        help=f"the named vector tags are computed from (default {DEFAULT_VECTOR_NAME})",
    )
    add_flags(p.add_argument_group("model (the text encoder embeds the labels)"), ModelOptions)
    p.add_argument(
        "--dead-letter",
        default="ib-tag-failures.jsonl",
        help="JSONL or .parquet file for objects that could not be tagged, replaced each run "
        "(default: ./ib-tag-failures.jsonl)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="objects scored at once")
    p.add_argument(
        "--concurrency", type=int, default=8, help="updates in flight per worker (default 8)"
    )
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=10.0,
        help="how often a progress line goes to stderr (default 10)",
    )
    p.add_argument(
        "--runner-metrics-url",
        help="a Flink or Spark UI to read the job's counters from while it runs, for the "
        "progress line (ib-runner prints it)",
    )
    p.add_argument("--metrics-json", help="write the job's counters to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..command import check_beam_options

    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        check_beam_options(parser, beam_args)  # a misspelt flag would go to Beam, lost
        label_set, model = check_start(args)
        return run(args, beam_args, label_set, model)
    except (CommandError, StackError, ValueError) as err:
        return fail("ib-tag", str(err))


def check_start(args) -> tuple[LabelSet, ModelOptions]:
    """Everything that can be checked before anything starts; CommandError/ValueError if not."""
    label_set = LabelSet.from_flags(args.labels, args.label_template, args.top_k, args.min_score)
    if args.progress_seconds <= 0:
        raise CommandError("--progress-seconds must be positive")
    if args.batch_size < 1 or args.concurrency < 1:
        raise CommandError("--batch-size and --concurrency must be 1 or more")
    model = from_sources(ModelOptions, args)
    check_checkpoint(model)
    if args.weaviate_url:
        for url, _ in parse_nodes(args.weaviate_url, args.grpc_port):
            check_weaviate(url)
    return label_set, model


def prepare(target: WeaviateTarget, vector_name: str) -> list[Modality]:
    """Check the collection and add the label properties; the modalities of its objects."""
    from ..near import NoSuchCollection, collection_names, open_collection

    client = target.connect()
    try:
        try:
            collection = open_collection(client, target.collection)
        except NoSuchCollection as err:
            raise CommandError(f"{err} (collections: {collection_names(client)})") from None
        config = collection.config.get()
        if vector_name not in (config.vector_config or {}):
            raise CommandError(
                f"collection {target.collection} has no vector named {vector_name!r}: pass "
                f"--vector-name ({', '.join(sorted(config.vector_config or {})) or 'none'})"
            )
        if config.multi_tenancy_config.enabled != (target.tenant is not None):
            raise CommandError(
                f"collection {target.collection} is multi-tenant: name a tenant (--tenant)"
                if target.tenant is None
                else f"collection {target.collection} is not multi-tenant: drop --tenant"
            )
        if target.tenant is not None and not collection.tenants.exists(target.tenant):
            raise CommandError(f"collection {target.collection} has no tenant {target.tenant!r}")
        ensure_label_properties(collection)
        return stored_modalities(target.collection_of(client))
    finally:
        client.close()


def stored_modalities(collection) -> list[Modality]:
    """The modalities the objects' ``modality`` properties name (each element counted)."""
    from weaviate.classes.aggregate import GroupByAggregate

    grouped = collection.aggregate.over_all(group_by=GroupByAggregate(prop=MODALITY, limit=100))
    found = set()
    for group in grouped.groups:
        values = group.grouped_by.value
        for value in values if isinstance(values, list) else [values]:
            found.add(Modality.parse(str(value)))
    return sorted(found, key=list(Modality).index)


def run(args, beam_args: list[str], label_set: LabelSet, model: ModelOptions) -> int:
    from contextlib import ExitStack

    from ..ingest.command import job_counts, open_target, with_job_name

    started = time.perf_counter()
    with ExitStack() as resources:
        target, _, _ = open_target(args, model, resources)
        modalities = prepare(target, args.vector_name)
        if not modalities:
            log.info("collection %s has no objects to tag", args.collection)
            return 0
        embedding = time.perf_counter()
        scorer = label_scorer(model, label_set, modalities)
        log.info(
            "embedded %d labels for %s in %.1f s",
            len(label_set.labels),
            ", ".join(m.label for m in modalities),
            time.perf_counter() - embedding,
        )
        beam_args, job_name = with_job_name(beam_args, args.collection, prog="ib-tag")
        pipeline = beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False))
        failures = build(
            pipeline,
            target,
            scorer,
            label_set,
            args.vector_name,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )
        write_failures(failures, args.dead_letter)
        with ProgressReporter(
            args.progress_seconds,
            job_counts(args, beam_args, job_name, NAMESPACE),
            namespace=NAMESPACE,
            counters=COUNTERS,
            line=progress_line,
            logger=log,
        ):
            result = pipeline.run()
            result.wait_until_finish()
        counts = summarize(result, started, args.dead_letter)
        if args.metrics_json:
            with open(args.metrics_json, "w") as handle:
                elapsed = round(time.perf_counter() - started, 3)
                json.dump({"elapsed_s": elapsed, "counters": counts}, handle, indent=1)
    return 0


def progress_line(progress: Progress) -> str:
    """Counts, and the update rate over the last half minute."""
    p = progress
    if not p["read"]:
        return f"progress: starting, {format_seconds(p.elapsed_s)}: nothing read yet"
    return (
        f"progress: read {p['read']}, tagged {p['tagged']}, updated {p['updated']}, "
        f"failed {p['failed']}; {p.rate('updated'):.1f} objects/s"
    )


def summarize(result, started: float, dead_letter: str) -> dict[str, int]:
    """Log the closing line; the job's counters (namespace ``ib_tag``)."""
    from apache_beam.metrics.metric import MetricsFilter

    counts = dict.fromkeys(COUNTERS, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = counter.key.metric.name
        counts[name] = counts.get(name, 0) + (counter.committed or counter.attempted or 0)
    elapsed = time.perf_counter() - started
    log.info(
        "done in %.1f s: read %d, tagged %d, updated %d, failed %d (%.1f objects/s)%s",
        elapsed,
        counts["read"],
        counts["tagged"],
        counts["updated"],
        counts["failed"],
        counts["updated"] / max(elapsed, 1e-9),
        f"; failures in {dead_letter}" if counts["failed"] else "",
    )
    return counts
