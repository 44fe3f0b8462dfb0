"""The evaluation runner on a tiny LLaVA: batching, rows, shards and merge, resume after SIGKILL, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from interp.data.synthetic import SyntheticVQA, is_correct
from interp.data.tasks import MissingImageError, load_task
from interp.evaluation import (
    TIMING_FIELDS,
    ResultsFileError,
    ResumeError,
    ShardError,
    evaluate,
    merge_shards,
    parse_shard,
    read_results,
    summarize,
)
from interp.evaluation.results import IDENTITY_KEYS, ResultsLog, meta_path, read_meta
from interp.evaluation.runner import effective_batch_size, generate_replies
from interp.outputs import OutputError, lock_path

from ..conftest import tiny_vlm, write_pope
from ..processes import error_line, in_mount_namespace, snapshot, start_python, wait_for_line

SHORT = "Answer the question using a single word or phrase."
RUN = dict(limit=8, max_new_tokens=3, progress=False)


@pytest.fixture(scope="module")
def vlm():
    # one thread: the tiny model is faster so, and much faster when the CPU is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_vlm("llava")
    torch.set_num_threads(threads)


@contextmanager
def generate_replaced(vlm, replacement):
    """Shadow the shared tiny model's ``generate`` for one test, then remove the shadow."""
    vlm.model.generate = replacement
    try:
        yield
    finally:
        del vlm.model.generate


def without_timing(rows) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def lines(path: Path) -> list[dict]:
    rows, cut = read_results(path)
    assert not cut
    return without_timing(rows)


@pytest.fixture(scope="module")
def reference(vlm, tmp_path_factory) -> Path:
    """An uninterrupted run: synthetic, first 8 questions, batches of 2, 3 new tokens."""
    out = tmp_path_factory.mktemp("reference") / "run.jsonl"
    evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)
    return out


# -- generation -------------------------------------------------------------------------------


def test_batched_equals_unbatched(vlm):
    task = load_task("synthetic", limit=8)
    prompts = [task.prompt(doc, SHORT) for doc in task]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    images = [doc.load_image() for doc in task]
    batched = generate_replies(vlm, images, prompts, max_new_tokens=4)
    single = [generate_replies(vlm, [image], [prompt], max_new_tokens=4)[0] for image, prompt in zip(images, prompts)]
    assert batched == single
    assert len(set(batched)) > 1  # not a degenerate constant reply
    rows_8 = evaluate(vlm, task, batch_size=8, prompt_suffix=SHORT, max_new_tokens=4, progress=False)
    rows_1 = evaluate(vlm, task, batch_size=1, prompt_suffix=SHORT, max_new_tokens=4, progress=False)
    assert list(rows_8["filtered_resps"].str[0]) == list(rows_1["filtered_resps"].str[0]) == batched


def test_only_the_llava_family_batches(vlm):
    assert effective_batch_size(vlm, None) == 8 and effective_batch_size(vlm, 3) == 3
    from interp.models.adapters import adapter_for

    qwen = SimpleNamespace(adapter=adapter_for("qwen2_vl"))  # the family fact lives on the adapter
    assert effective_batch_size(qwen, 8) == 1


def test_rows_carry_lmms_eval_fields_and_the_task_metric(vlm):
    rows = evaluate(vlm, "synthetic", limit=5, max_new_tokens=3, progress=False)
    samples = SyntheticVQA("test", seed=0)[:5]
    assert list(rows["doc_id"]) == [s.id for s in samples]
    for row, sample in zip(rows.to_dict("records"), samples):
        reply = row["filtered_resps"][0]
        assert row["resps"] == [[reply]] and row["target"] == [sample.answer]
        assert row["correct"] == float(is_correct(reply, sample.answer)) and row["kind"] == sample.kind
        assert row["prompt"] == sample.question == row["question"]  # no suffix for the organism's benchmark
        assert row["task"] == "synthetic" and row["model"] == "tiny:llava" and row["seconds"] > 0
    summary = summarize("synthetic", rows)
    assert summary["n"] == 5 and summary["accuracy"] == pytest.approx(rows["correct"].mean())
    with_suffix = evaluate(vlm, "synthetic", limit=1, max_new_tokens=1, prompt_suffix=SHORT, progress=False)
    assert with_suffix["prompt"][0] == f"{samples[0].question}\n{SHORT}"


