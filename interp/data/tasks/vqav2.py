"""VQAv2 (val2014): open-ended questions on COCO images, 10 human answers, VQA accuracy.

``--data-dir`` holds either

* the official files: ``v2_OpenEnded_mscoco_val2014_questions.json``,
  ``v2_mscoco_val2014_annotations.json`` and the COCO images
  ``val2014/COCO_val2014_<image_id:012d>.jpg``, or
* a local copy of ``lmms-lab/VQAv2`` (columns ``question_id``, ``question``,
  ``answers`` (dicts with ``answer``), ``image``, ...), split ``validation``.

Metric: VQA accuracy with lmms-eval's VQAv2 normalisation (punctuation, digits,
articles; no ``EvalAIAnswerProcessor`` tokenisation step).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import mean_of, vqa_accuracy
from .base import Benchmark, Doc
from .coco_vqa import find_coco_vqa, load_coco_vqa, load_coco_vqa_hf


class VQAv2(Benchmark):
    name = "vqav2"
    wcd_rule = "exact_x0.3"
    title = "VQAv2"
    splits = ("validation",)
    default_split = "validation"
    hf_dataset = "lmms-lab/VQAv2"
    official_layout = (
        "v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json "
        "and val2014/COCO_val2014_<id>.jpg"
    )

    def find_official(self, data_dir: Path, split: str):
        return find_coco_vqa(
            data_dir, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"
        )

    def load_official(self, found, split: str) -> list[Doc]:
        return load_coco_vqa(found)

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        return load_coco_vqa_hf(table, self.title)

    def score(self, doc: Doc, response: str) -> dict:
        return {"vqa_accuracy": vqa_accuracy(response, doc.targets, tokenize=False)}

    def aggregate(self, rows) -> dict:
        return {"vqa_accuracy": mean_of(rows, "vqa_accuracy")}


BENCHMARK = VQAv2()
