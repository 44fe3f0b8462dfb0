"""Safe outputs (interp.outputs): checks before compute, the lock, atomic files and
directories, the settings record, append-only logs and run directories.

Real failures, not mocks: a second *process* holds the lock; a SIGKILLed holder leaves a
stale lock; a read-only file system and a full disk are real (tmpfs mounts in a private
mount namespace, ``unshare``), so ENOSPC and EROFS come from the kernel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from interp.errors import InterpError
from interp.outputs import (
    DamagedLogError,
    DIR_LOCK_NAME,
    OutputError,
    OutputLock,
    OutputLockedError,
    RowLog,
    RunDir,
    SettingsMismatchError,
    SettingsRecord,
    atomic_dir,
    check_output,
    lock_path,
    write_atomic,
)

from .processes import error_line, in_mount_namespace, snapshot, start_python, wait_for_line

# -- checks before compute -----------------------------------------------------------------------------


def test_check_output_gives_one_line_per_bad_location(tmp_path):
    existing = tmp_path / "results.jsonl"
    existing.write_bytes(b'{"doc_id": 1}\n')
    before = snapshot(tmp_path)
    cases = [
        (tmp_path, "file", f"cannot write {tmp_path}: it is a directory; give a file name"),
        (existing / "x.jsonl", "file", f"{existing} is a file, not a directory"),
        (existing / "deeper" / "x.jsonl", "file", f"{existing} is a file, not a directory"),
        (existing, "dir", f"cannot write into {existing}: it is a file, not a directory"),
        (existing / "run", "dir", f"{existing} is a file, not a directory"),
        (Path("/dev/full"), "file", "/dev/full: it is not a regular file"),
    ]
    for path, kind, message in cases:
        with pytest.raises(OutputError) as error:
            check_output(path, kind)
        assert message in error_line(error.value)
    assert snapshot(tmp_path) == before  # nothing written, nothing left behind
    assert (
        check_output(existing, "file") == existing
        and check_output(tmp_path / "a" / "b.jsonl") == tmp_path / "a" / "b.jsonl"
    )
    assert (tmp_path / "a").is_dir() and not list((tmp_path / "a").iterdir())  # the parent made, no probe left
    assert snapshot(existing) == {str(existing): b'{"doc_id": 1}\n'}


READ_ONLY_AND_FULL = """
import errno, json, os, sys
from pathlib import Path
from interp.outputs import (DiskFullError, OutputError, RowLog, RunDir, atomic_dir, check_output, write_atomic)
ro, small = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
def line(call):
    try:
        call()
    except OutputError as error:
        return type(error).__name__ + ": " + str(error)
    return "no error"
out["read_only_file"] = line(lambda: check_output(ro / "x.jsonl"))
out["read_only_dir"] = line(lambda: check_output(ro / "run", "dir"))
# a log with two records, then the disk filled up to the last byte
log = RowLog(small / "log.jsonl"); log.open(); log.append({"k": 1}, {"k": 2})
keep = small / "keep.json"; write_atomic(keep, b"old")
fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
for chunk in (4096, 1):
    try:
        while True:
            os.write(fd, b"x" * chunk)
    except OSError as error:
        out["filler_errno"] = error.errno
os.close(fd)
out["full_start"] = line(lambda: check_output(small / "y.jsonl"))
out["full_run_dir"] = line(lambda: RunDir(small / "run", {"a": 1}).open())
out["full_append"] = line(lambda: log.append({"k": 3, "pad": "x" * 8192}))
log.close()
out["full_write_atomic"] = line(lambda: write_atomic(keep, b"new" * 4096))
def build():
    with atomic_dir(small / "cache") as tmp:
        (tmp / "weights").write_bytes(b"w" * 65536)
