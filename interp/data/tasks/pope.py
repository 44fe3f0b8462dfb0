"""POPE: "Is there a <object> in the image?" on COCO, probing object hallucination.

``--data-dir`` holds either

* the official files: ``coco_pope_adversarial.json``, ``coco_pope_popular.json``,
  ``coco_pope_random.json`` (one JSON object a line: ``{"question_id", "image":
  "COCO_val2014_<id>.jpg", "text", "label": "yes"|"no"}``), directly or in ``coco/``
  or ``output/coco/``, and the COCO images in ``val2014/``, or
* a local copy of ``lmms-lab/POPE`` (default config: ``question_id``, ``question``,
  ``answer``, ``image_source``, ``category``, ``image``), split ``test``.

Splits: ``all`` (the three categories, 9000 questions, as lmms-eval's ``pope``
task; the default) or one of ``adversarial``, ``popular``, ``random``. ``doc_id`` is
``<category>-<question_id>``. Metrics: lmms-eval's ``pope_*`` and POPE's own
``pope_paper_*`` (see :mod:`interp.data.metrics`), overall and, for ``all``, per
category.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import pope_aggregate, pope_score
from .base import Benchmark, DataNotFoundError, Doc, FileImage, first_existing, read_json_lines, require_fields

CATEGORIES = ("adversarial", "popular", "random")
_DIRS = ("", "coco", "output/coco")


class POPE(Benchmark):
    name = "pope"
    primary_metric = "correct"
    title = "POPE"
    splits = ("all", *CATEGORIES)
    default_split = "all"
    hf_dataset = "lmms-lab/POPE"
    official_layout = "coco_pope_{adversarial,popular,random}.json and val2014/"

    def find_official(self, data_dir: Path, split: str):
        categories = CATEGORIES if split == "all" else (split,)
        files = {c: first_existing(data_dir, [str(Path(d) / f"coco_pope_{c}.json") for d in _DIRS]) for c in categories}
        if not any(files.values()):
            return None
        missing = [f"coco_pope_{c}.json" for c, path in files.items() if path is None]
        if missing:
            raise DataNotFoundError(f"POPE split {split!r} needs {', '.join(missing)} in {data_dir} as well")
        return files, first_existing(data_dir, ["val2014", "images"]) or data_dir / "val2014"

    def load_official(self, found, split: str) -> list[Doc]:
        files, images = found
        docs = []
        for category, path in files.items():
            for i, entry in enumerate(read_json_lines(path)):
                require_fields(entry, ["question_id", "image", "text", "label"], f"{path.name} line {i + 1}")
                docs.append(
                    Doc(
                        doc_id=f"{category}-{entry['question_id']}",
                        question=entry["text"],
                        targets=(str(entry["label"]),),
                        image=FileImage(images / entry["image"]),
                        metadata={"category": category, "image_source": Path(entry["image"]).stem},
                    )
                )
        return docs

    def hf_split(self, split: str) -> str:
        return "test"

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        table.require(["question_id", "question", "answer", "category", "image"], self.title)
        return [
            Doc(
                doc_id=f"{row['category']}-{row['question_id']}",
                question=row["question"],
                targets=(str(row["answer"]),),
                image=table.image_ref(i),
                metadata={"category": row["category"], "image_source": row.get("image_source")},
            )
            for i, row in enumerate(table.records())
            if split == "all" or row["category"] == split
        ]

    def prompt(self, doc: Doc, suffix: str) -> str:
        question = doc.question.strip()
        return f"{question}\n{suffix}" if suffix else question

    def score(self, doc: Doc, response: str) -> dict:
        return {**pope_score(response, doc.targets[0]), "category": doc.metadata["category"]}

    def aggregate(self, rows) -> dict:
        result = pope_aggregate(rows)
        categories = sorted({row["category"] for row in rows})
        if len(categories) > 1:
            result["by_category"] = {c: pope_aggregate([r for r in rows if r["category"] == c]) for c in categories}
        return result


BENCHMARK = POPE()