def test_the_organism_benchmark_gives_the_organism_evaluation(vlm):
    from interp.models.organism.evaluate import evaluate as organism_evaluate
    from interp.models.organism.evaluate import generate_answers

    rows = evaluate(vlm, "synthetic", limit=8, progress=False)  # the task's defaults: no suffix, 4 tokens
    scenes = SyntheticVQA("test", seed=0, image_size=vlm.scene_size)  # drawn at the model's scene size
    samples = scenes[:8]
    answers = generate_answers(vlm.model, vlm.processor, [s.image for s in samples], [s.question for s in samples])
    assert list(rows["filtered_resps"].str[0]) == answers
    expected = organism_evaluate(vlm.model, vlm.processor, scenes, limit=8, blind=False)
    summary = summarize("synthetic", rows)
    assert summary["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["per_kind"] == pytest.approx(expected["per_kind"])


def test_a_real_benchmark_format_through_the_runner(vlm, tmp_path):
    root = write_pope(tmp_path / "pope")
    task = load_task("pope", root)
    rows = evaluate(vlm, task, out=tmp_path / "pope.jsonl", batch_size=4, max_new_tokens=2, progress=False)
    assert list(rows["doc_id"]) == [d.doc_id for d in task]
    assert all(p.endswith(f"?\n{SHORT}") for p in rows["prompt"])
    assert list(rows["ground_truth"]) == ["yes", "no"] * 3
    summary = summarize(task, rows)
    replies = rows["filtered_resps"].str[0]
    expected_accuracy = sum(r.strip().lower() == t for r, t in zip(replies, rows["ground_truth"])) / 6
    assert summary["n"] == 6 and summary["pope_accuracy"] == pytest.approx(expected_accuracy)
    assert set(summary["by_category"]) == {"adversarial", "popular", "random"}


def test_a_missing_image_stops_the_run_and_the_rest_resumes(vlm, tmp_path):
    root = write_pope(tmp_path / "pope", categories=("random",))
    image = root / "val2014" / "COCO_val2014_000000210789.jpg"
    hidden = image.rename(image.with_suffix(".hidden"))
    out = tmp_path / "run.jsonl"
    task = load_task("pope", root, split="random")
    with pytest.raises(MissingImageError, match=f"doc 'random-2': image file not found: {image}"):
        evaluate(vlm, task, out=out, batch_size=1, max_new_tokens=2, progress=False)
    assert [row["doc_id"] for row in lines(out)] == ["random-1"]
    hidden.rename(image)
    evaluate(vlm, task, out=out, batch_size=1, max_new_tokens=2, progress=False)
    assert [row["doc_id"] for row in lines(out)] == ["random-1", "random-2"]


# -- the results file ------------------------------------------------------------------------------


def test_results_file_and_sidecar(reference):
    rows = lines(reference)
    assert len(rows) == 8 and all("doc_id" in row for row in rows)  # no header line
    meta = read_meta(reference)
    assert meta["model"] == "tiny:llava" and meta["task"] == "synthetic" and meta["split"] == "test"
    assert meta["limit"] == 8 and meta["shard"] is None and meta["prompt_suffix"] == "" and meta["max_new_tokens"] == 3
    assert meta["decoding"] == "greedy" and meta["n_docs"] == 8 and meta["doc_ids"] == [r["doc_id"] for r in rows]
    assert {"torch", "transformers", "nnsight"} <= set(meta["versions"])


def test_resume_after_sigkill_equals_an_uninterrupted_run(vlm, reference, tmp_path):
    out = tmp_path / "killed.jsonl"
    script = (
        "import sys, time, interp\n"
        "from interp.evaluation import evaluate\n"
        "vlm = interp.load('tiny:llava', attn_implementation='eager')\n"
        "generate = vlm.model.generate\n"
        "def slow(*args, **kwargs):\n"
        "    time.sleep(0.4)\n"
        "    return generate(*args, **kwargs)\n"
        "vlm.model.generate = slow\n"
        "evaluate(vlm, 'synthetic', out=sys.argv[1], limit=8, batch_size=2, max_new_tokens=3, progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(out)],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    written = out.read_bytes().count(b"\n")
    assert 2 <= written < 8  # killed mid-run
    evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)
    assert lines(out) == lines(reference)
    assert read_meta(out)["doc_ids"] == read_meta(reference)["doc_ids"]


def test_a_cut_last_line_is_dropped_and_redone(vlm, reference, tmp_path):
    out = tmp_path / "cut.jsonl"
    data = reference.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join(data[:3]) + b"\n" + data[3][: len(data[3]) // 2])  # 3 lines and half a line
    shutil.copy(meta_path(reference), meta_path(out))
    assert read_results(out) == (read_results(reference)[0][:3], True)
    calls = []
    generate = vlm.model.generate
    with generate_replaced(vlm, lambda *a, **k: calls.append(1) or generate(*a, **k)):
        rows = evaluate(vlm, "synthetic", out=out, batch_size=1, **RUN)
    assert len(calls) == 5  # only the 5 documents not completely written
    assert lines(out) == lines(reference) == without_timing(rows.to_dict("records"))


def test_a_complete_file_is_not_run_again(vlm, reference, tmp_path):
    out = tmp_path / "done.jsonl"
    shutil.copy(reference, out)
    shutil.copy(meta_path(reference), meta_path(out))
    with generate_replaced(vlm, lambda *a, **k: pytest.fail("generate called")):
        rows = evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)
    assert without_timing(rows.to_dict("records")) == lines(reference)


def test_resume_refuses_other_settings(vlm, reference, tmp_path):
    out = tmp_path / "run.jsonl"
    shutil.copy(reference, out)
    shutil.copy(meta_path(reference), meta_path(out))
    with pytest.raises(ResumeError, match=r"different prompt_suffix \(''\s+there, 'Answer the question"):
        evaluate(vlm, "synthetic", out=out, batch_size=2, prompt_suffix=SHORT, **RUN)
    with pytest.raises(ResumeError, match=r"different limit \(8 there, 6 now\); document list"):
        evaluate(vlm, "synthetic", out=out, limit=6, max_new_tokens=3, progress=False)
    meta_path(out).unlink()
    with pytest.raises(ResumeError, match="run.jsonl.meta.json is missing"):
        evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)
    assert set(IDENTITY_KEYS) >= {"model", "task", "prompt_suffix", "shard"}


