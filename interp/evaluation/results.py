"""The per-sample results file of an evaluation run, and its sidecar of settings.

``<out>`` is JSON Lines, one line per document, appended (flushed and fsync'ed) as
soon as the document is scored, in the run's document order. ``<out>.meta.json``
holds the run's settings (model, task, split, limit, shard, prompt suffix, generation
length, the documents it covers) and package versions; nothing but sample rows goes
into the JSONL.

A run killed at any point (SIGKILL included) leaves at worst a last line cut short;
:meth:`ResultsLog.resume` drops that partial line (rewriting the file atomically),
keeps every complete line, and refuses to continue a file written with other
settings. A damaged line anywhere else is an error, never silently dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InterpError

# Settings that must match to continue a file; everything else in the meta is informative.
IDENTITY_KEYS = ("model", "task", "split", "limit", "shard", "prompt_suffix", "max_new_tokens", "doc_ids")
# Row fields that legitimately differ between two runs of the same settings.
TIMING_FIELDS = ("seconds",)


class ResultsFileError(InterpError):
    """A results file (or its meta sidecar) is damaged or missing."""


class ResumeError(InterpError):
    """A results file cannot be continued with these settings."""


def meta_path(out: Path) -> Path:
    """The settings sidecar of a results file: ``<out>.meta.json``."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def read_results(path: Path, *, repair: bool = False) -> tuple[list[dict], bool]:
    """``(rows, cut)``: the complete lines of a results file, and whether a last line was cut short.

    With ``repair=True`` a cut last line is removed from the file.
    """
    path = Path(path)
    data = path.read_bytes()
    complete, newline, tail = data.rpartition(b"\n")
    if not newline:  # no newline at all: everything is an unfinished first line
        complete, tail = b"", data
    rows = []
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ResultsFileError(
                f"{path}:{number} is not a complete JSON line; the file is damaged, not just cut off at the end"
            ) from None
        if not isinstance(row, dict) or "doc_id" not in row:
            raise ResultsFileError(f"{path}:{number} is not a result row (no doc_id)")
        rows.append(row)
    cut = bool(tail)
    if cut and repair:
        write_atomically(path, complete + newline if complete else b"")
    return rows, cut


def read_meta(path: Path) -> dict:
    """The settings sidecar of results file ``path``."""
    sidecar = meta_path(path)
    if not sidecar.is_file():
        raise ResultsFileError(f"{sidecar} is missing, so the settings of {path} are unknown")
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ResultsFileError(f"{sidecar} is not valid JSON") from None


def json_normalized(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(old: dict, new: dict, keys=IDENTITY_KEYS) -> list[str]:
    """``key (old there, new now)`` for each identity key whose values differ."""
    out = []
    for key in keys:
        if old.get(key) != new.get(key):
            if key == "doc_ids":
                out.append("document list (the data or --limit/--shard changed)")
            else:
                out.append(f"{key} ({_show(old.get(key))} there, {_show(new.get(key))} now)")
    return out


class ResultsLog:
    """Append-only writer of one results file: ``with ResultsLog(out) as log: rows = log.resume(meta)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = None

    def resume(self, meta: dict) -> list[dict]:
        """The rows already in the file (a cut last line dropped), after checking its settings.

        A new (or empty) file gets ``meta`` as its sidecar.
        """
        meta = json_normalized(meta)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_results(self.path, repair=True)[0] if self.path.exists() else []
        if rows:
            try:
                old = read_meta(self.path)
            except ResultsFileError as error:
                raise ResumeError(f"cannot resume {self.path}: {error}; use another --out") from None
            differences = describe_differences(old, meta)
            if differences:
                raise ResumeError(
                    f"cannot resume {self.path}: it was written with a different {'; '.join(differences)}; "
                    f"use another --out, or delete it and {meta_path(self.path).name}"
                )
            ids = [row["doc_id"] for row in rows]
            if len(set(map(json.dumps, ids))) != len(ids):
                raise ResultsFileError(f"{self.path} holds a document twice; it was not written by one run")
        else:
            write_atomically(meta_path(self.path), (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
        self._handle = open(self.path, "a", encoding="utf-8")
        return rows

    def append(self, row: dict) -> None:
        """Write one row and make it durable before returning."""
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "IDENTITY_KEYS",
    "ResultsFileError",
    "ResultsLog",
    "ResumeError",
    "TIMING_FIELDS",
    "meta_path",
    "read_meta",
    "read_results",
]
