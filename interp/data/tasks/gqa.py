"""GQA (test-dev, balanced): compositional questions on scene images, exact match.

``--data-dir`` holds either

* the official files: ``testdev_balanced_questions.json`` (``{"<question id>":
  {"imageId", "question", "answer", "fullAnswer", "types", ...}}``) and the images as
  ``images/<imageId>.jpg`` (or ``allImages/images/``), or
* a local copy of ``lmms-lab/GQA``: its two configs side by side,
  ``testdev_balanced_instructions/`` (``id``, ``imageId``, ``question``, ``answer``,
  ...) and ``testdev_balanced_images/`` (``id``, ``image``), split ``testdev``.

Metric: exact match after lower-casing and deleting punctuation (lmms-eval's).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import exact_match, mean_of
from .base import (
    Benchmark,
    CallableImage,
    DataNotFoundError,
    Doc,
    FileImage,
    MissingImageError,
    first_existing,
    read_json,
    require_fields,
)
from .hf_local import find_hf_table

_IMAGE_DIRS = ("images", "allImages/images")
INSTRUCTIONS = "testdev_balanced_instructions"
IMAGES = "testdev_balanced_images"


def _missing(image_id: str, where: str) -> CallableImage:
    def fail():
        raise MissingImageError(f"GQA image {image_id!r} is not in {where}")

    return CallableImage(fail, lambda: False, f"image {image_id} (missing from {where})")


class GQA(Benchmark):
    name = "gqa"
    primary_metric = "exact_match"
    wcd_rule = "answer_word_in_prediction"
    title = "GQA"
    splits = ("testdev",)
    default_split = "testdev"
    hf_dataset = "lmms-lab/GQA"
    official_layout = "testdev_balanced_questions.json and images/<imageId>.jpg"
    hf_layout = f"{INSTRUCTIONS}/ and {IMAGES}/, each a save_to_disk directory or testdev-*.parquet files"

    def find_official(self, data_dir: Path, split: str):
        name = f"{split}_balanced_questions.json"
        questions = first_existing(data_dir, [name, f"questions/{name}"])
        if questions is None:
            return None
        return questions, first_existing(data_dir, _IMAGE_DIRS) or data_dir / _IMAGE_DIRS[0]

    def load_official(self, found, split: str) -> list[Doc]:
        questions, images = found
        content = read_json(questions)
        require_fields(content, [], str(questions))
        docs = []
        for question_id, entry in content.items():
            require_fields(entry, ["imageId", "question", "answer"], f"{questions.name} question {question_id}")
            docs.append(
                Doc(
                    doc_id=str(question_id),
                    question=entry["question"],
                    targets=(str(entry["answer"]),),
                    image=FileImage(images / f"{entry['imageId']}.jpg"),
                    metadata={"image_id": entry["imageId"], **({"types": entry["types"]} if "types" in entry else {})},
                )
            )
        return docs

    def hf_config(self, split: str) -> str:
        return INSTRUCTIONS

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        table.require(["id", "imageId", "question", "answer"], self.title)
        images = find_hf_table(data_dir / IMAGES, split) if (data_dir / IMAGES).is_dir() else None
        if images is None:
            raise DataNotFoundError(
                f"the GQA HF copy in {data_dir} has no {IMAGES}/ (lmms-lab/GQA keeps the images in that "
                f"config, next to {INSTRUCTIONS}/)"
            )
        images.require(["id", "image"], f"{self.title} images")
        index = {image_id: i for i, image_id in enumerate(images.column("id"))}
        return [
            Doc(
                doc_id=str(row["id"]),
                question=row["question"],
                targets=(str(row["answer"]),),
                image=images.image_ref(index[row["imageId"]])
                if row["imageId"] in index
                else _missing(row["imageId"], images.description),
                metadata={"image_id": row["imageId"]},
            )
            for row in table.records()
        ]

    def score(self, doc: Doc, response: str) -> dict:
        return {"exact_match": exact_match(response, doc.targets[0])}

    def aggregate(self, rows) -> dict:
        return {"exact_match": mean_of(rows, "exact_match")}


BENCHMARK = GQA()
