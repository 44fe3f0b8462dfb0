"""Evaluation runs: a model on a benchmark, per-sample JSONL, resume, shards.

``evaluate(vlm, task, out=...)`` (:mod:`.runner`) answers and scores every document,
appending one JSONL row per document; ``summarize(task, rows)`` aggregates;
``merge_shards(paths, out)`` (:mod:`.shards`) joins the files of a ``--shard i/n``
run. The command line is ``interp evaluate`` / ``interp merge`` (:mod:`.cli`).
"""

from .results import TIMING_FIELDS, ResultsFileError, ResumeError, read_results
from .runner import evaluate, summarize
from .shards import ShardError, merge_shards, parse_shard

__all__ = [
    "ResultsFileError",
    "ResumeError",
    "ShardError",
    "TIMING_FIELDS",
    "evaluate",
    "merge_shards",
    "parse_shard",
    "read_results",
    "summarize",
]