def test_a_damaged_middle_line_is_an_error(reference, tmp_path, vlm):
    out = tmp_path / "damaged.jsonl"
    data = reference.read_bytes().split(b"\n")
    data[2] = data[2][:10]
    out.write_bytes(b"\n".join(data))
    shutil.copy(meta_path(reference), meta_path(out))
    with pytest.raises(ResultsFileError, match="damaged.jsonl:3 is not a complete JSON line"):
        evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)


def test_resume_refuses_a_damaged_middle_line_untouched(tmp_path):
    out = tmp_path / "run.jsonl"
    meta = {"model": "tiny", "task": "synthetic", "doc_ids": ["a", "b", "c", "d"]}
    with ResultsLog(out) as log:
        log.resume(meta)
        for doc_id in "abc":
            log.append({"doc_id": doc_id, "reply": "ünï — 答え", "score": 0.5, "extra": None})
    data = out.read_bytes().split(b"\n")
    data[1] = data[1][:12]  # line 2 damaged, and a cut last line that must stay too
    out.write_bytes(b"\n".join(data) + b'{"doc_id": "d", "rep')
    before = snapshot(out, meta_path(out))
    for _ in range(2):  # refused, lock released: the second try is refused the same way
        with pytest.raises(ResultsFileError) as error, ResultsLog(out) as log:
            log.resume(meta)
        assert error_line(error.value) == (
            f"{out}:2 is not a complete JSON line; the file is damaged, not just cut off at the end"
        )
        assert snapshot(out, meta_path(out)) == before and not lock_path(out).exists()
    out.write_bytes(b"\n".join([data[0], b'["a", "list"]', data[2], b""]))
    with pytest.raises(ResultsFileError, match=r"run.jsonl:2 is not a result row \(no doc_id\)"):
        read_results(out, repair=True)