out["full_atomic_dir"] = line(build)
out["keep"] = keep.read_text()
out["left"] = sorted(p.name for p in small.iterdir())
(small / "filler").unlink()
out["resumed"] = RowLog(small / "log.jsonl").open()
print(json.dumps(out))
"""


def test_read_only_and_full_disk_give_one_line_and_keep_the_data(tmp_path):
    ro, small = tmp_path / "ro", tmp_path / "small"
    out = in_mount_namespace(READ_ONLY_AND_FULL, {str(ro): "ro,size=64k", str(small): "size=256k"}, ro, small)
    assert (
        out["read_only_file"] == f"OutputError: cannot write {ro / 'x.jsonl'}: the file system is read-only; "
        f"choose an --out on a writable disk"
    )
    assert out["read_only_dir"].startswith(f"OutputError: cannot create {ro / 'run'}: the file system is read-only")
    assert out["filler_errno"] == 28  # a real ENOSPC
    for key in ("full_start", "full_run_dir", "full_append", "full_write_atomic", "full_atomic_dir"):
        assert out[key].startswith("DiskFullError: cannot "), key
        assert "no space left on the device" in out[key] or "free on its disk" in out[key], key
    assert out["keep"] == "old"  # the failed atomic write left the old file
    assert set(out["left"]) - {"run"} == {"filler", "keep.json", "log.jsonl"}  # no temporary, probe or partial left
    assert out["resumed"] == [{"k": 1}, {"k": 2}]  # the append that failed left at most a cut line, now dropped


# -- the lock ---------------------------------------------------------------------------------------------

HOLD = """
import sys
from interp.outputs import OutputLock
lock = OutputLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills us)
lock.release()
print("released", flush=True)
"""


def test_a_second_process_is_refused_and_a_stale_lock_taken_over(tmp_path):
    target = tmp_path / "run.jsonl"
    holder = start_python(HOLD, target, "file", stdin=subprocess.PIPE)
    try:
        wait_for_line(holder, "held")
        with pytest.raises(OutputLockedError) as error:
            OutputLock(target).acquire()
        message = error_line(error.value)
        assert f"{target} is being written by another process (pid {holder.pid} on " in message
        assert "wait for it to finish or use another --out" in message
        with pytest.raises(OutputLockedError):
            check_output(target)  # the check before compute sees it too
        holder.stdin.close()
        wait_for_line(holder, "released")
    finally:
        holder.kill()
        holder.wait()
    assert not lock_path(target).exists()  # a clean release removes the lock file
    with OutputLock(target):  # free again
        assert lock_path(target).exists()
        with pytest.raises(OutputLockedError, match="by this process already"):
            OutputLock(target).acquire()  # a second lock in the same process is refused too

    shard = tmp_path / "shard.lock"  # a lock file of one's own choosing (e.g. one per shard of a run)
    with OutputLock(tmp_path, "dir", lock_file=shard):
        with pytest.raises(OutputLockedError, match=f"{tmp_path} is being written by this process already"):
            OutputLock(tmp_path, lock_file=shard).acquire()
        OutputLock(tmp_path, "dir").acquire().release()  # another lock file: another lock
    assert not shard.exists()

    directory = tmp_path / "run"
    directory.mkdir()
    killed = start_python(HOLD, directory, "dir", stdin=subprocess.PIPE)
    wait_for_line(killed, "held")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stale = json.loads((directory / DIR_LOCK_NAME).read_text())
    assert stale["pid"] == killed.pid  # the killed holder's lock file is still there ...
    with OutputLock(directory, "dir") as lock:  # ... but the kernel dropped its lock: taken over
        assert lock.held and json.loads((directory / DIR_LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (directory / DIR_LOCK_NAME).exists()


# -- atomic files and directories ---------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_never_overwrites_when_told(tmp_path):
    path = tmp_path / "report.json"
    write_atomic(path, "one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    with pytest.raises(OutputError, match="report.json already exists; it is left untouched"):
        write_atomic(path, b"three", overwrite=False)
    assert path.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_atomic(tmp_path / "new.json", b"x", overwrite=False)
    assert (tmp_path / "new.json").read_bytes() == b"x"


BUILD = """
import os, sys, time
from pathlib import Path
from interp.outputs import atomic_dir
import interp
target, go = Path(sys.argv[1]), Path(sys.argv[2])
vlm = interp.load("tiny:llava")
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
with atomic_dir(target) as partial:  # the organism cache's path: save_pretrained into a per-process name
    vlm.model.save_pretrained(partial)
    time.sleep(0.5)  # both builders are inside at once
    vlm.processor.save_pretrained(partial)
    (partial / "builder").write_text(str(os.getpid()))
