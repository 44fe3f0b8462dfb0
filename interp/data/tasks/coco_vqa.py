"""The official VQA file format, shared by VQAv2 and OK-VQA, and their HF copies.

Official: a questions file ``{"questions": [{"question_id", "image_id", "question"}]}``,
an annotations file ``{"annotations": [{"question_id", "image_id", "answers":
[{"answer", "answer_id", ...} x 10], "answer_type", "question_type",
"multiple_choice_answer"?}]}`` and COCO images ``val2014/COCO_val2014_<image_id:012d>.jpg``.
Documents follow the questions file's order; ``doc_id`` is the ``question_id``.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    DataFormatError,
    Doc,
    FileImage,
    answer_strings,
    first_existing,
    hf_answer_docs,
    read_json,
    require_fields,
)

COCO_IMAGE_DIRS = ("val2014", "images/val2014", "images")
_KEPT = ("answer_type", "question_type", "multiple_choice_answer")


def find_coco_vqa(data_dir: Path, questions: str, annotations: str) -> tuple[Path, Path, Path] | None:
    """``(questions, annotations, image dir)`` if both JSON files are in ``data_dir``."""
    q_path, a_path = data_dir / questions, data_dir / annotations
    if not q_path.is_file() and not a_path.is_file():
        return None
    for path in (q_path, a_path):
        if not path.is_file():
            raise DataFormatError(
                f"found {q_path.name if path is a_path else a_path.name} but not {path} "
                "in the data directory; the official format needs both files"
            )
    images = first_existing(data_dir, COCO_IMAGE_DIRS) or data_dir / COCO_IMAGE_DIRS[0]
    return q_path, a_path, images


def load_coco_vqa(found: tuple[Path, Path, Path]) -> list[Doc]:
    q_path, a_path, images = found
    questions, annotations = read_json(q_path), read_json(a_path)
    require_fields(questions, ["questions"], str(q_path))
    require_fields(annotations, ["annotations"], str(a_path))
    by_id = {}
    for i, entry in enumerate(annotations["annotations"]):
        require_fields(entry, ["question_id", "answers"], f"{a_path.name} annotation {i}")
        by_id[entry["question_id"]] = entry
    docs = []
    for i, entry in enumerate(questions["questions"]):
        where = f"{q_path.name} question {i}"
        require_fields(entry, ["question_id", "image_id", "question"], where)
        annotation = by_id.get(entry["question_id"])
        if annotation is None:
            raise DataFormatError(
                f"question {entry['question_id']} of {q_path.name} has no annotation in {a_path.name}"
            )
        image_id = int(entry["image_id"])
        docs.append(
            Doc(
                doc_id=entry["question_id"],
                question=entry["question"],
                targets=answer_strings(annotation["answers"], f"annotation of question {entry['question_id']}"),
                image=FileImage(images / f"COCO_val2014_{image_id:012d}.jpg"),
                metadata={"image_id": image_id, **{k: annotation[k] for k in _KEPT if k in annotation}},
            )
        )
    return docs


def load_coco_vqa_hf(table, title: str) -> list[Doc]:
    """Docs from an lmms-lab copy (``question_id``, ``question``, ``answers``, ``image``, ...)."""
    return hf_answer_docs(table, title, metadata=lambda row: {k: row[k] for k in ("image_id", *_KEPT) if k in row})