# -- shards -------------------------------------------------------------------------------------


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard((1, 1)) == (1, 1) and parse_shard(None) is None
    for bad, message in [("0/4", "numbered from 1"), ("5/4", "does not exist"), ("a/b", "form i/n"), ("3", "form i/n")]:
        with pytest.raises(ShardError, match=message):
            parse_shard(bad)


@pytest.fixture(scope="module")
def shard_files(vlm, tmp_path_factory) -> list[Path]:
    directory = tmp_path_factory.mktemp("shards")
    paths = []
    for i in (1, 2, 3):
        path = directory / f"run.{i}of3.jsonl"
        rows = evaluate(vlm, "synthetic", out=path, shard=f"{i}/3", batch_size=2, **RUN)
        assert list(rows["doc_id"]) == [f"test-{k:06d}" for k in range(8)][i - 1 :: 3]
        paths.append(path)
    return paths


def test_merged_shards_equal_the_full_run(shard_files, reference, tmp_path):
    merged = merge_shards(list(reversed(shard_files)), tmp_path / "merged.jsonl")
    assert lines(tmp_path / "merged.jsonl") == lines(reference) == without_timing(merged.to_dict("records"))
    full, joined = read_meta(reference), read_meta(tmp_path / "merged.jsonl")
    assert {k: joined[k] for k in IDENTITY_KEYS} == {k: full[k] for k in IDENTITY_KEYS}


def copy_run(path: Path, directory: Path) -> Path:
    target = directory / path.name
    shutil.copy(path, target)
    shutil.copy(meta_path(path), meta_path(target))
    return target


def test_merge_refuses_incomplete_or_mixed_shards(shard_files, vlm, tmp_path):
    one, two, three = shard_files
    with pytest.raises(ShardError, match="shard 3/3 missing"):
        merge_shards([one, two], tmp_path / "m.jsonl")
    with pytest.raises(ShardError, match="shard 1/3 is given twice"):
        merge_shards([one, one, two, three], tmp_path / "m.jsonl")
    short = copy_run(two, tmp_path)
    short.write_bytes(b"".join(short.read_bytes().splitlines(keepends=True)[:-1]))
    with pytest.raises(ShardError, match=r"shard 2/3\) is incomplete: 1 of 3 documents missing, e.g. 'test-000007'"):
        merge_shards([one, short, three], tmp_path / "m.jsonl")
    short.write_bytes(two.read_bytes()[:-5])
    with pytest.raises(ShardError, match="ends with a partly written line"):
        merge_shards([one, short, three], tmp_path / "m.jsonl")
    other = tmp_path / "other.jsonl"
    evaluate(vlm, "synthetic", out=other, shard="3/3", limit=8, max_new_tokens=2, progress=False)
    with pytest.raises(ShardError, match=r"from another run .*max_new_tokens \(3 there, 2 now\)"):
        merge_shards([one, two, other], tmp_path / "m.jsonl")
    with pytest.raises(ShardError, match="must not be one of the shard files"):
        merge_shards([one, two, three], one)


# -- command line ------------------------------------------------------------------------------------


