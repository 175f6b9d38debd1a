"""``ib-ingest``: the command line of the ingestion job (the flow is :mod:`.pipeline`).

    ib-ingest --input SRC --collection C [--embed local|server|weaviate] [Beam options...]

Runs on this machine with the DirectRunner, and unchanged on Dataflow, Flink
or Spark (pass ``--runner`` and that runner's options). It checks everything
it can before the job starts, creates the collection, runs the job with a
progress line, and closes with a summary of exact counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
)

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
    console_logging,
    fail,
)
from ..connection import parse_nodes
from ..job_progress import ProgressReporter
from ..labels import LabelSet, ensure_label_properties, label_scorer, with_labels
from ..schema import (
    CONTENT_HASH,
    DEFAULT_VECTOR_NAME,
    EXACT_TEXT,
    MODALITY,
    MediaField,
    create_bind_collection,
    uri_property,
)
from ..stack import StackError
from .inputs import InputSpec, parse_modality_columns, plan_fields
from .progress import (
    COUNTERS,
    NAMESPACE,
    WORKERS_NAMESPACE,
    progress_line,
    workers_by_stage,
)
from .tally import CountInto, read_tally, tally_folder

log = logging.getLogger("ib_ingest")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="ib-ingest",
        description="Embed a dataset of images, video, text, audio, depth, thermal and IMU "
        "with ImageBind and write it into Weaviate. Beam's options "
        "(--runner, ...) are passed on; anything else is an error.",
    )
    p.add_argument(
        "--input", required=True, help="a directory tree, or a Parquet/CSV/JSONL manifest"
    )
    p.add_argument("--collection", required=True)
    p.add_argument("--id-column", default="id")
    p.add_argument("--modality-columns", default="", help="e.g. image=photo,audio=clip")
    add_target_flags(p, "replicas that must acknowledge each write and look-up")
    p.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        help="a new collection keeps each shard on this many nodes (Weaviate's default 1)",
    )
    p.add_argument(
        "--tenant",
        help="write into this tenant of a multi-tenant collection (made, and the tenant, if "
        "missing)",
    )
    p.add_argument("--embed", choices=("local", "server", "weaviate"), default="local")
    p.add_argument("--vectorizer-url", help="for --embed server (default: the local stack's)")
    add_flags(
        p.add_argument_group("model (--embed local, and the local stack's server)"), ModelOptions
    )
    p.add_argument(
        "--dead-letter",
        default="ib-ingest-failures.jsonl",
        help="JSONL or .parquet file for items that failed, replaced each run "
        "(default: ./ib-ingest-failures.jsonl)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="objects per Weaviate write")
    p.add_argument(
        "--max-batch-views",
        type=int,
        default=64,
        help="encoder passes per model batch (audio 3, video 15)",
    )
    p.add_argument("--weights", default="", help="field weights, e.g. image=0.7,text=0.3")
    p.add_argument(
        "--vector-per-field",
        action="store_true",
        help="also store each media field's own vector, named after the field, to search one "
        "modality alone (ib-query --target-vector FIELD); every object needs every field",
    )
    p.add_argument(
        "--store-uri",
        action="store_true",
        help="store each media's source URI (<field>_uri) instead of its bytes",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-embed and rewrite every object (default: only new and changed ones)",
    )
    p.add_argument(
        "--delete-missing",
        action="store_true",
        help="delete the collection's objects whose source is no longer in the input",
    )
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=10.0,
        help="how often a progress line goes to stderr (default 10)",
    )
    p.add_argument(
        "--segment-seconds",
        type=float,
        help="cut each audio and video file into segments of this many seconds, one object "
        "each (id: source#t=start,end); needs --embed local",
    )
    p.add_argument(
        "--segment-overlap",
        type=float,
        default=0.0,
        help="seconds each segment overlaps the one before (default 0)",
    )
    add_label_flags(p.add_argument_group("zero-shot tags (stored as labels and label_scores)"))
    p.add_argument(
        "--runner-metrics-url",
        help="a Flink or Spark UI to read the job's counters from while it runs, for the "
        "progress line (ib-runner prints it; without it, on those runners, see their UI)",
    )
    p.add_argument(
        "--metrics-json",
        help="write the job's counters (and per-modality decode/embed ms) to this JSON file",
    )
    p.add_argument(
        "--share-model-across-processes",
        action="store_true",
        help="one model copy per machine (GPU workers with several SDK processes)",
    )
    return p


def parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--weights: {part!r} is not NAME=NUMBER") from None
    return weights


def media_fields(spec: InputSpec, weights: dict[str, float]) -> tuple[MediaField, ...]:
    planned = plan_fields(spec)
    unknown = sorted(set(weights) - set(planned))
    if unknown:
        raise ValueError(f"--weights names unknown field(s) {unknown}; fields: {sorted(planned)}")
    if weights and set(weights) != set(planned):
        raise ValueError(f"--weights must weigh every field: {sorted(planned)}")
    return tuple(MediaField(n, m, weights.get(n)) for n, m in sorted(planned.items()))


def summarize(
    result,
    started: float,
    dead_letter: str,
    exact: dict[str, int] | None = None,
    stack_start_s: float | None = None,
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Log the closing line; the job's counters, and the work per worker process by stage.

    The job's time is the closing line's; starting the local stack for it
    (``stack_start_s``) is said beside it, since a user waited for that too.

    ``exact`` counts (:mod:`.tally`) replace the runner's counters of the same
    names, which may count a retried bundle twice. Skipped files are named by
    kind where the runner reports string sets (:class:`.progress.SkippedKinds`).
    """
    from apache_beam.metrics.metric import MetricsFilter

    from .progress import SKIPPED_KINDS, skipped_note

    counts = dict.fromkeys(COUNTERS, 0)  # and the per-modality stage times (progress.StageTime)
    per_worker: dict[str, int] = {}
    metrics = result.metrics().query(MetricsFilter())
    skipped_kinds: set[str] = set()
    for found in metrics.get("string_sets", ()):
        if (found.key.metric.namespace, found.key.metric.name) == (NAMESPACE, SKIPPED_KINDS):
            skipped_kinds.update(found.committed or found.attempted or ())
    for counter in metrics["counters"]:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        value = counter.committed or counter.attempted or 0
        if namespace == NAMESPACE:
            counts[name] = counts.get(name, 0) + value
        elif namespace == WORKERS_NAMESPACE:
            per_worker[name] = per_worker.get(name, 0) + value
    counts.update(exact or {})
    workers = workers_by_stage(per_worker)
    elapsed = time.perf_counter() - started
    failed = counts["failed"] + counts["read_failed"]
    segments = f" (cut into {counts['segments']} segments)" if counts["segments"] else ""
    skipped = ""
    if counts["skipped"]:
        note = skipped_note(skipped_kinds)
        skipped = f", skipped {counts['skipped']}" + (f" ({note})" if note else "")
    log.info(
        "done in %.1f s%s: read %d%s, embedded %d, written %d, failed %d, unchanged %d, "
        "deleted %d%s (%.1f objects/s)%s",
        elapsed,
        "" if stack_start_s is None else f" (stack start {stack_start_s:.1f} s)",
        counts["read"],
        segments,
        counts["embedded"],
        counts["written"],
        failed,
        counts["unchanged"],
        counts["deleted"],
        skipped,
        counts["written"] / max(elapsed, 1e-9),
        f"; failures in {dead_letter}" if failed else "",
    )
    if any(len(processes) > 1 for processes in workers.values()):
        log.info(
            "worker processes: %s",
            ", ".join(f"{stage} {len(processes)}" for stage, processes in sorted(workers.items())),
        )
    return counts, workers


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()
    from ..command import check_beam_options

    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        check_beam_options(parser, beam_args)  # a misspelt flag would go to Beam, lost
        check_runner_options(beam_args)
        spec, fields, model, labels = check_start(args)
        return run(args, beam_args, spec, fields, model, labels)
    except (CommandError, StackError, ValueError) as err:
        return fail("ib-ingest", str(err))


