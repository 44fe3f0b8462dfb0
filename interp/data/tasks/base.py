"""What every benchmark shares: documents, lazily read images, the Task, the errors.

A benchmark module defines one :class:`Benchmark` subclass: the splits it knows, its
prompt convention, how to find and read its official files and a local copy of the
HF dataset lmms-eval uses, how to score one reply and how to aggregate. ``load_task``
(in :mod:`interp.data.tasks`) turns it into a :class:`Task`: the benchmark plus its
documents, in the benchmark's own order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

from PIL import Image

from ...errors import InterpError
from ...inputs import read_image_file

SHORT_ANSWER = "Answer the question using a single word or phrase."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".gif", ".webp")


# -- errors --------------------------------------------------------------------------------


class TaskDataError(InterpError):
    """A benchmark's data is missing, malformed or empty."""


class DataNotFoundError(TaskDataError):
    """The data directory, or the files a benchmark needs in it, are not there."""


class DataFormatError(TaskDataError):
    """A data file is there but is not in the expected format."""


class MissingImageError(TaskDataError):
    """A document's image file (or image cell) is missing."""


class EmptyTaskError(TaskDataError):
    """A benchmark split holds no documents."""


class UnknownTaskError(InterpError):
    """A task name that is not in the registry."""


# -- images ---------------------------------------------------------------------------------


def open_image_file(path: Path) -> Image.Image:
    """The RGB image at ``path``; a one-line :class:`MissingImageError` naming the file otherwise."""
    return read_image_file(path, MissingImageError)


class FileImage:
    """An image file on disk, read when asked."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> Image.Image:
        return open_image_file(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def describe(self) -> str:
        return str(self.path)


class CallableImage:
    """An image made or fetched by a function (a table cell, a generated scene)."""

    def __init__(self, load: Callable[[], Image.Image], exists: Callable[[], bool], description: str):
        self._load, self._exists, self._description = load, exists, description

    def load(self) -> Image.Image:
        return self._load()

    def exists(self) -> bool:
        return self._exists()

    def describe(self) -> str:
        return self._description


def find_image(directory: Path, stem: str) -> Path:
    """``directory/stem`` with the first image suffix that exists (else the ``.jpg`` path)."""
    for suffix in IMAGE_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return directory / f"{stem}.jpg"


# -- documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One benchmark question.

    ``doc_id`` is the benchmark's own question id (stable across the official files and
    the HF copy where both carry it); ``targets`` the ground-truth answers (10 human
    answers for VQA-style sets, one otherwise); ``image`` is read only by
    :meth:`load_image`; ``metadata`` holds what scoring needs (categories, image ids).
    """

    doc_id: str | int
    question: str
    targets: tuple[str, ...]
    image: FileImage | CallableImage = field(repr=False, compare=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def load_image(self) -> Image.Image:
        try:
            return self.image.load()
        except MissingImageError as error:
            raise MissingImageError(f"doc {self.doc_id!r}: {error}") from None


# -- the benchmark --------------------------------------------------------------------------------


class Benchmark:
    """A benchmark definition (stateless); subclasses fill in the class attributes."""

    name: str = ""
    title: str = ""
    splits: tuple[str, ...] = ()
    default_split: str = ""
    prompt_suffix: str = SHORT_ANSWER  # lmms-eval's default post_prompt, without its "\n"
    max_new_tokens: int = 16
    needs_data_dir: bool = True
    hf_dataset: str = ""  # the lmms-eval HF copy, e.g. "lmms-lab/textvqa"
    official_layout: str = ""  # what the official files look like in --data-dir
    hf_layout: str = "a `datasets` save_to_disk directory or <split>-*.parquet files"
    #: the per-sample field of :meth:`score` that scores one answer (what the analyses read)
    primary_metric: str = "vqa_accuracy"
    #: the rule the authors' ``get_score.py`` scores this benchmark with
    #: (:data:`interp.data.metrics.WCD_RULES`), or None where they do not score it
    wcd_rule: str | None = None

    # -- loading --------------------------------------------------------------------------

    #: whether the benchmark draws its images (it then takes ``image_size`` in :meth:`load_docs`)
    draws_images: bool = False

    def load_docs(self, data_dir: Path | None, split: str) -> tuple[list[Doc], str]:
        """``(docs, source)``: the official files if found, else a local HF copy."""
        from .hf_local import find_hf_table

        assert data_dir is not None
        official = self.find_official(data_dir, split)
        if official is not None:
            return self.load_official(official, split), f"official files in {data_dir}"
        table = find_hf_table(data_dir, self.hf_split(split), config=self.hf_config(split))
        if table is not None:
            return self.load_hf(table, data_dir, split), f"HF copy ({table.description})"
        raise DataNotFoundError(
            f"no {self.title} {split} data in {data_dir}: expected the official files "
            f"({self.official_layout}) or a local copy of {self.hf_dataset} ({self.hf_layout})"
        )

    def find_official(self, data_dir: Path, split: str) -> Any:
        """What :meth:`load_official` needs (paths), or None if the official files are absent."""
        raise NotImplementedError

    def load_official(self, found: Any, split: str) -> list[Doc]:
        raise NotImplementedError

    def hf_split(self, split: str) -> str:
        """The HF split holding ``split`` (e.g. POPE's categories all live in ``test``)."""
        return split

    def hf_config(self, split: str) -> str | None:
        """The HF config sub-directory to look in first (e.g. ``"DocVQA"``)."""
        return None

    def load_hf(self, table, data_dir: Path, split: str) -> list[Doc]:
        raise NotImplementedError

    # -- running and scoring ------------------------------------------------------------------

    def prompt(self, doc: Doc, suffix: str) -> str:
        """The text given to the model: the question, then the suffix on a new line."""
        return join_prompt(doc.question, suffix)

    def score(self, doc: Doc, response: str) -> dict:
        """Per-sample metric fields (JSON-serialisable) for one reply."""
        raise NotImplementedError

    def aggregate(self, rows: Sequence[Mapping]) -> dict:
        """The benchmark's aggregate metrics over per-sample rows."""
        raise NotImplementedError


class CapitalisedVQABenchmark(Benchmark):
    """A benchmark scored by VQA accuracy over its human answers whose question lmms-eval
    capitalises (TextVQA, VizWiz)."""

    def prompt(self, doc: Doc, suffix: str) -> str:
        return join_prompt(doc.question.capitalize(), suffix)

    def score(self, doc: Doc, response: str) -> dict:
        from ..metrics import vqa_accuracy

        return {"vqa_accuracy": vqa_accuracy(response, doc.targets)}

    def aggregate(self, rows) -> dict:
        from ..metrics import mean_of

        return {"vqa_accuracy": mean_of(rows, "vqa_accuracy")}


def join_prompt(question: str, suffix: str) -> str:
    return f"{question}\n{suffix}" if suffix else question


# -- the loaded task --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A benchmark split loaded from one place: ``task.docs`` in the benchmark's order."""

    benchmark: Benchmark
    split: str
    docs: tuple[Doc, ...]
    source: str = ""
    data_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.benchmark.name

    def __len__(self) -> int:
        return len(self.docs)

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)

    def __getitem__(self, index: int) -> Doc:
        return self.docs[index]

    def select(self, indices: Sequence[int]) -> Task:
        """The same task restricted to ``docs[i]`` for ``i`` in ``indices`` (in that order)."""
        return replace(self, docs=tuple(self.docs[i] for i in indices))

    def prompt(self, doc: Doc, suffix: str | None = None) -> str:
        return self.benchmark.prompt(doc, self.benchmark.prompt_suffix if suffix is None else suffix)

    def score(self, doc: Doc, response: str) -> dict:
        return self.benchmark.score(doc, response)

    def aggregate(self, rows: Sequence[Mapping]) -> dict:
        return self.benchmark.aggregate(rows)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, split={self.split!r}, docs={len(self.docs)}, source={self.source!r})"


