"""Splitting a run across machines (``--shard i/n``) and merging the shards.

Shards are numbered from 1: ``--shard 2/4`` is the second of four, and takes the
documents at positions 1, 5, 9, ... of the task's order (after ``--limit``), i.e.
``docs[i - 1::n]``, so every shard gets an even mix of the benchmark. Each shard
writes its own results file (and meta sidecar listing the documents it covers).
:func:`merge_shards` checks that the files are shards 1..n of one run, each complete,
with no document twice, and writes one file in the task's order, equal to what an
unsharded run writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from collections.abc import Sequence

import pandas as pd

from ..errors import InterpError
from ..outputs import OutputLock, check_output
from .results import (
    ResultsFileError,
    describe_differences,
    meta_path,
    read_meta,
    read_results,
    write_atomically,
)

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# Settings all shards of one run share (the shard and its documents differ).
_RUN_KEYS = ("model", "task", "split", "limit", "prompt_suffix", "max_new_tokens", "decoding")


class ShardError(InterpError):
    """A bad ``--shard`` value, or shard files that do not make one complete run."""


def parse_shard(shard) -> tuple[int, int] | None:
    """``"2/4"`` or ``(2, 4)`` -> ``(2, 4)``, checked (1-based); None stays None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        match = _SHARD.match(shard)
        if not match:
            raise ShardError(f"--shard {shard!r} is not of the form i/n (e.g. 2/4)")
        index, count = int(match[1]), int(match[2])
    else:
        try:
            index, count = (int(x) for x in shard)
        except (TypeError, ValueError):
            raise ShardError(f"shard {shard!r} is not a pair (i, n)") from None
    if count < 1 or not 1 <= index <= count:
        raise ShardError(
            f"shard {index}/{count} does not exist: shards are numbered from 1, use 1/{max(count, 1)} .. "
            f"{max(count, 1)}/{max(count, 1)}"
        )
    return index, count


def shard_docs(docs: Sequence, shard: tuple[int, int] | None) -> list:
    """The documents of shard ``(i, n)``: ``docs[i - 1::n]`` (all of them for None)."""
    if shard is None:
        return list(docs)
    index, count = shard
    return list(docs[index - 1 :: count])


def _key(doc_id) -> str:
    return json.dumps(doc_id)


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, force: bool = False) -> pd.DataFrame:
    """Merge the results files of shards 1..n of one run into ``out`` (and its meta sidecar).

    An existing ``out`` (or its sidecar) is refused untouched unless ``force=True``, which
    replaces it atomically. ``out`` is checked writable and locked before any shard is read.
    """
    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise ShardError("give the shard files to merge")
    if any(p.resolve() == out.resolve() for p in paths if p.exists()):
        raise ShardError(f"the merged file {out} must not be one of the shard files")
    check_output(out, "file")
    with OutputLock(out):
        existing = [p for p in (out, meta_path(out)) if os.path.lexists(p)]
        if existing and not force:
            raise ShardError(
                f"{existing[0]} already exists; merge leaves it untouched: give another --out, or --force to replace it"
            )
        return _merge(paths, out, force)


def _read_shards(paths: list[Path]) -> tuple[dict[int, tuple[Path, dict, list[dict]]], int, dict]:
    """``({index: (path, meta, rows)}, n, first meta)`` of shard files proven to be one run's."""
    shards: dict[int, tuple[Path, dict, list[dict]]] = {}
    count = None
    first_meta = None
    for path in paths:
        if not path.is_file():
            raise ShardError(f"shard file not found: {path}")
        meta = read_meta(path)
        index, n = parse_shard(meta.get("shard") or (1, 1))
        if first_meta is None:
            first_meta, count = meta, n
        differences = describe_differences(first_meta, meta, _RUN_KEYS, continuing=False)
        if differences:
            raise ShardError(f"{path} is from another run than {paths[0]}: {'; '.join(differences)}")
        if n != count:
            raise ShardError(f"{path} is shard {index}/{n} but {paths[0]} is one of {count}")
        if index in shards:
            raise ShardError(f"shard {index}/{n} is given twice: {shards[index][0]} and {path}")
        rows, cut = read_results(path)
        if cut:
            raise ShardError(f"{path} ends with a partly written line: resume that shard (run it again) before merging")
        shards[index] = (path, meta, rows)
    missing = [i for i in range(1, count + 1) if i not in shards]
    if missing:
        raise ShardError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{count}' for i in missing)} "
            f"missing: merge needs all {count}"
        )
    return shards, count, first_meta


def _shard_rows(path: Path, meta: dict, rows: list[dict], index: int, count: int) -> list[str]:
    """The keys of one shard's rows, checked complete and its own (in file order)."""
    if "doc_ids" not in meta:
        raise ResultsFileError(f"{meta_path(path)} does not list the shard's documents")
    wanted = {_key(d) for d in meta["doc_ids"]}
    keys = [_key(row["doc_id"]) for row in rows]
    present = set(keys)
    if len(present) != len(keys):
        raise ShardError(f"{path} holds a document twice")
    extra = [k for k in keys if k not in wanted]
    if extra:
        raise ShardError(f"{path} holds document {extra[0]} that is not in its shard")
    absent = [d for d in meta["doc_ids"] if _key(d) not in present]
    if absent:
        raise ShardError(
            f"{path} (shard {index}/{count}) is incomplete: {len(absent)} of "
            f"{len(meta['doc_ids'])} documents missing, e.g. {absent[0]!r}; resume it before merging"
        )
    return keys


def _merge(paths: list[Path], out: Path, force: bool) -> pd.DataFrame:
    shards, count, first_meta = _read_shards(paths)
    expected: dict[int, list] = {}
    by_key: dict[str, dict] = {}
    for index in range(1, count + 1):
        path, meta, rows = shards[index]
        keys = _shard_rows(path, meta, rows, index, count)
        expected[index] = meta["doc_ids"]
        for key, row in zip(keys, rows):
            if key in by_key:
                raise ShardError(f"document {key} appears in two shards")
            by_key[key] = row
    order = [
        expected[i][j]
        for j in range(max(len(v) for v in expected.values()))
        for i in range(1, count + 1)
        if j < len(expected[i])
    ]
    total = first_meta.get("n_docs")
    if total is not None and total != len(order):
        raise ShardError(f"the shards cover {len(order)} documents but the run has {total}")
    merged = [by_key[_key(doc_id)] for doc_id in order]
    meta = {**first_meta, "shard": None, "doc_ids": order, "merged_from": [str(p) for p in paths]}
    # the sidecar first: a results file is never there without the settings that prove it a run's own
    write_atomically(meta_path(out), (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode(), overwrite=force)
    write_atomically(
        out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in merged).encode(), overwrite=force
    )
    return pd.DataFrame(merged)


__all__ = ["ShardError", "merge_shards", "parse_shard", "shard_docs"]