def test_cli_evaluate_shards_and_merge(vlm, reference, tmp_path, monkeypatch, capsys):
    import interp
    from interp.cli import main

    monkeypatch.setattr(interp, "load", lambda name, **kwargs: vlm)
    outs = [tmp_path / f"cli.{i}.jsonl" for i in (1, 2)]
    for i, out in enumerate(outs, start=1):
        argv = [
            "evaluate",
            "--model",
            "tiny:llava",
            "--task",
            "synthetic",
            "--limit",
            "8",
            "--max-new-tokens",
            "3",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--shard",
            f"{i}/2",
            "--no-progress",
            "--json",
        ]
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["task"] == "synthetic" and report["summary"]["n"] == 4 and report["shard"] == f"{i}/2"
    assert main(["merge", "--out", str(tmp_path / "cli.jsonl"), *map(str, outs)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic (test) on tiny:llava: 8 questions" in printed and "accuracy" in printed
    assert lines(tmp_path / "cli.jsonl") == lines(reference)


def test_cli_errors_are_one_line(capsys):
    from interp.cli import main

    assert main(["evaluate", "--model", "tiny:llava", "--task", "textvqa"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: task textvqa needs a data directory (--data-dir)") and error.count("\n") == 1
    assert main(["evaluate", "--model", "tiny:llava", "--task", "synthetic", "--shard", "0/2"]) == 2
    assert "shards are numbered from 1" in capsys.readouterr().err
    assert main(["merge", "--out", "x.jsonl", "missing.jsonl"]) == 2
    assert capsys.readouterr().err == "error: shard file not found: missing.jsonl\n"


# -- no data loss: every refusal is one line and leaves the files byte for byte ------------------------


def cli_error(main, argv, capsys) -> str:
    """Run the CLI, expect exit status 2, return its one error line."""
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error.strip()


EVALUATE = [
    "evaluate",
    "--model",
    "tiny:llava",
    "--task",
    "synthetic",
    "--limit",
    "8",
    "--max-new-tokens",
    "3",
    "--batch-size",
    "2",
    "--no-progress",
]


@pytest.fixture
def no_model_load(monkeypatch):
    """The refusals below come before any model loads."""
    import interp

    monkeypatch.setattr(interp, "load", lambda *a, **k: pytest.fail("the model was loaded before the refusal"))


def test_resume_refuses_a_foreign_jsonl_untouched(vlm, reference, tmp_path, capsys, no_model_load):
    from interp.cli import main

    foreign = tmp_path / "foreign.jsonl"  # rows with doc_ids, a last line without newline, no sidecar
    foreign.write_bytes(reference.read_bytes()[:-1])
    one_json = tmp_path / "config.jsonl"  # a one-line JSON file: no newline at all
    one_json.write_bytes(b'{"doc_id": "test-000000", "note": "someone else\'s"}')
    for path in (foreign, one_json):
        before = path.read_bytes()
        error = cli_error(main, [*EVALUATE, "--out", str(path)], capsys)
        assert error == (
            f"error: cannot resume {path}: {path.name}.meta.json is missing, so it is not known to be a "
            f"results file of this run; it is left untouched: use another --out"
        )
        with pytest.raises(ResumeError, match="is left untouched"):
            evaluate(vlm, "synthetic", out=path, batch_size=2, **RUN)
        assert path.read_bytes() == before and not meta_path(path).exists()


def test_resume_checks_the_settings_before_repairing_a_cut_line(vlm, reference, tmp_path):
    out = tmp_path / "cut.jsonl"
    out.write_bytes(reference.read_bytes()[:-30])  # another run's file, cut mid-line
    shutil.copy(meta_path(reference), meta_path(out))
    before = snapshot(out, meta_path(out))
    with pytest.raises(ResumeError) as error:
        evaluate(vlm, "synthetic", out=out, batch_size=2, limit=8, max_new_tokens=2, progress=False)
    assert "different max_new_tokens (3 there, 2 now)" in error_line(error.value)
    assert snapshot(out, meta_path(out)) == before  # the cut line is still there: the file is not this run's
    meta_path(out).write_text('{"model": ')  # a damaged sidecar: nothing is proven, nothing touched
    before = snapshot(out, meta_path(out))
    with pytest.raises(ResumeError, match="meta.json is not valid JSON; it is left untouched"):
        evaluate(vlm, "synthetic", out=out, batch_size=2, **RUN)
    assert snapshot(out, meta_path(out)) == before


def test_merge_refuses_an_existing_out_unless_forced(shard_files, reference, tmp_path, capsys):
    from interp.cli import main

    out = copy_run(reference, tmp_path)
    out.write_bytes(out.read_bytes()[: len(out.read_bytes()) // 2].rsplit(b"\n", 1)[0] + b"\n")  # an older, shorter run
    before = snapshot(out, meta_path(out))
    error = cli_error(main, ["merge", "--out", str(out), *map(str, shard_files)], capsys)
    assert error == (
        f"error: {out} already exists; merge leaves it untouched: give another --out, or --force to replace it"
    )
    with pytest.raises(ShardError, match="already exists"):
        merge_shards(shard_files, out)
    assert snapshot(out, meta_path(out)) == before
    assert main(["merge", "--out", str(out), "--force", *map(str, shard_files)]) == 0
    assert lines(out) == lines(reference) and read_meta(out)["merged_from"] == list(map(str, shard_files))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, meta_path(out).name]  # no temporary left


def test_out_that_is_a_directory_a_device_or_under_a_file(vlm, tmp_path, capsys, no_model_load):
    from interp.cli import main

    a_file = tmp_path / "results.jsonl"
    a_file.write_bytes(b"keep\n")
    under_a_file = (a_file / "x.jsonl", f"cannot write {a_file / 'x.jsonl'}: {a_file} is a file, not a directory")
    device = (Path("/dev/full"), "cannot write /dev/full: it is not a regular file")  # never read: it has no end
    directory = (tmp_path, f"cannot write {tmp_path}: it is a directory; give a file name")
    for out, message in (under_a_file, device):
        assert message in cli_error(main, [*EVALUATE, "--out", str(out)], capsys)
    for out, message in (under_a_file, device, directory):
        assert message in cli_error(main, ["merge", "--out", str(out), str(a_file)], capsys)
        with pytest.raises(OutputError) as error:
            evaluate(vlm, "synthetic", out=out, **RUN)
        assert message in error_line(error.value)
    assert a_file.read_bytes() == b"keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_an_empty_model_dir_is_one_line(tmp_path, capsys):
    from interp.cli import main

    empty = tmp_path / "llava-download"
    empty.mkdir()
    error = cli_error(main, ["evaluate", "--model", str(empty), "--task", "synthetic", "--limit", "1"], capsys)
    assert str(empty) in error and "config.json" in error
    (empty / "config.json").write_text("{}")  # a config without model_type: transformers' ValueError, as one line
    assert "cannot load a model config from" in cli_error(main, ["hooks", "--model", str(empty)], capsys)
    assert sorted(p.name for p in empty.iterdir()) == ["config.json"]


SLOW_EVALUATE = """
import sys, time, interp
from interp.evaluation import evaluate
vlm = interp.load('tiny:llava', attn_implementation='eager')
generate = vlm.model.generate
def slow(*args, **kwargs):
    time.sleep(0.3)
    return generate(*args, **kwargs)
vlm.model.generate = slow
print("loaded", flush=True)
evaluate(vlm, 'synthetic', out=sys.argv[1], limit=8, batch_size=2, max_new_tokens=3, progress=False)
print("done", flush=True)
"""


def test_a_second_evaluate_on_the_same_out_is_refused(reference, tmp_path, capsys, no_model_load):
    from interp.cli import main
    from interp.outputs import lock_path

    out = tmp_path / "run.jsonl"
    first = start_python(SLOW_EVALUATE, out)
    try:
        wait_for_line(first, "loaded")
        deadline = time.monotonic() + 60
        while not (lock_path(out).exists() and out.exists() and out.read_bytes().count(b"\n") >= 1):
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.02)
        error = cli_error(main, [*EVALUATE, "--out", str(out)], capsys)
        assert error.startswith(f"error: {out} is being written by another process (pid {first.pid} on ")
        assert error.endswith(f"wait for it to finish or use another --out (lock: {lock_path(out)})")
        wait_for_line(first, "done")
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()
    assert lines(out) == lines(reference)  # every question once: the second writer never wrote
    assert not lock_path(out).exists()


FULL_DISK_EVALUATE = """
import contextlib, io, json, os, sys
from pathlib import Path
import interp
from interp.cli import main
from interp.evaluation import evaluate
ro, small = Path(sys.argv[1]), Path(sys.argv[2])
vlm = interp.load("tiny:llava", attn_implementation="eager")
interp.load = lambda *args, **kwargs: vlm
# 20 questions: enough rows after the disk fills to overflow the file's last, partly used page
argv = ["evaluate", "--model", "tiny:llava", "--task", "synthetic", "--limit", "20", "--max-new-tokens", "3",
        "--batch-size", "4", "--no-progress"]
def cli(out):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv + ["--out", str(out)])
    return code, err.getvalue()
def fill():
    fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for chunk in (65536, 1):
        try:
            while True:
                os.write(fd, b"x" * chunk)
        except OSError:
            pass
    os.close(fd)
result = {"read_only": cli(ro / "run.jsonl")}
out = small / "run.jsonl"
generate, calls = vlm.model.generate, []
def filling(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # one batch written, then the disk fills up
        fill()
    return generate(*args, **kwargs)
vlm.model.generate = filling
result["mid_run"] = cli(out)
result["rows_kept"] = out.read_bytes().count(b"\\n")
before = out.read_bytes()
result["at_start"] = cli(out)
result["untouched"] = out.read_bytes() == before
(small / "filler").unlink()
vlm.model.generate = generate
result["resumed"] = cli(out)
result["rows"] = [json.loads(line) for line in out.read_text().splitlines()]
expected = evaluate(vlm, "synthetic", limit=20, batch_size=4, max_new_tokens=3, progress=False)
result["expected"] = json.loads(expected.to_json(orient="records"))
result["left"] = sorted(p.name for p in small.iterdir())
print(json.dumps(result))
"""


def test_read_only_and_full_disk_through_evaluate(tmp_path):
    ro, small = tmp_path / "ro", tmp_path / "small"
    result = in_mount_namespace(FULL_DISK_EVALUATE, {str(ro): "ro,size=64k", str(small): "size=2m"}, ro, small)
    code, error = result["read_only"]
    assert code == 2 and error == (
        f"error: cannot write {ro / 'run.jsonl'}: the file system is read-only; choose an --out on a writable disk\n"
    )
    out = small / "run.jsonl"
    code, error = result["mid_run"]
    plan, error = error.split("\n", 1)  # the plan line every run prints first, then the one-line error
    assert plan.startswith("plan: one batch ~")
    assert code == 2 and error == (
        f"error: cannot write {out}: no space left on the device (disk full or quota "
        f"reached); free some space and run the same command again\n"
    )
    assert 4 <= result["rows_kept"] < 20  # the rows written before the disk filled are kept
    code, error = result["at_start"]
    assert code == 2 and error.startswith(f"error: cannot write {out}: ") and error.count("\n") == 1
    assert "no space left on the device" in error or "free on its disk" in error
    assert result["untouched"]
    assert result["resumed"][0] == 0
    assert without_timing(result["rows"]) == without_timing(result["expected"])  # nothing lost, nothing twice
    assert len(result["rows"]) == 20 and result["left"] == ["run.jsonl", "run.jsonl.meta.json"]


def test_resume_refuses_another_decoding_untouched(vlm, reference, tmp_path):
    """A greedy file is not continued by a sampled run (nor one seed's by another's), and a
    sampled file not with another batch size (each batch's draws are seeded by its start)."""
    out = tmp_path / "run.jsonl"
    shutil.copy(reference, out)
    shutil.copy(meta_path(reference), meta_path(out))
    before = out.read_bytes()
    with pytest.raises(ResumeError, match=r"different decoding \('greedy' there, \{.*'temperature': 0\.2"):
        evaluate(vlm, "synthetic", out=out, batch_size=2, temperature=0.2, seed=0, **RUN)
    assert out.read_bytes() == before
    sampled = tmp_path / "sampled.jsonl"
    evaluate(
        vlm, "synthetic", out=sampled, batch_size=2, temperature=0.2, seed=0, limit=4, max_new_tokens=3, progress=False
    )
    with pytest.raises(ResumeError, match=r"different decoding .*'seed': 0.* there, .*'seed': 1"):
        evaluate(
            vlm,
            "synthetic",
            out=sampled,
            batch_size=2,
            temperature=0.2,
            seed=1,
            limit=4,
            max_new_tokens=3,
            progress=False,
        )
    with pytest.raises(ResumeError, match=r"different batch_size \(2 there, 4 now\)"):
        evaluate(
            vlm,
            "synthetic",
            out=sampled,
            batch_size=4,
            temperature=0.2,
            seed=0,
            limit=4,
            max_new_tokens=3,
            progress=False,
        )
    # a greedy file continues with another batch size, and one from before the meta named
    # its decoding counts as greedy
    meta = json.loads(meta_path(out).read_text())
    del meta["decoding"]
    meta_path(out).write_text(json.dumps(meta))
    with generate_replaced(vlm, lambda *a, **k: pytest.fail("generate called")):
        evaluate(vlm, "synthetic", out=out, batch_size=4, **RUN)