# -- small readers shared by the benchmark modules ---------------------------------------------------


def first_existing(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first ``root / candidate`` that exists."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path} is not a UTF-8 JSON file") from None


def read_json_lines(path: Path) -> list[dict]:
    """One JSON object per non-empty line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}:{number} is not a JSON object ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{number} is not a JSON object")
        rows.append(row)
    return rows


def require_fields(record: Any, fields: Sequence[str], where: str) -> None:
    """A one-line DataFormatError if ``record`` is not a dict with all ``fields``."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in fields if name not in record]
    if missing:
        raise DataFormatError(f"{where} has no {', '.join(repr(m) for m in missing)} field")


def answer_strings(answers: Any, where: str) -> tuple[str, ...]:
    """Ground-truth answers as strings: a list of strings or of ``{"answer": ...}`` dicts."""
    if not isinstance(answers, (list, tuple)) or not answers:
        raise DataFormatError(f"{where} has no ground-truth answers (a test split?)")
    out = []
    for answer in answers:
        if isinstance(answer, dict):
            if "answer" not in answer:
                raise DataFormatError(f"{where}: an answer entry has no 'answer' field")
            answer = answer["answer"]
        out.append(str(answer))
    return tuple(out)


def hf_answer_docs(
    table,
    title: str,
    *,
    id_column: str = "question_id",
    doc_id: Callable[[Any], Any] = lambda v: v,
    metadata: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda row: {},
) -> list[Doc]:
    """Docs from an lmms-lab copy with ``id_column``, ``question``, ``answers`` (a list) and
    ``image`` columns; ``doc_id`` maps the id column's value, ``metadata`` picks from a row."""
    table.require([id_column, "question", "answers", "image"], title)
    return [
        Doc(
            doc_id=doc_id(row[id_column]),
            question=row["question"],
            targets=answer_strings(row["answers"], f"row {i} of {table.description}"),
            image=table.image_ref(i),
            metadata=metadata(row),
        )
        for i, row in enumerate(table.records())
    ]


__all__ = [
    "Benchmark",
    "CallableImage",
    "DataFormatError",
    "DataNotFoundError",
    "Doc",
    "EmptyTaskError",
    "FileImage",
    "MissingImageError",
    "SHORT_ANSWER",
    "Task",
    "TaskDataError",
    "UnknownTaskError",
]
