"""DocVQA (single-page, val): questions on scanned documents, scored by ANLS.

``--data-dir`` holds either

* the official files: ``val_v1.0_withQT.json`` or ``val_v1.0.json`` (``{"data":
  [{"questionId", "question", "image": "documents/<page>.png", "docId", "answers",
  ...}]}``), directly or in ``val/`` or ``spdocvqa_qas/``, with the images at the path
  the ``image`` field gives, relative to the JSON file's directory or to
  ``--data-dir`` (``spdocvqa_images/`` is also searched), or
* a local copy of ``lmms-lab/DocVQA`` config ``DocVQA`` (columns ``questionId``,
  ``question``, ``answers``, ``image``, ...), split ``validation``, directly or in
  ``DocVQA/``.

Replies may be up to 32 new tokens (lmms-eval's setting). Metric: ANLS (threshold 0.5).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import anls, mean_of
from .base import Benchmark, Doc, FileImage, answer_strings, first_existing, hf_answer_docs, read_json, require_fields

_ANNOTATIONS = (
    "val_v1.0_withQT.json",
    "val_v1.0.json",
    "val/val_v1.0_withQT.json",
    "val/val_v1.0.json",
    "spdocvqa_qas/val_v1.0_withQT.json",
    "spdocvqa_qas/val_v1.0.json",
)


def _question_id(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _image_root(roots: list[Path], image: str) -> tuple[Path, bool]:
    """Where the images are: ``(root, flat)``, flat if they sit there without ``documents/``."""
    for root in roots:
        if (root / image).is_file():
            return root, False
        if (root / Path(image).name).is_file():
            return root, True
    return roots[0], False


class DocVQA(Benchmark):
    name = "docvqa"
    primary_metric = "anls"
    wcd_rule = "substring"
    title = "DocVQA"
    splits = ("validation",)
    default_split = "validation"
    max_new_tokens = 32
    hf_dataset = "lmms-lab/DocVQA"
    official_layout = "val_v1.0_withQT.json or val_v1.0.json and documents/<page>.png"

    def find_official(self, data_dir: Path, split: str):
        annotations = first_existing(data_dir, _ANNOTATIONS)
        return (annotations, data_dir) if annotations is not None else None

    def load_official(self, found, split: str) -> list[Doc]:
        annotations, data_dir = found
        content = read_json(annotations)
        require_fields(content, ["data"], str(annotations))
        entries = content["data"]
        roots = [annotations.parent, data_dir, data_dir / "spdocvqa_images"]
        root, flat = roots[0], False
        docs = []
        for i, entry in enumerate(entries):
            where = f"{annotations.name} entry {i}"
            require_fields(entry, ["questionId", "question", "image", "answers"], where)
            if i == 0:
                root, flat = _image_root(roots, entry["image"])
            image = root / (Path(entry["image"]).name if flat else entry["image"])
            docs.append(
                Doc(
                    doc_id=_question_id(entry["questionId"]),
                    question=entry["question"],
                    targets=answer_strings(entry["answers"], where),
                    image=FileImage(image),
                    metadata={k: entry[k] for k in ("docId", "question_types") if k in entry},
                )
            )
        return docs

    def hf_config(self, split: str) -> str:
        return "DocVQA"

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        return hf_answer_docs(
            table,
            self.title,
            id_column="questionId",
            doc_id=_question_id,
            metadata=lambda row: {k: row[k] for k in ("docId", "question_types") if k in row},
        )

    def score(self, doc: Doc, response: str) -> dict:
        return {"anls": anls(response, doc.targets)}

    def aggregate(self, rows) -> dict:
        return {"anls": mean_of(rows, "anls")}


BENCHMARK = DocVQA()
