"""TextVQA (v0.5.1): questions about text in images, 10 human answers, VQA accuracy.

``--data-dir`` holds either

* the official files: ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id",
  "question", "image_id", "answers": [10 strings], ...}]}``) and the images as
  ``train_images/<image_id>.jpg`` (validation images ship in ``train_images``; also
  found under ``train_val_images/train_images``), or
* a local copy of ``lmms-lab/textvqa`` (columns ``question_id``, ``question``,
  ``image_id``, ``answers``, ``image``, ...), split ``validation``.

Prompt as lmms-eval: the question ``str.capitalize()``-d (which also lower-cases the
rest), then the suffix. Metric: VQA accuracy with EvalAI normalisation.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    CapitalisedVQABenchmark,
    Doc,
    FileImage,
    answer_strings,
    first_existing,
    hf_answer_docs,
    read_json,
    require_fields,
)

_ANNOTATIONS = {"validation": "TextVQA_0.5.1_val.json", "train": "TextVQA_0.5.1_train.json"}
_IMAGE_DIRS = ("train_images", "train_val_images/train_images", "images")


class TextVQA(CapitalisedVQABenchmark):
    name = "textvqa"
    wcd_rule = "word_overlap"
    title = "TextVQA"
    splits = ("validation", "train")
    default_split = "validation"
    hf_dataset = "lmms-lab/textvqa"
    official_layout = "TextVQA_0.5.1_val.json and train_images/<image_id>.jpg"

    def find_official(self, data_dir: Path, split: str):
        annotations = data_dir / _ANNOTATIONS[split]
        if not annotations.is_file():
            return None
        images = first_existing(data_dir, _IMAGE_DIRS) or data_dir / _IMAGE_DIRS[0]
        return annotations, images

    def load_official(self, found, split: str) -> list[Doc]:
        annotations, images = found
        content = read_json(annotations)
        require_fields(content, ["data"], str(annotations))
        docs = []
        for i, entry in enumerate(content["data"]):
            where = f"{annotations.name} entry {i}"
            require_fields(entry, ["question_id", "question", "image_id", "answers"], where)
            docs.append(
                Doc(
                    doc_id=entry["question_id"],
                    question=entry["question"],
                    targets=answer_strings(entry["answers"], where),
                    image=FileImage(images / f"{entry['image_id']}.jpg"),
                    metadata={"image_id": entry["image_id"]},
                )
            )
        return docs

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        return hf_answer_docs(table, self.title, metadata=lambda row: {"image_id": row.get("image_id")})


BENCHMARK = TextVQA()
