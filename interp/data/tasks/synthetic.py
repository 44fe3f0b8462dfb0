"""The grounded synthetic benchmark (:mod:`interp.data.synthetic`) as a task.

No data directory: documents are drawn from ``SyntheticVQA(split, seed=0)`` (splits
``test``, the default, and ``val``, 512 questions each); ``doc_id`` is the sample id
(``test-000017``) and ``metadata`` holds the question kind and the relevant boxes.
The organism was trained on the bare question, so the default prompt suffix is empty,
and its answers are one word, so 4 new tokens are enough (as ``interp organism eval``).
Metric: :func:`interp.data.synthetic.is_correct`, accuracy overall and per kind.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import synthetic_aggregate, synthetic_score
from ..synthetic import DEFAULT_IMAGE_SIZE, SyntheticVQA
from .base import Benchmark, CallableImage, Doc

SEED = 0


class Synthetic(Benchmark):
    name = "synthetic"
    primary_metric = "correct"
    title = "synthetic VQA"
    splits = ("test", "val")
    default_split = "test"
    prompt_suffix = ""
    max_new_tokens = 4
    needs_data_dir = False
    draws_images = True

    def load_docs(self, data_dir: Path | None, split: str, image_size: int | None = None) -> tuple[list[Doc], str]:
        dataset = SyntheticVQA(split, seed=SEED, image_size=image_size or DEFAULT_IMAGE_SIZE)
        docs = []
        for i in range(len(dataset)):
            sample = dataset[i]
            docs.append(
                Doc(
                    doc_id=sample.id,
                    question=sample.question,
                    targets=(sample.answer,),
                    image=CallableImage(lambda i=i: dataset[i].image, lambda: True, f"synthetic {split} sample {i}"),
                    metadata={"kind": sample.kind, "boxes": [list(box) for box in sample.boxes]},
                )
            )
        size = "" if dataset.image_size == DEFAULT_IMAGE_SIZE else f", image_size={image_size}"
        return docs, f"SyntheticVQA({split!r}, seed={SEED}{size})"

    def score(self, doc: Doc, response: str) -> dict:
        return {"correct": synthetic_score(response, doc.targets[0]), "kind": doc.metadata["kind"]}

    def aggregate(self, rows) -> dict:
        return synthetic_aggregate(rows)


BENCHMARK = Synthetic()
