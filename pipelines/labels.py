"""Zero-shot tags on stored objects: which labels ``ib-ingest --labels`` and ``ib-tag`` store.

Every tagged object holds ``labels`` (TEXT_ARRAY, best first, filterable:
``labels=dog`` matches an element) and ``label_scores`` (NUMBER_ARRAY, the
same order): its ``top_k`` likeliest labels with a probability of at least
``min_score``, the probabilities a softmax over the whole label set.

Tags are computed from the object's stored vector, never from its media, so a
new label set needs no decoding and no embedding: the labels' text vectors
are embedded once (by the launcher) and every object's logits are
``scale · unit(stored vector) @ label vectors`` (see
:class:`ib_vectorizer.zero_shot.LabelScorer`). An object of one modality is
scored as ``Embedder.classify`` scores it, with that modality's templates and
logit scale. An object of several modalities (a photo with a caption) has
one combined vector; it is scored as its first non-text modality in
Weaviate's order (image, audio, video, IMU, thermal, depth), or as text when
it has only text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ib_vectorizer.modalities import Modality
from ib_vectorizer.zero_shot import LabelScorer, read_labels, templates_for, top_labels

from .schema import LABEL_SCORES, LABELS, WEAVIATE_MODALITY_ORDER


@dataclass(frozen=True)
class LabelSet:
    """The labels to tag with and how: what goes into every object's content hash."""

    labels: tuple[str, ...]
    templates: tuple[str, ...] | None = None  # None: each modality's default templates
    top_k: int = 5
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"--top-k must be 1 or more, not {self.top_k}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"--min-score is a probability (0 to 1), not {self.min_score}")
        if self.templates is not None:
            templates_for(Modality.TEXT, self.templates)  # each holds "{}"

    @classmethod
    def from_flags(cls, path: str, template: str | None, top_k: int, min_score: float) -> LabelSet:
        """The flags ``--labels FILE --label-template T --top-k K --min-score P``."""
        templates = None if template is None else (template,)
        return cls(tuple(read_labels(path)), templates, top_k, min_score)

    def identity(self) -> str:
        """A hash of everything that decides an object's tags, for its content hash."""
        described = [list(self.labels), self.templates, self.top_k, self.min_score]
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def with_labels(fingerprint: str, label_set: LabelSet | None) -> str:
    """An ingest's fingerprint that also changes when the label set does."""
    if label_set is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint} {label_set.identity()}".encode()).hexdigest()


def scored_as(modalities: Sequence[str]) -> Modality:
    """The modality an object with fields of ``modalities`` (labels) is scored as."""
    present = {Modality.parse(name) for name in modalities}
    for modality in WEAVIATE_MODALITY_ORDER:
        if modality in present and modality is not Modality.TEXT:
            return modality
    return Modality.TEXT


def tag_properties(
    scorer: LabelScorer,
    label_set: LabelSet,
    vectors: np.ndarray,
    modalities: Sequence[Sequence[str]],
) -> list[dict[str, list]]:
    """``{labels, label_scores}`` for each row of ``vectors`` (stored vectors, any length),
    the row's object having fields of ``modalities[row]``.

    Rows are scored in groups of one modality, one matrix product each.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(modalities):
        raise ValueError(f"{len(vectors)} vectors but {len(modalities)} objects' modalities")
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    units = vectors / np.where(norms > 0, norms, 1.0)
    rows_of: dict[Modality, list[int]] = {}
    for row, present in enumerate(modalities):
        rows_of.setdefault(scored_as(present), []).append(row)
    tags: list[dict[str, list]] = [{} for _ in range(len(vectors))]
    for modality, rows in rows_of.items():
        logits = scorer.logits(modality, units[rows])
        ranked = top_labels(logits, label_set.labels, label_set.top_k, label_set.min_score)
        for row, best in zip(rows, ranked, strict=True):
            tags[row] = {
                LABELS: [label for label, _ in best],
                LABEL_SCORES: [round(score, 6) for _, score in best],
            }
    return tags


def ensure_label_properties(collection) -> None:
    """Add ``labels`` (exact-match TEXT_ARRAY) and ``label_scores`` to a collection lacking them."""
    from weaviate.classes.config import DataType, Property, Tokenization

    present = {p.name for p in collection.config.get().properties}
    if LABELS not in present:
        collection.config.add_property(
            Property(name=LABELS, data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD)
        )
    if LABEL_SCORES not in present:
        collection.config.add_property(Property(name=LABEL_SCORES, data_type=DataType.NUMBER_ARRAY))


def label_scorer(model, label_set: LabelSet, modalities: Sequence[Modality]) -> LabelScorer:
    """Embed the label set's prompts with the model of ``model`` (ModelOptions), for items of
    ``modalities``: the only model work tagging does."""
    from .beam.inference import load_embedder

    embedder = load_embedder(model)
    return embedder.label_scorer(label_set.labels, modalities, label_set.templates)