def label_set_of(args) -> LabelSet | None:
    """The ``--labels`` flags as a LabelSet (None without ``--labels``)."""
    if args.labels is None:
        return None
    if args.embed == "weaviate":
        raise CommandError(
            "--labels tags objects from the vectors the job makes: use --embed local or "
            "server, or run ib-tag after this ingest"
        )
    return LabelSet.from_flags(args.labels, args.label_template, args.top_k, args.min_score)


def check_start(
    args,
) -> tuple[InputSpec, tuple[MediaField, ...], ModelOptions, LabelSet | None]:
    """Everything that can be checked before anything starts; CommandError/ValueError if not."""
    from ib_vectorizer.preprocess import Preprocessor  # torch: imported once --help is past

    from .segments import parse_rule

    spec = InputSpec(args.input, args.id_column, parse_modality_columns(args.modality_columns))
    fields = media_fields(spec, parse_weights(args.weights))
    if args.embed == "weaviate" and args.store_uri:
        raise CommandError("--embed weaviate needs the media in Weaviate; drop --store-uri")
    if args.progress_seconds <= 0:
        raise CommandError("--progress-seconds must be positive")
    if parse_rule(args.segment_seconds, args.segment_overlap) and args.embed != "local":
        raise CommandError(
            "--segment-seconds cuts and embeds segments in the job itself: use --embed local "
            "(a server and Weaviate embed whole files)"
        )
    if args.vector_per_field and (spec.kind == "directory" or args.segment_seconds):
        raise CommandError(
            "--vector-per-field needs objects that hold every media field (Weaviate refuses an "
            "object without a vector under each field's name); a directory's files and "
            "segments hold one field each, whose vector is the object's own: use a manifest, "
            "or search one modality with ib-query --where modality=..."
        )
    model = from_sources(ModelOptions, args)
    if args.replication_factor is not None and args.replication_factor < 1:
        raise CommandError(f"--replication-factor must be 1 or more, not {args.replication_factor}")
    if args.weaviate_url:
        if args.embed == "server" and not args.vectorizer_url:
            raise CommandError("--embed server with --weaviate-url needs --vectorizer-url")
        for url, _ in parse_nodes(args.weaviate_url, args.grpc_port):
            check_weaviate(url)
    labels = label_set_of(args)
    if args.embed == "local" or args.labels:  # our model embeds (a stack started checks its own)
        check_checkpoint(model)
    if args.embed == "local":
        Preprocessor.from_options(model)  # a geometry preprocessing cannot follow
    return spec, fields, model, labels


