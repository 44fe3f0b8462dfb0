"""VizWiz-VQA (val): photos taken by blind people, 10 human answers, VQA accuracy.

``--data-dir`` holds either

* the official files: ``val.json`` (or ``Annotations/val.json``; a list of
  ``{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer", ...} x 10],
  "answer_type", "answerable"}``) and the images in ``val/``, or
* a local copy of ``lmms-lab/VizWiz-VQA`` (columns ``question_id``, ``question``,
  ``answers`` (strings), ``category``, ``image``), split ``val``.

``doc_id`` is the image name without its suffix (``VizWiz_val_00000000``), which is
also lmms-lab's ``question_id``. Prompt as lmms-eval: the question
``str.capitalize()``-d, then the suffix, which by default asks for "Unanswerable"
when the photo does not show the answer. Metric: VQA accuracy with EvalAI
normalisation.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    CapitalisedVQABenchmark,
    SHORT_ANSWER,
    DataFormatError,
    Doc,
    FileImage,
    answer_strings,
    first_existing,
    hf_answer_docs,
    read_json,
    require_fields,
)
from .okvqa import UNANSWERABLE_HINT

_ANNOTATIONS = ("{split}.json", "Annotations/{split}.json", "annotations/{split}.json")
_IMAGE_DIRS = ("{split}", "images/{split}", "images")


def _stem(name: str) -> str:
    path = Path(str(name))
    return str(path.with_suffix("")) if path.suffix.lower() in (".jpg", ".jpeg", ".png") else str(name)


class VizWiz(CapitalisedVQABenchmark):
    name = "vizwiz"
    wcd_rule = "word_overlap"
    title = "VizWiz-VQA"
    splits = ("val",)
    default_split = "val"
    prompt_suffix = f"{UNANSWERABLE_HINT}\n{SHORT_ANSWER}"
    hf_dataset = "lmms-lab/VizWiz-VQA"
    official_layout = "val.json (or Annotations/val.json) and val/VizWiz_val_<n>.jpg"

    def find_official(self, data_dir: Path, split: str):
        annotations = first_existing(data_dir, [c.format(split=split) for c in _ANNOTATIONS])
        if annotations is None or not annotations.is_file():
            return None
        images = first_existing(data_dir, [c.format(split=split) for c in _IMAGE_DIRS]) or data_dir / split
        return annotations, images

    def load_official(self, found, split: str) -> list[Doc]:
        annotations, images = found
        content = read_json(annotations)
        if not isinstance(content, list):
            raise DataFormatError(f"{annotations} should hold a JSON list of questions (the official VizWiz format)")
        docs = []
        for i, entry in enumerate(content):
            where = f"{annotations.name} entry {i}"
            require_fields(entry, ["image", "question", "answers"], where)
            docs.append(
                Doc(
                    doc_id=_stem(entry["image"]),
                    question=entry["question"],
                    targets=answer_strings(entry["answers"], where),
                    image=FileImage(images / entry["image"]),
                    metadata={k: entry[k] for k in ("answer_type", "answerable") if k in entry},
                )
            )
        return docs

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        return hf_answer_docs(
            table,
            self.title,
            doc_id=_stem,
            metadata=lambda row: {"answer_type": row["category"]} if "category" in row else {},
        )


BENCHMARK = VizWiz()
