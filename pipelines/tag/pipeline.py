"""The ib-tag pipeline: read stored vectors → score labels → update two properties.

Built from the public Beam pieces: :class:`~pipelines.beam.ReadFromWeaviate`
reads each object's ``modality`` and its stored vector (no media property is
read), batches are scored against the label vectors the launcher embedded
(:func:`pipelines.labels.tag_properties`), and each object gets ``labels``
and ``label_scores`` by a partial update (Weaviate's PATCH): its other
properties stay as they are, and nothing is decoded or embedded. The update
carries the object's stored vectors, every named vector it has: Weaviate
re-vectorizes a patched object whose vectors are left out (our server would
embed its media again). Objects without a vector, and updates Weaviate refuses, become
:class:`~pipelines.beam.Failure`\\ s. The command line is :mod:`.command`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import numpy as np

from ib_vectorizer.retry import first_line
from ib_vectorizer.zero_shot import LabelScorer

from ..beam.counters import Counter
from ..beam.failures import FAILURES, Failure
from ..beam.read import ReadFromWeaviate
from ..beam.target import CollectionDoFn, WeaviateTarget
from ..labels import LabelSet, scored_as, tag_properties
from ..schema import MODALITY, SOURCE_ID

NAMESPACE = "ib_tag"
COUNTERS = ("read", "tagged", "updated", "failed")


def _name(record: dict[str, Any]) -> str:
    return str(record["properties"].get(SOURCE_ID) or record["uuid"])


class _Score(beam.DoFn):
    """A batch of stored objects → ``(uuid, {labels, label_scores})`` each; an object with
    no usable vector → a Failure."""

    def __init__(self, scorer: LabelScorer, label_set: LabelSet, vector_name: str) -> None:
        self.scorer = scorer
        self.label_set = label_set
        self.vector_name = vector_name
        self.tagged = Counter(NAMESPACE, "tagged")
        self.failed = Counter(NAMESPACE, "failed")

    def process(self, batch: list[dict[str, Any]]):
        usable, vectors = [], []
        for record in batch:
            vector = record.get("vector", {}).get(self.vector_name)
            array = None if not vector else np.asarray(vector, dtype=np.float32)
            present = record["properties"].get(MODALITY)
            reason = None
            if array is None or not np.isfinite(array).all() or not array.any():
                reason = f"it has no usable {self.vector_name!r} vector to tag from"
            elif not present or scored_as(present) not in self.scorer.classes:
                reason = f"its {MODALITY!r} property is missing: ingest it again with ib-ingest"
            if reason is not None:
                self.failed.inc()
                failure = Failure(_name(record), record["uuid"], "tag", reason)
                yield beam.pvalue.TaggedOutput(FAILURES, failure)
                continue
            usable.append(record)
            vectors.append(array)
        if not usable:
            return
        modalities = [record["properties"].get(MODALITY) or [] for record in usable]
        tags = tag_properties(self.scorer, self.label_set, np.stack(vectors), modalities)
        for record, properties in zip(usable, tags, strict=True):
            self.tagged.inc()
            yield record["uuid"], _name(record), properties, record["vector"]


class _Update(CollectionDoFn):
    """``(uuid, name, properties, vectors)`` batches → a partial update of each object (its
    vectors as they are stored), a few at once."""

    def __init__(self, target: WeaviateTarget, concurrency: int) -> None:
        super().__init__(target)
        self.concurrency = concurrency
        self.updated = Counter(NAMESPACE, "updated")
        self.failed = Counter(NAMESPACE, "failed")

    def setup(self) -> None:
        super().setup()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ib-tag-update")
        self._warm = False

    def teardown(self) -> None:
        self._pool.shutdown(wait=True)
        super().teardown()

    def process(self, batch: list[tuple[str, str, dict, dict]]):
        def update(item: tuple[str, str, dict, dict]) -> str | None:
            uuid, _, properties, vectors = item
            try:
                self.call(
                    lambda collection: collection.data.update(
                        uuid=uuid, properties=properties, vector=vectors
                    ),
                    what=f"updating the labels of {uuid}",
                )
            except Exception as err:  # any refusal is this object's failure
                return first_line(str(err)) or type(err).__name__
            return None

        # The first update runs alone: weaviate-client imports modules on first use, and
        # threads importing the same module at once can deadlock in Python's import lock.
        errors = [] if self._warm else [update(item) for item in batch[:1]]
        self._warm = True
        errors += self._pool.map(update, batch[len(errors) :])
        for (uuid, name, *_), error in zip(batch, errors, strict=True):
            if error is None:
                self.updated.inc()
            else:
                self.failed.inc()
                failure = Failure(name, uuid, "update", f"Weaviate refused the update: {error}")
                yield beam.pvalue.TaggedOutput(FAILURES, failure)


def build(
    pipeline: beam.Pipeline,
    target: WeaviateTarget,
    scorer: LabelScorer,
    label_set: LabelSet,
    vector_name: str,
    batch_size: int = 256,
    concurrency: int = 8,
):
    """Add the tagging steps to ``pipeline``; returns the PCollection of failures."""
    read = pipeline | "Read" >> ReadFromWeaviate.from_target(
        target,
        properties=[SOURCE_ID, MODALITY],
        include_vector=True,  # every named vector: the update must carry them all
        metrics_namespace=NAMESPACE,
    )
    scored = (
        read
        | "ScoreBatches" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
        | "Score"
        >> beam.ParDo(_Score(scorer, label_set, vector_name)).with_outputs(FAILURES, main="tags")
    )
    updated = (
        scored.tags
        | "UpdateBatches" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
        | "Update" >> beam.ParDo(_Update(target, concurrency)).with_outputs(FAILURES, main="done")
    )
    return (scored[FAILURES], updated[FAILURES]) | "AllFailures" >> beam.Flatten()
