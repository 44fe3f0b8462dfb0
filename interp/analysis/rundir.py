"""A ``reproduce`` run directory that survives crashes, shards and a second writer.

Layout of ``DIR``::

    run.json                      the run's settings (model and its weights, data, limit, analysis config)
    rows/phase1.shard-I-of-N.jsonl  one line per sample: its sweep, attention and lens rows
    rows/phase2.shard-I-of-N.jsonl  one line per sample: its contrastive rows (and the review layer)
    rows/passes.jsonl             each process's pass counts (summed in the report)
    rows/<section>.jsonl          one line per unit of a report section (a patched pair, a lens sample)
    rows/<section>.settings.json  the settings the section's rows were computed with
    rows/.lock.shard-I-of-N       held (flock) by the process writing that shard
    report.json, report.md        the report (``interp reproduce``), written once the sections are done
    patching_sweep.csv            the patching section's rows (``interp reproduce``, ``interp patch``)
    attribution_sweep.csv         the attribution section's rows; attribution_agreement.csv: its agreement
    patching.json, patching.md    ``interp patch``'s report (attribution.json / .md with ``--method atp|ig``)
    patching_sweep.partial.jsonl  ``interp patch --resume``'s row log (attribution_sweep.partial.jsonl)

These names are spelled once, in :class:`RunFiles` (:data:`FILES`): every writer and reader
(the report, the sections, ``interp patch``, ``interp explore``, ``interp compare``) takes them
from there.

Rules, so nothing is ever lost:

* the directory (and a probe file in it) is checked writable before any compute;
* ``run.json`` is written once; a run with other settings into the same directory is
  refused with one line naming the differences — nothing there is touched;
* a process appends only to its own shard's files, under an exclusive lock (a second
  process on the same shard is refused); a line cut by a crash is repaired only in
  that process's own file, and only after the settings matched (``interp.outputs``);
* every line is flushed and fsynced as it is written, so a SIGKILL loses at most the
  sample in progress; rerunning the same command continues from there.

Which samples are done is read from *every* shard's file, so an unsharded rerun after
sharded runs (the merge) computes only what is missing and writes the report.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InterpError
from ..runfiles import FILES
from ..outputs import OutputError, OutputLock, RowLog, SettingsRecord, check_output


class RunDirError(InterpError):
    """The run directory cannot be used as asked (settings differ, not a reproduce run)."""


#: what an interrupted writer (or another shard starting at the same moment) may leave
#: beside the settings before they exist: locks, probes, temporary files, the rows folder
_LEFTOVERS = (".interp.lock", ".interp-probe-", f".{FILES.settings}.", FILES.rows)


def shard_label(shard: tuple[int, int] | None) -> str:
    index, count = shard or (1, 1)
    return f"shard-{index}-of-{count}"


class RunDir:
    """One process's view of a run directory (see the module docstring), built on
    :mod:`interp.outputs` (checked output, a lock per shard, the settings record, durable
    JSON Lines logs)."""

    def __init__(self, out: str | Path, settings: dict, shard: tuple[int, int] | None = None):
        self.out = Path(out)
        self.settings = settings
        self.shard = shard
        self.label = shard_label(shard)
        self.rows = self.out / FILES.rows
        self._lock: OutputLock | None = None
        self._logs: dict[str, RowLog] = {}

    def open(self) -> RunDir:
        check_output(self.out, "dir", lock=False)
        record = SettingsRecord(self.out / FILES.settings)
        if record.read() is None:
            others = sorted(p.name for p in self.out.iterdir() if not p.name.startswith(_LEFTOVERS))
            if others:
                raise RunDirError(
                    f"{self.out} already holds files ({', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}) of no resumable reproduce run; they are left "
                    "untouched: use another --out"
                )
        elif (record.read() or {}).get("kind") != "interp-reproduce":
            raise RunDirError(f"{self.out} holds something else than an interp reproduce run; use another --out")
        self.rows.mkdir(exist_ok=True)
        self._lock = OutputLock(self.out, "dir", lock_file=self.rows / f".lock.{self.label}").acquire()
        try:
            try:
                record.claim(self._settings_for(record.read()), what=str(self.out))
            except OutputError:
                if record.read() is None:
                    raise
                # another shard wrote it first: compare
                record.claim(self._settings_for(record.read()), what=str(self.out))
            for phase in ("phase1", "phase2", "passes"):  # proven ours: repair a cut last line, open to append
                if self._path(phase).exists():
                    self._open_log(phase)
        except BaseException:
            self.close()
            raise
        return self

    def _settings_for(self, stored: dict | None) -> dict:
        """The settings to claim: a run directory written before run.json named the weights
        (``weights``) continues without that key (its weights are unknown; nothing else is relaxed)."""
        if stored is not None and "weights" not in stored:
            return {key: value for key, value in self.settings.items() if key != "weights"}
        return self.settings

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, phase: str) -> dict[str, dict]:
        """``{item id: its line}`` over every shard's file of ``phase`` (read, never changed)."""
        out: dict[str, dict] = {}
        for path in sorted(self.rows.glob(f"{phase}.shard-*.jsonl")):
            for record in RowLog(path).read()[0]:
                if record["item"] in out and phase != "passes":
                    raise OutputError(f"{path} repeats sample {record['item']!r}; it was not written by this run")
                out[record["item"]] = record
        return out

    def _path(self, phase: str) -> Path:
        return self.rows / f"{phase}.{self.label}.jsonl"

    def _open_log(self, phase: str) -> RowLog:
        log = RowLog(self._path(phase))
        log.open()
        self._logs[phase] = log
        return log

    def append(self, phase: str, record: dict) -> None:
        """Add one line to this shard's file of ``phase`` (created on the first line), durably."""
        (self._logs.get(phase) or self._open_log(phase)).append(record)

    def section_log(self, name: str, settings: dict) -> Path:
        """The row log of section ``name`` (``rows/<name>.jsonl``), after claiming its ``settings``
        in ``rows/<name>.settings.json``: a continuation with other settings for the section is
        refused with one line (its rows were computed for those), nothing touched. Sections run
        once the samples are done, in one process, so their logs have no shard label."""
        SettingsRecord(self.out / FILES.section_settings(name)).claim(settings, what=f"{self.out} (section {name})")
        return self.out / FILES.section_log(name)

    def section_rows(self, name: str) -> list[dict]:
        """The rows section ``name`` has logged so far (its complete records, in order; none when
        it has not run)."""
        path = self.out / FILES.section_log(name)
        if not path.exists():
            return []
        return [row for record in RowLog(path).read()[0] for row in record["rows"]]

    def add_passes(self, counts: dict, timings: dict, batch_size: int | None = None) -> None:
        """This process's pass counts and phase timings (the report sums every process's), and the
        batch size it ran with (not a setting: a resumed run may use another)."""
        record: dict = {"item": f"{self.label}:{os.getpid()}", "counts": counts, "timings": timings}
        if batch_size is not None:
            record["batch_size"] = batch_size
        self.append("passes", record)

    def passes(self) -> dict:
        """Every process's counts and timings summed, and ``batch_sizes``: the batch sizes they ran with."""
        total: dict = {"counts": {}, "timings": {}, "batch_sizes": set()}
        for path in sorted(self.rows.glob("passes.shard-*.jsonl")):
            for record in RowLog(path).read()[0]:
                for part in ("counts", "timings"):
                    for key, value in record.get(part, {}).items():
                        total[part][key] = total[part].get(key, 0) + value
                if "batch_size" in record:
                    total["batch_sizes"].add(record["batch_size"])
        total["batch_sizes"] = sorted(total["batch_sizes"])
        return total
