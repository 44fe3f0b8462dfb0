"""OK-VQA (val2014): questions needing outside knowledge, 10 human answers, VQA accuracy.

``--data-dir`` holds either

* the official files: ``OpenEnded_mscoco_val2014_questions.json``,
  ``mscoco_val2014_annotations.json`` and the COCO images
  ``val2014/COCO_val2014_<image_id:012d>.jpg``, or
* a local copy of ``lmms-lab/OK-VQA`` (columns ``question_id``, ``question``,
  ``answers`` (strings), ``image``, ...), split ``val2014``.

lmms-eval's prompt suffix for OK-VQA asks for "Unanswerable" when the information is
insufficient; it is the default here too. Metric: VQA accuracy with EvalAI
normalisation.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import mean_of, vqa_accuracy
from .base import SHORT_ANSWER, Benchmark, Doc
from .coco_vqa import find_coco_vqa, load_coco_vqa, load_coco_vqa_hf

UNANSWERABLE_HINT = "When the provided information is insufficient, respond with 'Unanswerable'."


class OKVQA(Benchmark):
    name = "okvqa"
    wcd_rule = "exact_x0.3"
    title = "OK-VQA"
    splits = ("val2014",)
    default_split = "val2014"
    prompt_suffix = f"{UNANSWERABLE_HINT}\n{SHORT_ANSWER}"
    hf_dataset = "lmms-lab/OK-VQA"
    official_layout = "OpenEnded_mscoco_val2014_questions.json, mscoco_val2014_annotations.json and val2014/"

    def find_official(self, data_dir: Path, split: str):
        return find_coco_vqa(data_dir, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json")

    def load_official(self, found, split: str) -> list[Doc]:
        return load_coco_vqa(found)

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        return load_coco_vqa_hf(table, self.title)

    def score(self, doc: Doc, response: str) -> dict:
        return {"vqa_accuracy": vqa_accuracy(response, doc.targets)}

    def aggregate(self, rows) -> dict:
        return {"vqa_accuracy": mean_of(rows, "vqa_accuracy")}


BENCHMARK = OKVQA()
