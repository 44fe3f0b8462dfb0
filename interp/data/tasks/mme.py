"""MME: 14 yes/no subtasks, two questions per image, scored by acc + acc+.

``--data-dir`` holds either

* the official release, ``MME_Benchmark_release_version`` (or its ``MME_Benchmark/``):
  one folder per subtask (``existence``, ``count``, ..., ``code_reasoning``), each
  with its images and, per image, a ``<image stem>.txt`` of two lines
  ``question<TAB>Yes|No`` side by side (e.g. ``existence/``), or in
  ``images/`` and ``questions_answers_YN/`` (e.g. ``artwork/``). Lines of the
  eval-tool form ``image<TAB>question<TAB>answer`` are read too. Or
* a local copy of ``lmms-lab/MME`` (``question_id`` = ``<subtask>/<image>``,
  ``question``, ``answer``, ``category``, ``image``), split ``test``.

``doc_id`` is ``<subtask>/<image>#<k>``, k = 0, 1 the question's rank for its image.
Prompt as lmms-eval: with a suffix, the question's own " Please answer yes or no." is
replaced by it. Metrics: per-subtask acc, acc+ and score, and the perception and
cognition totals (see :mod:`interp.data.metrics`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..metrics import MME_CATEGORIES, mme_aggregate, mme_score
from .base import Benchmark, DataFormatError, Doc, FileImage, find_image

SUBTASKS = (*MME_CATEGORIES["perception"], *MME_CATEGORIES["cognition"])
_ROOTS = ("", "MME_Benchmark", "MME_Benchmark_release_version", "MME_Benchmark_release_version/MME_Benchmark")
YES_NO_HINT = " Please answer yes or no."


def _parse_line(line: str, where: str) -> tuple[str | None, str, str]:
    """``(image name or None, question, answer)`` of one question-file line."""
    fields = [f.strip() for f in line.rstrip("\n").split("\t")]
    while fields and not fields[-1]:  # the eval tool's files end lines with a tab
        fields.pop()
    if len(fields) == 2:
        image, (question, answer) = None, fields
    elif len(fields) == 3:
        image, question, answer = fields
    else:
        raise DataFormatError(f"{where}: expected 'question<TAB>answer' or 'image<TAB>question<TAB>answer'")
    if answer.lower() not in ("yes", "no"):
        raise DataFormatError(f"{where}: the answer is {answer!r}, not Yes or No")
    return image, question, answer


class MME(Benchmark):
    name = "mme"
    primary_metric = "correct"
    title = "MME"
    splits = ("test",)
    default_split = "test"
    hf_dataset = "lmms-lab/MME"
    official_layout = "one folder per subtask (existence/, count/, ..., artwork/images/ + questions_answers_YN/)"

    def find_official(self, data_dir: Path, split: str):
        for root in _ROOTS:
            base = data_dir / root
            subtasks = [s for s in SUBTASKS if (base / s).is_dir()]
            if subtasks:
                return base, subtasks
        return None

    def load_official(self, found, split: str) -> list[Doc]:
        base, subtasks = found
        docs = []
        for subtask in subtasks:
            folder = base / subtask
            split_layout = (folder / "questions_answers_YN").is_dir() and (folder / "images").is_dir()
            questions = folder / "questions_answers_YN" if split_layout else folder
            images = folder / "images" if split_layout else folder
            for text_file in sorted(questions.glob("*.txt")):
                lines = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
                for k, line in enumerate(lines):
                    name, question, answer = _parse_line(line, f"{text_file}:{k + 1}")
                    path = images / name if name else find_image(images, text_file.stem)
                    image_id = f"{subtask}/{path.name}"
                    docs.append(self._doc(image_id, k, question, answer, subtask, FileImage(path)))
        return docs

    def hf_split(self, split: str) -> str:
        return "test"

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        table.require(["question_id", "question", "answer", "category", "image"], self.title)
        seen: Counter = Counter()
        docs = []
        for i, row in enumerate(table.records()):
            k = seen[row["question_id"]]
            seen[row["question_id"]] += 1
            docs.append(
                self._doc(row["question_id"], k, row["question"], row["answer"], row["category"], table.image_ref(i))
            )
        return docs

    @staticmethod
    def _doc(image_id: str, k: int, question: str, answer: str, category: str, image) -> Doc:
        return Doc(
            doc_id=f"{image_id}#{k}",
            question=question,
            targets=(str(answer),),
            image=image,
            metadata={"category": category, "image_id": image_id},
        )

    def prompt(self, doc: Doc, suffix: str) -> str:
        question = doc.question.strip()
        return f"{question.replace(YES_NO_HINT, '')}\n{suffix}" if suffix else question

    def score(self, doc: Doc, response: str) -> dict:
        return {
            **mme_score(response, doc.targets[0]),
            "category": doc.metadata["category"],
            "image_id": doc.metadata["image_id"],
        }

    def aggregate(self, rows) -> dict:
        return mme_aggregate(rows)


BENCHMARK = MME()
