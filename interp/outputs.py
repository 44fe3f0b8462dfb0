"""Safe outputs: a long run never loses, truncates or overwrites data that is not its own.

The pieces every command that writes results uses (``interp evaluate`` / ``merge`` now,
``interp reproduce`` next), each failing with one clear line (an :class:`OutputError`):

* :func:`check_output` — before any compute: the location can be written (not a
  directory where a file is wanted or the reverse, no file in place of a parent
  directory, not read-only, not a device, not a full disk) and no other process holds it.
* :class:`OutputLock` — an exclusive ``flock`` on ``<file>.lock`` (or ``<dir>/.interp.lock``)
  against a second writer; the kernel drops it when the process dies, so a lock file
  left by a killed run is stale and simply taken over.
* :func:`write_atomic` — a whole file written under a temporary name and renamed into
  place (``os.replace``), so a crash leaves the old file or the new one, never half of one;
  with ``overwrite=False`` an existing file is never replaced (``os.link``, race-free).
* :func:`atomic_dir` — a directory (a model cache) built under a per-process temporary
  name and renamed into place; when two processes build it at once, both succeed.
* :class:`SettingsRecord` — a run's settings stored as JSON and checked when the run is
  continued: other settings are refused, never overwritten.
* :class:`RowLog` — an append-only JSON Lines file, one record per line, each line made
  durable (fsync) before :meth:`RowLog.append` returns; a line cut by a crash is removed
  only after the caller has proven the file is its own (:meth:`RowLog.open`).
* :class:`RunDir` — all of the above for a run directory: checked, locked, its settings
  claimed, per-analysis logs of *units* (one line per question holding that question's
  rows) to append to and resume from, whole files written atomically.

::

    with RunDir("runs/llava", settings, identity=("model", "dataset", "limit")) as run:
        done = run.done("masking_sweep")                    # {question id: [rows]}
        for item in items:
            if item.id not in done:
                run.append("masking_sweep", item.id, sweep_rows(item))
        run.write("report.json", json.dumps(report))       # atomic
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Sequence

from .errors import InterpError

# Refuse to start a run on a file system with less room than this (bytes).
MIN_FREE_BYTES = 1 << 20
LOCK_SUFFIX = ".lock"
DIR_LOCK_NAME = ".interp.lock"
SETTINGS_NAME = "settings.json"
# One token per process image (not mutated): tells this process's own locks from another's.
_TOKEN = secrets.token_hex(8)


class OutputError(InterpError):
    """An output location cannot be written (or must not be, because it is not this run's)."""


class DiskFullError(OutputError):
    """No space left on the device that holds an output."""


class OutputLockedError(OutputError):
    """Another process is writing the same output."""


class SettingsMismatchError(OutputError):
    """An output holds a run with other settings (or files of no known run)."""


class DamagedLogError(OutputError):
    """A line of a :class:`RowLog` that is not its last is damaged: ``line`` is its number,
    ``is_json`` whether it is complete JSON (then it is not a record of this log)."""

    def __init__(self, message: str, *, line: int = 0, is_json: bool = False):
        super().__init__(message)
        self.line = line
        self.is_json = is_json


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def output_error(error: OSError, path: str | Path, doing: str = "write") -> OutputError:
    """One clear :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    where = f"cannot {doing} {path}"
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{where}: no space left on the device (disk full or quota reached); free some space "
            f"and run the same command again"
        )
    if code == errno.EROFS:
        return OutputError(f"{where}: the file system is read-only; choose an --out on a writable disk")
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"{where}: permission denied; choose an --out you can write to")
    if code == errno.ENOTDIR:
        return OutputError(f"{where}: a part of that path is a file, not a directory")
    if code == errno.EISDIR:
        return OutputError(f"{where}: it is a directory, not a file")
    return OutputError(f"{where}: {error.strerror or error}")


def _fsync_dir(directory: Path) -> None:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- checks before any compute -----------------------------------------------------------------


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")  # pragma: no cover


def _ensure_directory(directory: Path, shown: Path) -> None:
    existing = _first_existing(directory)
    if not existing.is_dir():
        raise OutputError(f"cannot write {shown}: {existing} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, shown, "create the directory of" if directory != shown else "create") from None


def _probe(directory: Path, shown: Path, min_free: int) -> None:
    """Write (and fsync) a small file in ``directory``, then check the free space."""
    probe = directory / f".interp-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise output_error(error, shown) from None
    try:
        _write_all(fd, b"\0" * 4096)
        os.fsync(fd)
    except OSError as error:
        raise output_error(error, shown) from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
    try:
        info = os.statvfs(directory)
    except OSError:  # pragma: no cover - no statvfs
        return
    free = info.f_bavail * info.f_frsize
    if free < min_free:
        raise DiskFullError(
            f"cannot write {shown}: only {_size(free)} free on its disk (at least {_size(min_free)} "
            f"needed to start); free some space or choose another --out"
        )


def check_output(path: str | Path, kind: str = "file", *, min_free: int = MIN_FREE_BYTES, lock: bool = True) -> Path:
    """Check, before any compute, that ``path`` can be written as a ``kind`` ("file" or "dir").

    Creates missing parent directories, writes and removes a small probe file, checks
    that at least ``min_free`` bytes are free and (``lock=True``) that no other process
    holds the output's lock. Returns the path; raises one :class:`OutputError` line.
    An existing file is left untouched.
    """
    if kind not in ("file", "dir"):
        raise InterpError(f"kind must be 'file' or 'dir', not {kind!r}")
    path = Path(path).expanduser()
    if kind == "file":
        if path.is_dir():
            raise OutputError(
                f"cannot write {path}: it is a directory; give a file name, e.g. {path / 'results.jsonl'}"
            )
        if os.path.lexists(path):
            mode = os.stat(path).st_mode if path.exists() else 0
            if not stat.S_ISREG(mode):
                raise OutputError(f"cannot write {path}: it is not a regular file (a device, a pipe or a broken link)")
        directory = path.parent
    else:
        if os.path.lexists(path) and not path.is_dir():
            raise OutputError(f"cannot write into {path}: it is a file, not a directory")
        directory = path
    _ensure_directory(directory, path)
    if kind == "file" and path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as error:
            raise output_error(error, path) from None
    _probe(directory, path, min_free)
    if lock:
        OutputLock(path, kind).check()
    return path


# -- the lock -----------------------------------------------------------------------------------


def lock_path(path: str | Path, kind: str = "file") -> Path:
    """The lock file of an output: ``<file>.lock``, or ``<dir>/.interp.lock``."""
    path = Path(path)
    return path / DIR_LOCK_NAME if kind == "dir" else path.with_name(path.name + LOCK_SUFFIX)


class OutputLock:
    """An exclusive lock on an output, held from :meth:`acquire` to :meth:`release`.

    ``flock`` on the lock file: a second process (or a second lock in this one) is
    refused at once with an :class:`OutputLockedError` naming the holder. The kernel
    releases the lock when the holder dies; its lock file is then stale and taken over.
    A clean release removes the lock file.
    """

    def __init__(self, path: str | Path, kind: str = "file", *, lock_file: str | Path | None = None):
        self.target = Path(path)
        self.path = Path(lock_file) if lock_file is not None else lock_path(path, kind)  # e.g. one lock per shard
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _refusal(self) -> OutputLockedError:
        holder = self._holder()
        if holder.get("pid") == os.getpid() and holder.get("token") == _TOKEN:
            who = "this process already (it is opened twice)"
        else:
            who = "another process"
            details = [
                f"pid {holder['pid']}" if "pid" in holder else "",
                f"on {holder['host']}" if "host" in holder else "",
                f"since {holder['since']}" if "since" in holder else "",
            ]
            details = " ".join(d for d in details if d)
            if details:
                who += f" ({details}{': ' + holder['command'] if holder.get('command') else ''})"
        return OutputLockedError(
            f"{self.target} is being written by {who}; wait for it to finish or use another --out (lock: {self.path})"
        )

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise output_error(error, self.target, "lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refusal() from None
                raise output_error(error, self.target, "lock") from None
            try:  # the file we locked must still be the one at the path (a releaser may have removed it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": _TOKEN,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
        }
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, (json.dumps(record) + "\n").encode())
        except OSError:  # the lock holds even if its note cannot be written (a full disk)
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def check(self) -> None:
        """Raise :class:`OutputLockedError` if another process holds the lock now (holds nothing)."""
        if self._fd is not None:
            return
        if not self.path.exists():
            return
        self.acquire()
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- whole files and directories ----------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    The data goes to a per-process temporary name beside ``path`` (fsync'ed), then
    ``os.replace`` puts it in place. ``overwrite=False`` never replaces an existing file
    (the final step is ``os.link``, which fails if ``path`` exists): then an
    :class:`OutputError` is raised and nothing changes.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    except FileExistsError:
        raise OutputError(f"{path} already exists; it is left untouched") from None
    except OSError as error:
        raise output_error(error, path) from None
    finally:
        if os.path.lexists(temporary):
            with contextlib.suppress(OSError):
                temporary.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build directory ``target`` atomically: ``with atomic_dir(t) as tmp: write files into tmp``.

    ``tmp`` is a per-process temporary directory beside ``target``; on success its files
    are fsync'ed and it is renamed to ``target``. If another process created ``target``
    meanwhile, that one is kept and ours removed (both builders succeed). On an
    exception the temporary directory is removed and the error propagates.
    """
    target = Path(target)
    _ensure_directory(target.parent, target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        temporary.mkdir()
    except OSError as error:
        raise output_error(error, target, "create") from None
    try:
        yield temporary
        _fsync_tree(temporary)
        try:
            os.rename(temporary, target)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                raise output_error(error, target, "create") from None
            # another process finished first: keep its copy, drop ours
        else:
            _fsync_dir(target.parent)
    except OSError as error:
        raise output_error(error, target, "create") from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


# -- settings -----------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars keep their type
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_normalized(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers, paths strings)."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as error:
        raise InterpError(f"cannot store {_show(value)} as JSON: {error}") from None


def settings_differences(old: dict, new: dict, keys: Iterable[str] | None = None) -> list[str]:
    """``key (old there, new now)`` for each key (all keys of either for None) whose values differ."""
    keys = list(keys) if keys is not None else sorted(set(old) | set(new))
    return [
        f"{key} ({_show(old.get(key))} there, {_show(new.get(key))} now)"
        for key in keys
        if old.get(key) != new.get(key)
    ]


class SettingsRecord:
    """A run's settings as a JSON file, written once and checked on every continuation.

    ``identity`` names the keys that must match to continue (None: every key);
    the others (versions, timings, the date) are informative.
    """

    def __init__(self, path: str | Path, identity: Sequence[str] | None = None):
        self.path = Path(path)
        self.identity = tuple(identity) if identity is not None else None

    def read(self) -> dict | None:
        """The stored settings, or None when there is no record."""
        if not self.path.exists():
            return None
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SettingsMismatchError(
                f"{self.path} is not a readable settings record; the run it belongs to is "
                f"unknown, so nothing there is touched"
            ) from None
        if not isinstance(value, dict):
            raise SettingsMismatchError(f"{self.path} is not a settings record (not a JSON object)")
        return value

    def claim(self, settings: dict, *, what: str | None = None) -> dict:
        """Store ``settings`` if there is no record; else check them against it.

        Returns the stored record. Other settings raise :class:`SettingsMismatchError`
        (one line listing the differences) and change nothing.
        """
        settings = json_normalized(settings)
        old = self.read()
        if old is None:
            write_atomic(self.path, json.dumps(settings, indent=1, ensure_ascii=False) + "\n", overwrite=False)
            return settings
        differences = settings_differences(old, settings, self.identity)
        if differences:
            raise SettingsMismatchError(
                f"{what or self.path.parent} holds a run with other settings: {'; '.join(differences)}; "
                f"it is left untouched: use another --out, or delete it to start over"
            )
        return old


# -- append-only logs ---------------------------------------------------------------------------


class RowLog:
    """An append-only JSON Lines file of records (dicts), resumable after a crash.

    :meth:`read` returns the complete lines without changing the file; :meth:`open`
    (call it only once the file is proven to be this run's) removes a last line cut by a
    crash and opens the file for :meth:`append`, which makes each call's lines durable
    before it returns. A damaged line that is not the last is an error (a
    :class:`DamagedLogError`), never dropped; with ``check``, so is a record for which
    ``check(record)`` is false.
    """

    def __init__(self, path: str | Path, *, check: Callable[[dict], bool] | None = None):
        self.path = Path(path)
        self.check = check
        self._fd: int | None = None
        self._complete = 0  # bytes of complete lines

    def read(self) -> tuple[list[dict], bool]:
        """``(records, cut)``: the complete lines, and whether a last line was cut short."""
        if not self.path.exists():
            return [], False
        if not self.path.is_file():  # a device such as /dev/full would be read forever
            raise OutputError(f"cannot read {self.path}: it is not a regular file")
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise output_error(error, self.path, "read") from None
        end = data.rfind(b"\n") + 1
        records = []
        for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise DamagedLogError(
                    f"{self.path}:{number} is not a complete JSON line; the file is damaged, not just "
                    f"cut off at the end; it is left untouched",
                    line=number,
                    is_json=False,
                ) from None
            if not isinstance(record, dict):
                raise DamagedLogError(
                    f"{self.path}:{number} is not a JSON object; it is left untouched", line=number, is_json=True
                )
            if self.check is not None and not self.check(record):
                raise DamagedLogError(
                    f"{self.path}:{number} is not a record of this log; it is left untouched", line=number, is_json=True
                )
            records.append(record)
        self._complete = end
        return records, end < len(data)

    def open(self) -> list[dict]:
        """Remove a cut last line, open for appending, and return the complete records."""
        records, cut = self.read()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if cut:
                os.ftruncate(self._fd, self._complete)
                os.fsync(self._fd)
        except OSError as error:
            self.close()
            raise output_error(error, self.path) from None
        return records

    def append(self, *records: dict) -> None:
        """Write ``records`` (one line each, in one write) and fsync before returning."""
        if self._fd is None:
            raise InterpError(f"{self.path} is not open for appending (call open() first)")
        data = "".join(json.dumps(json_normalized(r), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as error:
            raise output_error(error, self.path) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- a run directory ----------------------------------------------------------------------------


def logged_units(path: str | Path | None, units, key, compute) -> list[dict]:
    """Every unit's rows, each unit computed once across runs: with ``path`` (a :class:`RowLog`) a
    unit whose ``key(unit)`` is there is read back, any other is computed by ``compute(unit)`` and
    appended (fsynced) before the next starts. Returns all the rows, in the units' order."""
    log = RowLog(path) if path is not None else None
    done = {str(record["key"]): record["rows"] for record in log.open()} if log is not None else {}
    rows: list[dict] = []
    try:
        for unit in units:
            name = str(key(unit))
            unit_rows = done[name] if name in done else compute(unit)
            if log is not None and name not in done:
                log.append({"key": name, "rows": unit_rows})
            rows.extend(unit_rows)
    finally:
        if log is not None:
            log.close()
    return rows


def _ours(name: str) -> bool:
    """The lock, or what a killed writer may leave: a probe or a temporary file (never data)."""
    return (
        name == DIR_LOCK_NAME or name.startswith(".interp-probe-") or (name.startswith(".") and name.endswith(".tmp"))
    )


class RunDir:
    """A run's output directory: checked, locked, its settings claimed, resumable logs.

    ``with RunDir(path, settings, identity=keys) as run:`` checks the directory can be
    written (:func:`check_output`), takes its lock (:class:`OutputLock`), and stores
    ``settings`` in ``settings.json`` or checks them against the stored ones
    (:class:`SettingsRecord`). An existing non-empty directory without a settings record
    holds files of no known run and is refused, untouched.

    Per analysis ``name`` the run keeps ``<name>.jsonl``: one line per *unit* (a
    question), ``{"key": ..., "rows": [...]}``, so a unit is either complete or absent.
    :meth:`done` reads the complete units (repairing a cut last line: the directory is
    proven this run's by then), :meth:`append` adds one durably, :meth:`rows` flattens
    them in order. :meth:`write` writes a whole product file (report, CSV) atomically.
    """

    def __init__(
        self, path: str | Path, settings: dict, *, identity: Sequence[str] | None = None, min_free: int = MIN_FREE_BYTES
    ):
        self.path = Path(path)
        self.settings = settings
        self.identity = identity
        self.min_free = min_free
        self._lock = OutputLock(self.path, "dir")
        self._logs: dict[str, RowLog] = {}
        self._done: dict[str, dict] = {}

    def open(self) -> RunDir:
        check_output(self.path, "dir", min_free=self.min_free)
        self._lock.acquire()
        try:
            record = SettingsRecord(self.path / SETTINGS_NAME, self.identity)
            if record.read() is None:
                others = sorted(p.name for p in self.path.iterdir() if not _ours(p.name))
                if others:
                    raise SettingsMismatchError(
                        f"{self.path} already holds files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                        f"but no {SETTINGS_NAME}, so they are not a resumable run's; they are left untouched: "
                        f"use another --out"
                    )
            self.settings = record.claim(self.settings, what=str(self.path))
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self._lock.release()

    def __enter__(self) -> RunDir:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def file(self, name: str) -> Path:
        return self.path / name

    def _log(self, name: str) -> RowLog:
        if not self._lock.held:
            raise InterpError(f"{self.path} is not open (use `with RunDir(...) as run:`)")
        if name not in self._logs:
            log = RowLog(self.path / f"{name}.jsonl")
            units = {}
            for number, record in enumerate(log.open(), start=1):
                if "key" not in record or not isinstance(record.get("rows"), list):
                    log.close()
                    raise OutputError(f"{log.path}:{number} is not a unit record ({{'key', 'rows'}}); left untouched")
                key = json.dumps(record["key"])
                if key in units:
                    log.close()
                    raise OutputError(f"{log.path} holds unit {record['key']!r} twice; it was not written by one run")
                units[key] = record["rows"]
            self._logs[name] = log
            self._done[name] = units
        return self._logs[name]

    def done(self, name: str) -> dict:
        """``{key: rows}`` of the complete units of analysis ``name`` (in file order)."""
        self._log(name)
        return {json.loads(k): v for k, v in self._done[name].items()}

    def append(self, name: str, key: Any, rows: Sequence[dict]) -> None:
        """Add unit ``key`` (a question id) with its ``rows``, durably; a unit is written once."""
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise InterpError(f"a unit key is a question id (str or int), not {type(key).__name__}")
        log = self._log(name)
        encoded = json.dumps(json_normalized(key))
        if encoded in self._done[name]:
            raise OutputError(f"unit {key!r} of {name} is already in {log.path}")
        rows = json_normalized(list(rows))
        log.append({"key": json_normalized(key), "rows": rows})
        self._done[name][encoded] = rows

    def rows(self, name: str, order: Sequence[Any] | None = None) -> list[dict]:
        """All rows of analysis ``name``, unit after unit (in ``order`` of keys if given)."""
        done = self.done(name)
        keys = list(done) if order is None else list(order)
        missing = [key for key in keys if key not in done]
        if missing:
            raise InterpError(f"{len(missing)} unit(s) of {name} not written yet, e.g. {missing[0]!r}")
        return [row for key in keys for row in done[key]]

    def write(self, name: str, data: bytes | str) -> Path:
        """Write product file ``name`` (report, CSV, figure bytes) atomically."""
        if not self._lock.held:
            raise InterpError(f"{self.path} is not open (use `with RunDir(...) as run:`)")
        return write_atomic(self.path / name, data)


__all__ = [
    "DamagedLogError",
    "DiskFullError",
    "MIN_FREE_BYTES",
    "OutputError",
    "OutputLock",
    "OutputLockedError",
    "RowLog",
    "RunDir",
    "SettingsMismatchError",
    "SettingsRecord",
    "atomic_dir",
    "check_output",
    "json_normalized",
    "lock_path",
    "output_error",
    "settings_differences",
    "write_atomic",
]