def check_runner_options(beam_args: list[str]) -> None:
    """Refuse Beam options known to lose objects; CommandError says what to use instead.

    The DirectRunner's multi-threaded mode (``--direct_running_mode
    multi_threading`` with more than one worker) dropped whole bundles after
    the reshuffle here: of 100,000 files, 1,106 and then 313 never reached
    the first step, silently. The default mode and real runners do not.
    """
    from apache_beam.options.pipeline_options import DirectOptions

    direct = PipelineOptions(beam_args).view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and (direct.direct_num_workers or 1) > 1:
        raise CommandError(
            "--direct_running_mode multi_threading with several workers loses objects at scale "
            "(whole bundles after the reshuffle); run the DirectRunner in its default mode, "
            "or a real runner (--runner PrismRunner, Flink, Spark, Dataflow)"
        )


def run(
    args,
    beam_args: list[str],
    spec: InputSpec,
    fields: tuple[MediaField, ...],
    model: ModelOptions,
    labels: LabelSet | None,
) -> int:
    from contextlib import ExitStack

    from .incremental import model_fingerprint
    from .pipeline import IngestConfig, build
    from .segments import parse_rule

    with ExitStack() as resources:
        target, vectorizer, stack_start_s = open_target(args, model, resources)
        rule = parse_rule(args.segment_seconds, args.segment_overlap)
        prepare_collection(
            target,
            fields,
            args.store_uri,
            segmented=rule is not None,
            replication_factor=args.replication_factor,
            input_spec=spec,
            tagged=args.labels is not None,
            field_vectors=args.vector_per_field,
        )
        meta = fetch_meta(vectorizer) if vectorizer and args.embed != "local" else None
        scorer = None
        if labels is not None:
            embedding = time.perf_counter()
            scorer = label_scorer(model, labels, sorted({f.modality for f in fields}))
            log.info(
                "embedded %d labels in %.1f s", len(labels.labels), time.perf_counter() - embedding
            )
        config = IngestConfig(
            spec=spec,
            collection=args.collection,
            embed=args.embed,
            fields=fields,
            model=model,
            vectorizer_url=vectorizer,
            batch_size=args.batch_size,
            max_batch_views=args.max_batch_views,
            store_uri=args.store_uri,
            share_model=args.share_model_across_processes,
            fingerprint=with_labels(
                model_fingerprint(args.embed, model, fields, meta, args.vector_per_field), labels
            ),
            force=args.force,
            delete_missing=args.delete_missing,
            segments=rule,
            field_vectors=args.vector_per_field,
            labels=labels,
            label_scorer=scorer,
        )
        started = time.perf_counter()
        beam_args, job_name = with_job_name(beam_args, args.collection)
        options = PipelineOptions(beam_args, save_main_session=False)
        pipeline = beam.Pipeline(options=options)
        counted: dict[str, list] = {}
        write_failures(build(pipeline, config, target, counted), args.dead_letter)
        folder = tally_folder(
            options.view_as(GoogleCloudOptions).temp_location,
            options.view_as(PortableOptions).environment_type,
        )
        tally = FileSystems.join(folder, f"{job_name}-tally.csv") if folder else None
        if tally:
            _ = pipeline | "Tally" >> CountInto(counted, tally)
        with ProgressReporter(
            args.progress_seconds,
            job_counts(args, beam_args, job_name),
            namespace=NAMESPACE,
            counters=COUNTERS,
            line=progress_line,
            logger=log,
        ):
            result = pipeline.run()
            result.wait_until_finish()
        exact = read_tally(tally, counted) if tally else None
        if folder and not options.view_as(GoogleCloudOptions).temp_location:
            shutil.rmtree(folder, ignore_errors=True)
        counts, workers = summarize(result, started, args.dead_letter, exact, stack_start_s)
        if args.metrics_json:
            elapsed = round(time.perf_counter() - started, 3)
            with open(args.metrics_json, "w") as handle:
                report = {"elapsed_s": elapsed, "counters": counts, "workers": workers}
                json.dump(report, handle, indent=1)
    return 0


