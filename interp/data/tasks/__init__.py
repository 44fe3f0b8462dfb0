"""Standard VQA benchmarks, read from a local directory, with lmms-eval's metrics.

::

    from interp.data.tasks import load_task
    task = load_task("textvqa", "/data/textvqa")        # official files or an HF copy
    task = load_task("pope", "/data/pope", split="adversarial", limit=100)
    task = load_task("synthetic")                        # the organism's benchmark
    doc = task[0]
    doc.doc_id, doc.question, doc.targets, doc.metadata
    image = doc.load_image()                             # read only now
    task.score(doc, "coca cola")                         # per-sample metric fields
    task.aggregate(rows)                                 # the benchmark's aggregate

Tasks (``TASKS``): ``textvqa``, ``vqav2``, ``okvqa``, ``vizwiz``, ``gqa``, ``docvqa``,
``pope``, ``mme`` and ``synthetic``. Each real benchmark reads either its official
file format or a local copy of the HF dataset lmms-eval uses (``lmms-lab/...``, saved
with ``save_to_disk`` or as the Hub's parquet files); the format is detected from
what is in the directory (official first). Each module's docstring gives its layout.
Errors are one line: a missing directory or file (naming what was expected), a
malformed file, an empty split, an unknown split; a missing image is reported when it
is read (naming the file), or for all documents at once with ``check_images=True``.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from collections.abc import Mapping

from . import docvqa, gqa, mme, okvqa, pope, synthetic, textvqa, vizwiz, vqav2
from .base import (
    SHORT_ANSWER,
    Benchmark,
    DataFormatError,
    DataNotFoundError,
    Doc,
    EmptyTaskError,
    MissingImageError,
    Task,
    TaskDataError,
    UnknownTaskError,
)

TASKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        module.BENCHMARK.name: module.BENCHMARK
        for module in (textvqa, vqav2, okvqa, vizwiz, gqa, docvqa, pope, mme, synthetic)
    }
)


def wcd_tasks() -> dict[str, str]:
    """Task -> the rule the authors' ``get_score.py`` scores it with (each benchmark's ``wcd_rule``)."""
    return {name: benchmark.wcd_rule for name, benchmark in TASKS.items() if benchmark.wcd_rule}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name``."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    check_images: bool = False,
    image_size: int | None = None,
) -> Task:
    """Load benchmark ``name`` (its default split unless ``split``) from ``data_dir``.

    ``limit`` keeps the first ``limit`` documents in the benchmark's order.
    ``check_images=True`` checks every document's image is there before returning.
    ``image_size``: the side of generated images, for a benchmark that draws them (the
    synthetic one; :attr:`interp.models.vlm.VLM.scene_size`); refused for file-based ones.
    """
    benchmark = get_benchmark(name)
    split = benchmark.default_split if split is None else split
    if split not in benchmark.splits:
        raise TaskDataError(f"{name} has no split {split!r}; use one of {', '.join(benchmark.splits)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskDataError(f"limit must be a positive integer, got {limit!r}")
    if benchmark.needs_data_dir:
        if data_dir is None:
            raise DataNotFoundError(
                f"task {name} needs a data directory (--data-dir) with the official files "
                f"({benchmark.official_layout}) or a local copy of {benchmark.hf_dataset}"
            )
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise DataNotFoundError(f"data directory not found: {data_dir}")
    else:
        data_dir = None
    if image_size is None:
        docs, source = benchmark.load_docs(data_dir, split)
    elif benchmark.draws_images:
        docs, source = benchmark.load_docs(data_dir, split, image_size=image_size)
    else:
        raise TaskDataError(f"{name} reads its images from files; image_size applies to generated ones")
    if not docs:
        raise EmptyTaskError(f"{benchmark.title} {split} from {source} holds no questions")
    seen: set = set()
    for doc in docs:
        if doc.doc_id in seen:
            raise DataFormatError(f"{benchmark.title} {split} from {source} has question id {doc.doc_id!r} twice")
        seen.add(doc.doc_id)
    task = Task(benchmark, split, tuple(docs[:limit] if limit else docs), source, data_dir)
    if check_images:
        missing = [doc for doc in task.docs if not doc.image.exists()]
        if missing:
            raise MissingImageError(
                f"{len(missing)} of {len(task)} {name} images are missing, the first: "
                f"{missing[0].image.describe()} (doc {missing[0].doc_id!r})"
            )
    return task


__all__ = [
    "SHORT_ANSWER",
    "TASKS",
    "Benchmark",
    "DataFormatError",
    "DataNotFoundError",
    "Doc",
    "EmptyTaskError",
    "MissingImageError",
    "Task",
    "TaskDataError",
    "UnknownTaskError",
    "get_benchmark",
    "load_task",
]