print("built", flush=True)
"""


def test_two_processes_building_one_cache_dir_both_succeed(tmp_path):
    import interp

    from .conftest import tiny_vlm

    cache = tmp_path / "cache"
    target, go = cache / "tiny-llava", tmp_path / "go"
    vlm = tiny_vlm("llava")
    other = start_python(BUILD, target, go)  # a second process builds the same directory at the same time
    try:
        wait_for_line(other, "ready")
        go.touch()
        with atomic_dir(target) as partial:
            vlm.model.save_pretrained(partial)
            deadline = time.monotonic() + 60  # stay inside until the other builder is (or was) inside too
            while len(list(cache.glob(".tiny-llava.*.partial"))) < 2 and not target.exists():
                assert time.monotonic() < deadline and other.poll() is None
                time.sleep(0.01)
            vlm.processor.save_pretrained(partial)
            (partial / "builder").write_text(str(os.getpid()))
        wait_for_line(other, "built")
        assert other.wait(timeout=60) == 0, other.stderr.read()[-2000:]
    finally:
        other.kill()
        other.wait()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-llava"]  # no .partial directory left over
    assert int((target / "builder").read_text()) in {other.pid, os.getpid()}  # one builder's complete copy
    loaded = interp.load(str(target))  # the renamed directory is a complete, loadable model
    saved = json.loads((target / "config.json").read_text())
    assert loaded.config.model_type == "llava" and loaded.n_layers == saved["text_config"]["num_hidden_layers"]

    with pytest.raises(RuntimeError, match="build failed"), atomic_dir(cache / "broken") as partial:
        (partial / "half").write_bytes(b"x")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-llava"]  # a failed build leaves nothing


# -- settings, logs, run directories --------------------------------------------------------------------


def test_settings_record_is_written_once_and_checked(tmp_path):
    record = SettingsRecord(tmp_path / "settings.json", identity=("model", "limit"))
    assert record.read() is None
    stored = record.claim({"model": "m", "limit": 6, "created": "t0", "shape": (2, 3)})
    assert stored["shape"] == [2, 3] and record.claim({"model": "m", "limit": 6, "created": "t1"})["created"] == "t0"
    before = snapshot(tmp_path)
    with pytest.raises(SettingsMismatchError) as error:
        record.claim({"model": "m", "limit": 2})
    assert f"{tmp_path} holds a run with other settings: limit (6 there, 2 now); it is left untouched" in error_line(
        error.value
    )
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(SettingsMismatchError, match="not a settings record"):
        SettingsRecord(tmp_path / "other.json").claim({})
    assert snapshot(tmp_path / "settings.json") == before


def test_row_log_repairs_a_cut_line_only_when_opened(tmp_path):
    path = tmp_path / "rows.jsonl"
    with RowLog(path) as log:
        assert log.open() == []
        log.append({"a": 1})
        log.append({"a": 2}, {"a": 3})
    path.write_bytes(path.read_bytes() + b'{"a": 4, "cut')
    before = path.read_bytes()
    log = RowLog(path)
    assert log.read() == ([{"a": 1}, {"a": 2}, {"a": 3}], True) and path.read_bytes() == before  # read changes nothing
    assert log.open() == [{"a": 1}, {"a": 2}, {"a": 3}]
    log.append({"a": 4})
    log.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": i} for i in (1, 2, 3, 4)]
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    damaged = path.read_bytes()
    with pytest.raises(OutputError, match="rows.jsonl:2 is not a complete JSON line"):
        RowLog(path).open()
    assert path.read_bytes() == damaged
    with pytest.raises(OutputError, match="not a regular file"):
        RowLog("/dev/full").read()  # never read a device (it would never end)


def test_row_log_check_refuses_a_foreign_record_with_its_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"a": 3, "cut')
    before = path.read_bytes()
    with pytest.raises(DamagedLogError, match="rows.jsonl:3 is not a record of this log") as error:
        RowLog(path, check=lambda record: "a" in record).open()
    assert (error.value.line, error.value.is_json) == (3, True) and path.read_bytes() == before
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(DamagedLogError) as error:
        RowLog(path).read()
    assert (error.value.line, error.value.is_json) == (2, False)


SETTINGS = {"model": "tiny:llava", "limit": 6, "seed": 0}


def test_run_dir_resumes_units_and_refuses_other_runs(tmp_path):
    run_path = tmp_path / "run"
    with RunDir(run_path, SETTINGS, identity=("model", "limit")) as run:
        assert (run_path / DIR_LOCK_NAME).exists() and run.done("sweep") == {}
        run.append("sweep", "q1", [{"layer": 0, "correct": 1.0}, {"layer": 1, "correct": 0.0}])
        run.append("sweep", "q2", [{"layer": np.int64(0), "correct": np.float32(0.0)}])  # numpy scalars stay numbers
        with pytest.raises(OutputError, match="unit 'q1' of sweep is already in"):
            run.append("sweep", "q1", [])
        with pytest.raises(InterpError, match="not written yet, e.g. 'q9'"):
            run.rows("sweep", order=["q1", "q9"])
        with pytest.raises(OutputLockedError):
            RunDir(run_path, SETTINGS).open()  # a second writer, even in this process
        run.write("report.json", "{}")
    assert not (run_path / DIR_LOCK_NAME).exists()
    sweep = run_path / "sweep.jsonl"
    sweep.write_bytes(sweep.read_bytes() + b'{"key": "q3", "rows": [{"lay')  # killed while writing q3
    with RunDir(run_path, {**SETTINGS, "seed": 1}, identity=("model", "limit")) as run:  # seed is informative
        assert run.settings["seed"] == 0
        assert run.done("sweep") == {
            "q1": [{"layer": 0, "correct": 1.0}, {"layer": 1, "correct": 0.0}],
            "q2": [{"layer": 0, "correct": 0.0}],
        }
        run.append("sweep", "q3", [{"layer": 0, "correct": 1.0}])
        assert [r["correct"] for r in run.rows("sweep", order=["q3", "q1"])] == [1.0, 1.0, 0.0]
        assert type(run.done("sweep")["q2"][0]["correct"]) is float

    before = snapshot(run_path)
    with pytest.raises(SettingsMismatchError) as error:
        RunDir(run_path, {**SETTINGS, "limit": 2}, identity=("model", "limit")).open()
    assert "holds a run with other settings: limit (6 there, 2 now); it is left untouched" in error_line(error.value)
    assert snapshot(run_path) == before  # the lock file came and went; every file byte for byte the same

    crashed = tmp_path / "crashed"  # a first run killed while writing its settings leaves only a temporary file
    crashed.mkdir()
    (crashed / ".settings.json.123.abcd.tmp").write_text("{")
    with RunDir(crashed, SETTINGS) as run:
        assert run.settings == SETTINGS

    old_run = tmp_path / "old"
    old_run.mkdir()
    (old_run / "masking_sweep.csv").write_text("item,layer\n")
    before = snapshot(old_run)
    with pytest.raises(SettingsMismatchError, match=r"already holds files \(masking_sweep.csv\) but no settings.json"):
        RunDir(old_run, SETTINGS).open()
    assert snapshot(old_run) == before