def open_target(
    args, model: ModelOptions, resources
) -> tuple[WeaviateTarget, str | None, float | None]:
    """The collection the command's flags name, our inference server's URL, and the seconds
    spent starting the local stack (None when none was started).

    ``--weaviate-url`` names a running Weaviate; without it the command uses the
    local stack on ``--data-dir``: the ``ib-stack`` running there, else one started
    here (and stopped when ``resources`` closes).
    """
    from ..stack import stack_for

    api_key = args.weaviate_api_key
    vectorizer = getattr(args, "vectorizer_url", None)
    stack_start_s = None
    if args.weaviate_url:
        nodes = parse_nodes(args.weaviate_url, args.grpc_port)
    else:
        # ib-tag embeds its labels, ib-ingest its objects unless a server or Weaviate does
        embeds_here = getattr(args, "embed", "local") == "local" or args.labels is not None
        stack = resources.enter_context(stack_for(args.data_dir, model, api_key, embeds_here))
        nodes, stack_start_s = stack.nodes, stack.start_s
        vectorizer = vectorizer or stack.endpoints.vectorizer
        api_key = stack.api_key
    (url, grpc_port), *others = nodes
    target = WeaviateTarget(
        url,
        grpc_port,
        args.collection,
        api_key,
        other_nodes=tuple(others),
        consistency_level=args.consistency_level,
        tenant=args.tenant,
    )
    return target, vectorizer, stack_start_s


