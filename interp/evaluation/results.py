"""The per-sample results file of an evaluation run, and its sidecar of settings.

``<out>`` is JSON Lines (an :class:`interp.outputs.RowLog`), one line per document,
appended (fsync'ed) as soon as the document is scored, in the run's document order.
``<out>.meta.json`` holds the run's settings (model, task, split, limit, shard, prompt
suffix, generation length, the documents it covers) and package versions; nothing but
sample rows goes into the JSONL.

A run killed at any point (SIGKILL included) leaves at worst a last line cut short.
:meth:`ResultsLog.resume` first proves the file is this run's (its sidecar exists and
holds the same settings; a file without one is refused untouched, whatever it holds),
then drops that partial line, keeps every complete line, and continues. A damaged line
anywhere else is an error, never silently dropped. While a run writes ``<out>`` it holds
``<out>.lock`` (:class:`interp.outputs.OutputLock`): a second writer is refused.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import InterpError
from ..outputs import (
    DamagedLogError,
    OutputLock,
    RowLog,
    check_output,
    json_normalized,
    settings_differences,
    write_atomic,
)

# Settings that must match to continue a file; everything else in the meta is informative.
IDENTITY_KEYS = ("model", "task", "split", "limit", "shard", "prompt_suffix", "max_new_tokens", "decoding", "doc_ids")
# A file written before the meta named its decoding was a greedy run.
LEGACY_DEFAULTS = {"decoding": "greedy"}


def _sampled(meta: dict) -> bool:
    return isinstance(meta.get("decoding"), dict)


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


def write_atomically(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Replace ``path`` by ``data`` so that a crash leaves either the old or the new file."""
    write_atomic(path, data, overwrite=overwrite)


class _ResultsRows(RowLog):
    """The :class:`interp.outputs.RowLog` of a results file: every line a row with a ``doc_id``."""

    def __init__(self, path: Path):
        super().__init__(path, check=lambda row: "doc_id" in row)

    def read(self) -> tuple[list[dict], bool]:
        try:
            return super().read()
        except DamagedLogError as error:
            if error.is_json:
                raise ResultsFileError(f"{self.path}:{error.line} is not a result row (no doc_id)") from None
            raise ResultsFileError(
                f"{self.path}:{error.line} is not a complete JSON line; the file is damaged, not just cut off at the end"
            ) from None


def read_results(path: Path, *, repair: bool = False) -> tuple[list[dict], bool]:
    """``(rows, cut)``: the complete lines of a results file, and whether a last line was cut short.

    With ``repair=True`` a cut last line is removed from the file.
    """
    path = Path(path)
    if not path.is_file():  # a device such as /dev/full would be read forever
        raise ResultsFileError(f"{path} is not a regular file")
    log = _ResultsRows(path)
    rows, cut = log.read()
    if cut and repair:  # only the cut tail goes: every complete line stays where it is
        with log:
            log.open()
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


def describe_differences(old: dict, new: dict, keys=IDENTITY_KEYS, *, continuing: bool = True) -> list[str]:
    """``key (old there, new now)`` for each identity key whose values differ. The decoding
    (greedy, or sampling with its temperature and seed) is part of a run's identity; when
    ``continuing`` a sampled file, so is the batch size, since each batch draws from a seed
    made from its first document's index."""
    old = {**LEGACY_DEFAULTS, **old}
    new = {**LEGACY_DEFAULTS, **new}
    if continuing and (_sampled(old) or _sampled(new)) and "batch_size" not in keys:
        keys = (*keys, "batch_size")
    out = []
    for key in keys:
        if old.get(key) != new.get(key):
            if key == "doc_ids":
                out.append("document list (the data or --limit/--shard changed)")
            else:
                out += settings_differences(old, new, [key])
    return out


def check_results_out(path: Path) -> Path:
    """Before any compute: ``path`` can be written (:func:`interp.outputs.check_output`),
    no other process writes it, and if it exists it is an evaluation's results file
    (its sidecar is there). Changes nothing."""
    path = check_output(path, "file")
    sidecar = meta_path(path)
    if path.exists() and path.stat().st_size > 0 and not sidecar.exists():
        raise ResumeError(
            f"cannot resume {path}: {sidecar.name} is missing, so it is not known to be a results file of "
            f"this run; it is left untouched: use another --out"
        )
    return path


class ResultsLog:
    """Append-only writer of one results file: ``with ResultsLog(out) as log: rows = log.resume(meta)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._rows = _ResultsRows(self.path)
        self._lock = OutputLock(self.path)

    def resume(self, meta: dict) -> list[dict]:
        """The rows already in the file (a cut last line dropped), after checking its settings.

        Order: the output can be written; its lock is taken (a second writer is refused);
        the file is proven this run's (sidecar present with the same settings, every
        complete line a result row, no document twice) -- only then is a cut last line
        removed. A new file gets ``meta`` as its sidecar. Any refusal leaves the file untouched.
        """
        meta = json_normalized(meta)
        check_results_out(self.path)
        self._lock.acquire()
        try:
            return self._resume(meta)
        except BaseException:
            self.close()
            raise

    def _resume(self, meta: dict) -> list[dict]:
        sidecar = meta_path(self.path)
        if sidecar.exists():
            try:
                old = read_meta(self.path)
            except ResultsFileError as error:
                raise ResumeError(
                    f"cannot resume {self.path}: {error}; it is left untouched: use another --out"
                ) from None
            differences = describe_differences(old, meta) if isinstance(old, dict) else ["settings (not a JSON object)"]
            if differences:
                raise ResumeError(
                    f"cannot resume {self.path}: it was written with a different {'; '.join(differences)}; "
                    f"it is left untouched: use another --out, or delete it and {sidecar.name}"
                )
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise ResumeError(
                f"cannot resume {self.path}: {sidecar.name} is missing, so it is not known to be a "
                f"results file of this run; it is left untouched: use another --out"
            )
        rows, _ = self._rows.read()
        ids = [row["doc_id"] for row in rows]
        if len(set(map(json.dumps, ids))) != len(ids):
            raise ResultsFileError(f"{self.path} holds a document twice; it was not written by one run")
        if not sidecar.exists():
            write_atomically(sidecar, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
        return self._rows.open()  # proven this run's: a cut last line goes

    def append(self, row: dict) -> None:
        """Write one row and make it durable before returning (a full disk: one clear line)."""
        self._rows.append(row)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # close runs in finally blocks: never hide the error that got there
            self._rows.close()
        self._lock.release()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "IDENTITY_KEYS",
    "LEGACY_DEFAULTS",
    "ResultsFileError",
    "ResultsLog",
    "ResumeError",
    "check_results_out",
    "TIMING_FIELDS",
    "meta_path",
    "read_meta",
    "read_results",
]
