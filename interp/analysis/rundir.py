"""A ``reproduce`` run directory that survives crashes, shards and a second writer.

Layout of ``DIR``::

    run.json                      the run's settings (model, data, limit, analysis config)
    rows/phase1.shard-I-of-N.jsonl  one line per sample: its sweep, attention and lens rows
    rows/phase2.shard-I-of-N.jsonl  one line per sample: its contrastive rows (and the review layer)
    rows/passes.jsonl             each process's pass counts (summed in the report)
    rows/.lock.shard-I-of-N       held (flock) by the process writing that shard

Rules, so nothing is ever lost:

* the directory (and a probe file in it) is checked writable before any compute;
* ``run.json`` is written once; a run with other settings into the same directory is
  refused with one line naming the differences — nothing there is touched;
* a process appends only to its own shard's files, under an exclusive lock (a second
  process on the same shard is refused); a line cut by a crash is repaired only in
  that process's own file, and only after the settings matched;
* every line is flushed and fsynced as it is written, so a SIGKILL loses at most the
  sample in progress; rerunning the same command continues from there.

Which samples are done is read from *every* shard's file, so an unsharded rerun after
sharded runs (the merge) computes only what is missing and writes the report.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import InterpError


class RunDirError(InterpError):
    """The run directory cannot be used as asked (settings differ, locked, not writable)."""


SETTINGS = "run.json"


def shard_label(shard: tuple[int, int] | None) -> str:
    index, count = shard or (1, 1)
    return f"shard-{index}-of-{count}"


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written there, before any compute."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise RunDirError(f"cannot write to {out}: {reason}") from None


class RunDir:
    """One process's view of a run directory (see the module docstring)."""

    def __init__(self, out: str | Path, settings: dict, shard: tuple[int, int] | None = None):
        self.out = Path(out)
        self.settings = json.loads(json.dumps(settings))
        self.shard = shard
        self.label = shard_label(shard)
        self.rows = self.out / "rows"
        self._lock = None
        self._files: dict[str, object] = {}

    # -- opening ------------------------------------------------------------------

    def open(self) -> "RunDir":
        check_writable(self.out)
        path = self.out / SETTINGS
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                raise RunDirError(f"{path} is not a reproduce run's settings file; use another --out") from None
            if not isinstance(stored, dict) or stored.get("kind") != "interp-reproduce":
                raise RunDirError(f"{self.out} holds something else than an interp reproduce run; use another --out")
            differences = [f"{key}: {stored.get(key)!r} there, {self.settings.get(key)!r} now"
                           for key in sorted(set(stored) | set(self.settings)) if stored.get(key) != self.settings.get(key)]
            if differences:
                raise RunDirError(f"{self.out} holds a run with other settings ({'; '.join(differences[:3])}"
                                  f"{'; ...' if len(differences) > 3 else ''}); use another --out")
        elif (self.out / "report.json").exists() or any(self.out.glob("masking_sweep.csv")):
            raise RunDirError(f"{self.out} holds an older run's report without its settings; use another --out")
        self.rows.mkdir(exist_ok=True)
        self._lock = open(self.rows / f".lock.{self.label}", "a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise RunDirError(f"another process is writing {self.label} of {self.out}; wait for it or use another --out")
        if not path.exists():
            tmp = path.with_name(f".{SETTINGS}.{os.getpid()}")
            tmp.write_text(json.dumps(self.settings, indent=1))
            os.replace(tmp, path)
        for phase in ("phase1", "phase2"):
            _repair_cut_line(self.rows / f"{phase}.{self.label}.jsonl")
        return self

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rows ---------------------------------------------------------------------

    def done(self, phase: str) -> dict[str, dict]:
        """``{item id: its line}`` over every shard's file of ``phase``."""
        out: dict[str, dict] = {}
        for path in sorted(self.rows.glob(f"{phase}.shard-*.jsonl")):
            for record in _read_lines(path):
                out[record["item"]] = record
        return out

    def append(self, phase: str, record: dict) -> None:
        handle = self._files.get(phase)
        if handle is None:
            handle = self._files[phase] = open(self.rows / f"{phase}.{self.label}.jsonl", "a", encoding="utf-8")
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def add_passes(self, counts: dict, timings: dict) -> None:
        """This process's pass counts and phase timings (the report sums every process's)."""
        self.append("passes", {"item": f"{self.label}:{os.getpid()}", "counts": counts, "timings": timings})

    def passes(self) -> dict:
        total: dict = {"counts": {}, "timings": {}}
        for path in sorted(self.rows.glob("passes.*.jsonl")):
            for record in _read_lines(path):
                for part in ("counts", "timings"):
                    for key, value in record.get(part, {}).items():
                        total[part][key] = total[part].get(key, 0) + value
        return total


def _read_lines(path: Path) -> Iterable[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # a line cut by a crash: not done
            out.append(json.loads(line))
    return out


def _repair_cut_line(path: Path) -> None:
    """Drop a last line without its newline (a crash mid-write) from this process's own file."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as handle:
            handle.truncate(len(keep))
            handle.flush()
            os.fsync(handle.fileno())