def with_job_name(
    beam_args: list[str], collection: str, prog: str = "ib-ingest"
) -> tuple[list[str], str]:
    """Beam's options with a ``--job_name`` (a unique one unless given), and that name.

    The name is how the job's counters are found on a Flink or Spark cluster.
    """

    given = PipelineOptions(beam_args).view_as(GoogleCloudOptions).job_name
    if given:
        return beam_args, given
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = re.sub(r"[^a-z0-9-]+", "-", collection.lower())  # as Dataflow's names must be
    name = f"{prog}-{safe}-{stamp}-{os.urandom(3).hex()}"
    return [*beam_args, f"--job_name={name}"], name


def job_counts(args, beam_args: list[str], job_name: str, namespace: str = NAMESPACE):
    """Where the progress line reads the job's counters (in ``namespace``): None for this
    process's own.

    In-process runners (Direct, Prism) count here; on a portable runner the
    counters are the engine's, read through ``--runner-metrics-url``.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    if args.runner_metrics_url:
        from ..runners.metrics import RunnerMetrics

        metrics = RunnerMetrics(args.runner_metrics_url, job_name)
        return lambda: metrics.counters(namespace)
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"
    if runner.removesuffix("Runner").lower() not in ("direct", "prism", "switching"):
        log.info(
            "the job runs on %s: its progress shows in that runner's UI, or here with "
            "--runner-metrics-url (Flink's or Spark's UI)",
            runner,
        )
    return None


def fetch_meta(vectorizer: str) -> dict | None:
    """The inference server's ``/meta`` (its model and weights), or None if it has none."""
    import urllib.request

    try:
        with urllib.request.urlopen(vectorizer.rstrip("/") + "/meta", timeout=30) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def prepare_collection(
    target: WeaviateTarget,
    fields,
    store_uri: bool,
    segmented: bool = False,
    replication_factor: int | None = None,
    input_spec: InputSpec | None = None,
    tagged: bool = False,
    field_vectors: bool = False,
) -> None:
    """Create the collection with the multi2vec-bind config unless it exists.

    A collection made before content hashes were stored (or by hand), or
    before segments were, gets the properties added, so re-runs can look
    hashes and segments up in it. When objects will store their source URIs
    (``store_uri``, or segments), the folder they are read from (a directory
    input, or a manifest's folder) is recorded as a media root of the
    collection: ``ib-search`` serves stored URIs only from inside those.
    ``tagged``: objects will hold zero-shot tags (the label properties are added).
    ``field_vectors``: a named vector per media field besides the combined one
    (added to an existing collection that lacks them).
    """
    from weaviate.classes.config import DataType, Property, Tokenization

    from ..paths import absolute, dirname
    from ..schema import ensure_tenant, record_media_root
    from .segments import SEGMENTED, segment_properties

    client = target.connect()
    try:
        metadata = {uri_property(f.name): DataType.TEXT for f in fields} if store_uri else {}
        if segmented:
            uris = {uri_property(f.name): DataType.TEXT for f in fields if f.modality in SEGMENTED}
            metadata.update({**uris, **segment_properties()})
        metadata[CONTENT_HASH] = DataType.TEXT
        metadata[MODALITY] = DataType.TEXT_ARRAY
        collection = create_bind_collection(
            client,
            target.collection,
            list(fields),
            metadata,
            DEFAULT_VECTOR_NAME,
            replication_factor,
            multi_tenancy=target.tenant is not None,
            field_vectors=field_vectors,
        )
        if target.tenant is not None:
            ensure_tenant(collection, target.tenant)
        present = {p.name for p in collection.config.get().properties}
        for name, data_type in metadata.items():
            if name not in present and (name in (CONTENT_HASH, MODALITY) or segmented):
                exact = Tokenization.FIELD if name in EXACT_TEXT else None
                collection.config.add_property(
                    Property(name=name, data_type=data_type, tokenization=exact)
                )
        if tagged:
            ensure_label_properties(collection)
        if input_spec is not None and (store_uri or segmented):
            source = absolute(input_spec.path).rstrip("/")
            root = source if input_spec.kind == "directory" else dirname(source)
            record_media_root(collection, root)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
