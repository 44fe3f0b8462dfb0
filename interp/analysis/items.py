"""What the analyses run on: an image, a question, its reference answer(s), and
optionally the ground-truth boxes of the question-relevant region.

:func:`as_items` turns the synthetic benchmark (a :class:`~interp.data.synthetic.SyntheticVQA`
or a list of its samples), evaluation-task documents, or ``(image, question, answer)``
tuples into :class:`Item` objects, so every analysis has one input type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable

import torch

from ..errors import InputError

Box = tuple[int, int, int, int]


@dataclass
class Item:
    """One analysis sample. ``answers[0]`` is the reference that teacher forcing scores;
    ``score(prediction)`` says whether a generated reply counts as correct (default: the
    synthetic benchmark's normalised match against any reference). ``boxes`` are pixel
    boxes ``(x0, y0, x1, y1)``, exclusive ends, of the question-relevant region."""

    id: str
    image: Any
    question: str
    answers: tuple[str, ...]
    kind: str = ""
    boxes: tuple[Box, ...] = ()
    scorer: Callable[[str, tuple[str, ...]], float] | None = field(default=None, repr=False)

    def score(self, prediction: str) -> float:
        if self.scorer is not None:
            return float(self.scorer(prediction, self.answers))
        from ..data.synthetic import is_correct

        return float(any(is_correct(prediction, answer) for answer in self.answers))

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0

    def relevant_mask(self, rows: int, cols: int, *, min_fraction: float = 0.25) -> torch.Tensor:
        """``bool[rows, cols]``: grid cells the relevant boxes cover by at least ``min_fraction``
        of their area (exact area fractions; any grid)."""
        from ..data.synthetic import boxes_mask
        from ..inputs import load_image

        return boxes_mask(self.boxes, load_image(self.image).size, rows, cols, min_fraction=min_fraction)


def as_items(source: Any, limit: int | None = None) -> list[Item]:
    """Items from a SyntheticVQA, a sequence of synthetic samples, of task documents
    (objects with ``doc_id``/``question``/``targets`` and an image), of Items, or of
    ``(image, question, answer)`` tuples. ``limit`` keeps the first N."""
    from ..data.synthetic import Sample, SyntheticVQA

    if isinstance(source, SyntheticVQA):
        n = len(source) if limit is None else min(limit, len(source))
        return [_from_sample(source[i]) for i in range(n)]
    if hasattr(source, "benchmark") and hasattr(source, "docs"):  # an evaluation Task
        return [_from_task_doc(source, doc) for doc in _take(source.docs, limit)]
    items = []
    for entry in _take(source, limit):
        if isinstance(entry, Item):
            items.append(entry)
        elif isinstance(entry, Sample):
            items.append(_from_sample(entry))
        elif isinstance(entry, tuple) and len(entry) == 3:
            image, question, answer = entry
            answers = (answer,) if isinstance(answer, str) else tuple(answer)
            items.append(Item(id=str(len(items)), image=image, question=question, answers=answers))
        elif hasattr(entry, "question") and hasattr(entry, "targets"):
            items.append(_from_doc(entry))
        else:
            raise InputError(
                f"cannot analyse {type(entry).__name__!r}: give synthetic samples, task docs, Items "
                "or (image, question, answer) tuples"
            )
    if not items:
        raise InputError("no samples to analyse")
    return items


def _take(source: Iterable, limit: int | None):
    for i, entry in enumerate(source):
        if limit is not None and i >= limit:
            return
        yield entry


def _from_sample(sample) -> Item:
    return Item(
        id=sample.id,
        image=sample.image,
        question=sample.question,
        answers=(sample.answer,),
        kind=sample.kind,
        boxes=tuple(tuple(b) for b in sample.boxes),
    )


def _from_task_doc(task, doc) -> Item:
    """An evaluation-task document: the task's prompt (question + its suffix), the most
    common target as the teacher-forced reference, and the task's own metric as scorer."""
    from collections import Counter

    targets = tuple(doc.targets)
    reference = Counter(targets).most_common(1)[0][0] if targets else ""
    ordered = (reference,) + tuple(t for t in targets if t != reference)

    def scorer(prediction: str, answers) -> float:
        return float(task.score(doc, prediction)[task.benchmark.primary_metric])

    meta = dict(doc.metadata)
    return Item(
        id=str(doc.doc_id),
        image=doc.load_image(),
        question=task.prompt(doc),
        answers=ordered,
        kind=str(meta.get("kind", meta.get("category", ""))),
        boxes=tuple(tuple(b) for b in meta.get("boxes", ())),
        scorer=scorer,
    )


def _from_doc(doc) -> Item:
    image = doc.load_image() if hasattr(doc, "load_image") else doc.image
    targets = tuple(doc.targets) if not isinstance(doc.targets, str) else (doc.targets,)
    meta = getattr(doc, "meta", None) or getattr(doc, "metadata", None) or {}
    boxes = tuple(tuple(b) for b in meta.get("boxes", ()))
    scorer = getattr(doc, "scorer", None)
    return Item(
        id=str(doc.doc_id),
        image=image,
        question=doc.question,
        answers=targets,
        kind=str(meta.get("kind", "")),
        boxes=boxes,
        scorer=scorer,
    )
