"""``interp reproduce`` survives: SIGKILL in either phase and rerun, shards merged, torchrun
with two gloo processes — each gives the uninterrupted run's report; other settings, a
second writer, an unwritable --out are refused with one line and nothing touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import assert_reports_close

REPO = Path(__file__).resolve().parents[1]
OFF = ["--patching", "0", "--lens", "0"]  # the synthetic sections: tests/analysis/test_analysis.py runs them
ARGS = ["reproduce", "--model", "tiny:llava", "--limit", "6", "--n-boot", "50", *OFF]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _interp(*args, check=True):
    done = subprocess.run(
        [sys.executable, "-m", "interp", *args], env=_env(), capture_output=True, text=True, timeout=600, cwd=str(REPO)
    )
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _interp(*ARGS, "--out", str(out))
    return _report(out)


def _kill_when(out: Path, phase: str, at_least: int) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "interp", *ARGS, "--out", str(out)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(REPO),
    )
    path = out / "rows" / f"{phase}.shard-1-of-1.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if len(_lines(path)) >= at_least:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    return process.returncode


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_sigkill_then_rerun_gives_the_uninterrupted_report(tmp_path, reference, phase):
    out = tmp_path / "run"
    assert _kill_when(out, phase, 2) == -signal.SIGKILL
    before = {p.name: _lines(p) for p in (out / "rows").glob("phase*.jsonl")}
    assert not (out / "report.json").exists()
    _interp(*ARGS, "--out", str(out))
    assert_reports_close(_report(out), reference)
    for name, lines in before.items():  # nothing lost: what the killed run wrote is still there, not redone
        after = _lines(out / "rows" / name)
        assert after[: len(lines)] == lines
        items = [json.loads(line)["item"] for line in after]
        assert len(items) == len(set(items)) == 6


def test_shards_give_the_same_report_and_a_plain_rerun_computes_nothing(tmp_path, reference):
    out = tmp_path / "sharded"
    first = _interp(*ARGS, "--out", str(out), "--shard", "1/2")
    assert "rerun" in first.stdout and not (out / "report.json").exists()
    _interp(*ARGS, "--out", str(out), "--shard", "2/2")  # phase 1 complete: runs its phase 2
    assert not (out / "report.json").exists()
    _interp(*ARGS, "--out", str(out), "--shard", "1/2")  # its phase 2; the last shard writes the report
    assert_reports_close(_report(out), reference)
    rows = {p: p.read_bytes() for p in (out / "rows").glob("phase*.jsonl")}
    _interp(*ARGS, "--out", str(out))  # the merge: nothing left to compute
    assert {p: p.read_bytes() for p in (out / "rows").glob("phase*.jsonl")} == rows
    assert_reports_close(_report(out), reference)
    counts = json.loads((out / "report.json").read_text())["counts"]
    assert counts["clean_forward"] == 6 + 3  # shard 1's phase 2 re-ran its three clean passes


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path, reference):
    out = tmp_path / "torchrun"
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "interp", *ARGS, "--out", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_reports_close(_report(out), reference)
    assert sorted(p.name for p in (out / "rows").glob("phase1.*")) == [
        "phase1.shard-1-of-2.jsonl",
        "phase1.shard-2-of-2.jsonl",
    ]


def _snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}


def test_other_settings_a_second_writer_and_unwritable_outputs_are_refused(tmp_path):
    from interp.analysis.rundir import RunDir

    out = tmp_path / "run"
    _interp(*ARGS[:4], "2", "--n-boot", "50", *OFF, "--out", str(out))
    before = _snapshot(out)
    refused = _interp(*ARGS[:4], "2", "--window", "2", *OFF, "--out", str(out), check=False)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "other settings" in lines[0] and "window" in lines[0]
    assert _snapshot(out) == before

    settings = json.loads((out / "run.json").read_text())
    with RunDir(out, settings):  # another process holds the lock
        locked = _interp(*ARGS[:4], "2", "--n-boot", "50", *OFF, "--out", str(out), check=False)
    assert locked.returncode == 2 and "another process" in locked.stderr
    assert _snapshot(out) == before

    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    as_file = _interp(*ARGS, "--out", str(a_file), check=False)
    assert as_file.returncode == 2 and "is a file" in as_file.stderr and a_file.read_text() == "keep me"
    if os.geteuid() != 0:  # root writes anywhere
        locked_dir = tmp_path / "ro"
        locked_dir.mkdir(mode=0o500)
        ro = _interp(*ARGS, "--out", str(locked_dir / "x"), check=False)
        assert ro.returncode == 2 and "cannot write" in ro.stderr
    full = _interp(*ARGS, "--out", "/dev/full/x", check=False)
    assert full.returncode == 2 and full.stderr.count("error:") == 1
    older = tmp_path / "older"
    older.mkdir()
    (older / "report.json").write_text("{}")
    foreign = _interp(*ARGS, "--out", str(older), check=False)
    assert foreign.returncode == 2 and "no resumable" in foreign.stderr and (older / "report.json").read_text() == "{}"


def test_a_run_with_other_weights_is_refused_and_an_older_run_json_continues(tmp_path):
    """run.json names the weights (``weights``: e.g. the organism's digest); the same model name
    with other weights is another run, refused with one line and nothing touched; a run
    directory from before run.json named them continues (its weights are unknown)."""
    from interp.analysis.rundir import RunDir
    from interp.errors import InterpError

    settings = {"kind": "interp-reproduce", "model": "organism", "weights": "organism-aaaaaaaaaaaa", "limit": 2}
    out = tmp_path / "run"
    with RunDir(out, settings):
        pass
    assert json.loads((out / "run.json").read_text())["weights"] == "organism-aaaaaaaaaaaa"
    before = _snapshot(out)
    with (
        pytest.raises(InterpError, match=r"other settings: weights \('organism-aaaaaaaaaaaa' there"),
        RunDir(out, {**settings, "weights": "organism-bbbbbbbbbbbb"}),
    ):
        pass
    assert _snapshot(out) == before
    older = tmp_path / "older"
    older.mkdir()
    legacy = {k: v for k, v in settings.items() if k != "weights"}
    (older / "run.json").write_text(json.dumps(legacy))
    with RunDir(older, settings):
        pass
    assert json.loads((older / "run.json").read_text()) == legacy
    with pytest.raises(InterpError, match="limit"), RunDir(older, {**settings, "limit": 3}):  # nothing else relaxed
        pass
