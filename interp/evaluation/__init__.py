"""Evaluation runs: a model on a benchmark, per-sample JSONL, resume, shards.

``evaluate(vlm, task, out=...)`` (:mod:`.runner`) answers and scores every document,
appending one JSONL row per document; ``summarize(task, rows)`` aggregates;
``merge_shards(paths, out)`` (:mod:`.shards`) joins the files of a ``--shard i/n``
run. The command line is ``interp evaluate`` / ``interp merge`` (:mod:`.cli`).
The names are imported on first use, so the command line's ``--help`` stays fast.
"""

from importlib import import_module

_LAZY = {
    "TIMING_FIELDS": ".results",
    "ResultsFileError": ".results",
    "ResumeError": ".results",
    "read_results": ".results",
    "evaluate": ".runner",
    "summarize": ".runner",
    "ShardError": ".shards",
    "merge_shards": ".shards",
    "parse_shard": ".shards",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
