"""Zero-shot classification: which of a list of labels an item of any modality shows.

The reference classifies as CLIP does: each label is put into prompts, the
prompts are embedded by the text encoder, and an item's probabilities are a
softmax over its output times each label's text output. ImageBind's outputs
carry a logit scale each (text: learned, 100 at most; audio 20, depth 5,
thermal 10, IMU 5; vision and video none), so the logit of item *i* and label
*j* is ``s_item · s_text · cos(item_i, label_j)`` (a video's output is the mean
of its views' unit vectors, so its cosine is taken with that mean, as the
reference does).

With several templates a label's text vector is CLIP's prompt ensemble: the
mean of its prompts' unit vectors, made a unit vector again, times the text
scale. The default templates per modality (:data:`TEMPLATES`) follow CLIP's
protocol (class names in short captions that name the medium); they are data,
so a caller can pass its own, and ``"{}"`` uses each label as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .modalities import Modality

TEMPLATES: dict[Modality, tuple[str, ...]] = {
    Modality.VISION: (
        "a photo of a {}.",
        "a bad photo of a {}.",
        "a photo of the large {}.",
        "a photo of the small {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
        "a dark photo of a {}.",
        "a cropped photo of a {}.",
    ),
    Modality.VIDEO: ("a video of a {}.", "a photo of a {}.", "a video of the {}."),
    Modality.AUDIO: ("a sound of a {}.", "the sound of a {}.", "a recording of a {}."),
    Modality.DEPTH: ("a depth photo of a {}.", "a photo of a {}."),
    Modality.THERMAL: ("a thermal photo of a {}.", "an infrared photo of a {}."),
    Modality.IMU: ("a person {}.", "a video of a person {}."),
    Modality.TEXT: ("{}",),
}


def templates_for(modality: Modality | str, templates: Sequence[str] | None) -> tuple[str, ...]:
    """The templates to use: the caller's (each must hold ``{}``) or the modality's."""
    if templates is None:
        return TEMPLATES[Modality.of(modality)]
    chosen = tuple(templates)
    if not chosen:
        raise ValueError("no label template: give at least one, e.g. '{}' for the bare labels")
    for template in chosen:
        if "{}" not in template:
            raise ValueError(f"label template {template!r} has no '{{}}' for the label")
    return chosen


def label_vectors(prompt_units: np.ndarray, num_labels: int, text_scale: float) -> np.ndarray:
    """Unit vectors of every prompt (label-major) → one scaled text vector per label."""
    per_label = prompt_units.reshape(num_labels, -1, prompt_units.shape[-1]).mean(axis=1)
    per_label /= np.linalg.norm(per_label, axis=-1, keepdims=True)
    return (per_label * text_scale).astype(np.float32)


def label_logits(item_outputs: np.ndarray, label_outputs: np.ndarray) -> np.ndarray:
    """The reference's logits: items' scaled outputs times the labels' scaled text outputs."""
    return (item_outputs.astype(np.float64) @ label_outputs.astype(np.float64).T).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for the large logits of scaled text), as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class LabelScorer:
    """Zero-shot scores of stored unit vectors, without the model.

    Holds what :meth:`Embedder.classify` computes from the model: each label's
    scaled text vector per modality (the templates differ by modality) and
    each modality's logit scale. An item's logits are then
    ``scale[m] · unit_vector @ classes[m].T``: for every modality but video
    exactly what ``classify`` computes (a video's output is the mean of its
    views' unit vectors, a little shorter than the unit vector stored).
    """

    labels: tuple[str, ...]
    classes: Mapping[Modality, np.ndarray]  # modality → (labels, dim), text-scaled
    scales: Mapping[Modality, float]  # an item's logit scale (vision and video 1)

    def logits(self, modality: Modality | str, units: np.ndarray) -> np.ndarray:
        """float32 (len(units), len(labels)); :func:`softmax` makes them probabilities."""
        modality = Modality.of(modality)
        if modality not in self.classes:
            raise KeyError(f"no label vectors for {modality.label}")
        return label_logits(units * self.scales[modality], self.classes[modality])


def top_labels(
    logits: np.ndarray, labels: Sequence[str], k: int, min_score: float = 0.0
) -> list[list[tuple[str, float]]]:
    """Per item, its ``k`` likeliest labels with their probabilities, best first, those
    below ``min_score`` left out.

    Ranked by logit: with large logit scales (audio's 20 times text's 100) the
    probabilities of all but the first few labels are 0 in float32 and would
    tie.
    """
    ranked = []
    for row, probabilities in zip(logits, softmax(logits), strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        best = [(labels[j], float(probabilities[j])) for j in order]
        ranked.append([(label, p) for label, p in best if p >= min_score])
    return ranked


def read_labels(path: str) -> list[str]:
    """The labels of a file, one per line (blank lines skipped); ValueError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            labels = [line.strip() for line in handle if line.strip()]
    except OSError as err:
        raise ValueError(f"cannot read the labels file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the labels file {path} is not UTF-8 text") from None
    if not labels:
        raise ValueError(f"the labels file {path} has no labels (one per line)")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"the labels file {path} repeats {', '.join(map(repr, repeated))}")
    return labels
