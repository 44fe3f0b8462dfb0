"""The bad inputs of issue 12, each one clear line (exit code 2 on the command line), and
the command line's model-loading flags, config-only ``hooks`` and fast ``--help``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
from interp import validate
from interp.cli import main
from interp.cli_args import model_and_kwargs, parse_model_args
from interp.errors import InputError, InterpError, LayerIndexError

from .conftest import cli, make_image, one_line, sample_for, tiny_vlm

ROOT = Path(__file__).resolve().parent.parent


# -- the command line ---------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--patching", "--lens"])
def test_reproduce_sections_take_zero_but_not_negative_counts(capsys, tmp_path, flag):
    code, err = cli(capsys, "reproduce", "--out", str(tmp_path / "o"), flag, "-1")
    assert code == 2
    assert f"{flag}: must be a non-negative integer (0 or more), got -1" in one_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_organism_eval_limit_must_be_positive(capsys, limit):
    code, err = cli(capsys, "organism", "eval", "--limit", limit)
    assert code == 2
    assert f"--limit: must be a positive integer (1 or more), got {limit}" in one_line(err)


def test_empty_question_is_refused_not_replaced(capsys):
    code, err = cli(capsys, "quickstart", "--model", "tiny:llava", "--question", "")
    assert code == 2 and "--question: must not be empty" in one_line(err)
    with pytest.raises(InterpError, match="question is empty"):
        interp.cli.quickstart("tiny:llava", None, "  ", None)


def test_quickstart_max_new_tokens_zero(capsys):
    code, err = cli(capsys, "quickstart", "--model", "tiny:llava", "--max-new-tokens", "0")
    assert code == 2 and "--max-new-tokens: must be a positive integer" in one_line(err)


def test_unknown_task_lists_the_tasks(capsys):
    code, err = cli(capsys, "evaluate", "--model", "tiny:llava", "--tasks", "nope")
    assert code == 2 and "unknown task 'nope'; choose from" in one_line(err) and "textvqa" in err


def test_model_directory_without_config(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(InterpError, match="no config.json in model directory") as error:
        interp.load(str(tmp_path))
    assert "\n" not in str(error.value)
    code, err = cli(capsys, "hooks", "--model", str(tmp_path))
    assert code == 2 and "no config.json" in one_line(err)


def test_image_url_is_refused(tmp_path):
    vlm = tiny_vlm("llava")
    for url in ("https://example.com/cat.png", "http://x/y.jpg", "HTTPS://EXAMPLE.COM/A.PNG"):
        with pytest.raises(InputError, match="image URLs are not fetched") as error:
            vlm.prepare(url, "What is it?")
        assert "\n" not in str(error.value)
    # a local file whose name merely contains "http" is still a path
    path = tmp_path / "http_image.png"
    make_image().save(path)
    assert vlm.prepare(str(path), "What is it?").n_image_tokens > 0


def test_remote_checks_the_key_before_loading(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    start = time.perf_counter()
    # a model that does not exist: had it loaded first, the error would be about the model
    code, err = cli(
        capsys, "reproduce", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"), "--remote"
    )
    assert code == 2 and "NDIF API key" in one_line(err)
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("NDIF_API_KEY", "k")
    assert validate.ndif_api_key() == "k"


# -- checks for the engine (interp.validate; called from vlm.run / resolve_layers) ------


def test_max_new_tokens_check():
    assert validate.max_new_tokens(3) == 3
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(InputError, match="max_new_tokens must be a positive integer"):
            validate.max_new_tokens(bad)


def test_prepared_check():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    assert validate.prepared(sample) is sample
    with pytest.raises(InputError, match="takes a Prepared, not a dict: use vlm.prepare"):
        validate.prepared(dict(sample.inputs))
    with pytest.raises(InputError, match="takes one Prepared, got a list of 2: run them one at a time"):
        validate.prepared([sample, sample])
    with pytest.raises(InputError, match="got str"):
        validate.prepared("cat.png")


def test_layer_checks_never_truncate():
    assert validate.layer_index(3) == 3
    assert validate.layer_index(np.int64(2)) == 2
    assert validate.layer_index(torch.tensor(1)) == 1
    for bad in (1.5, 2.0, "3", True, None):
        with pytest.raises(LayerIndexError, match="layer index must be an integer"):
            validate.layer_index(bad)
    assert validate.layer_list("all") == "all"
    assert validate.layer_list(range(3)) == [0, 1, 2]
    assert validate.layer_list(np.arange(2)) == [0, 1]
    with pytest.raises(LayerIndexError, match=r"got 1.5 \(float\)"):
        validate.layer_list([0, 1.5])
    with pytest.raises(LayerIndexError, match="or 'all'"):
        validate.layer_list("first")


def test_scale_must_be_a_number():
    with pytest.raises(InputError, match="scale must be a number") as error:
        interp.ScaleImageTokens([0], scale="big")
    assert "\n" not in str(error.value)
    for bad in (None, True, [0.5, "x"], torch.tensor([True])):
        with pytest.raises(InputError):
            validate.scale(bad)
    for good in (0, 1e-9, torch.ones(3), np.ones(2), [0.5, 1.0], lambda ctx: 0.5):
        assert validate.scale(good) is good


# -- model-loading flags ------------------------------------------------------------


def test_model_args_parse_and_merge():
    assert parse_model_args("pretrained=a/b,dtype=bfloat16,device_map=auto") == {
        "pretrained": "a/b",
        "dtype": "bfloat16",
        "device_map": "auto",
    }
    assert parse_model_args("torch_dtype=float16") == {"dtype": "float16"}
    with pytest.raises(InterpError, match="not key=value"):
        parse_model_args("pretrained")
    with pytest.raises(InterpError, match="'conv_template' is not used"):
        parse_model_args("conv_template=vicuna_v1")
    from argparse import Namespace

    args = Namespace(
        model=None, model_args="pretrained=x/y,dtype=float16", dtype=None, device_map="auto", attn_implementation=None
    )
    assert model_and_kwargs(args) == ("x/y", {"dtype": "float16", "device_map": "auto"})
    args.dtype = "bfloat16"
    with pytest.raises(InterpError, match="disagree"):
        model_and_kwargs(args)
    with pytest.raises(InterpError, match="no model given"):
        model_and_kwargs(Namespace(model=None, model_args=None))


def test_loading_flags_reach_the_model(capsys):
    """--dtype and --attn-implementation are applied: the loaded weights and attention say so."""
    report = interp.cli.quickstart("tiny:llava", None, None, None, 2, dtype="bfloat16")
    assert report["n_layers"] >= 1
    code = main(
        [
            "quickstart",
            "--model",
            "tiny:llava",
            "--dtype",
            "bfloat16",
            "--attn-implementation",
            "eager",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "requires torchvision" not in captured.err
    for command in ("evaluate", "quickstart", "reproduce", "explore"):
        help_text = subprocess.run(
            [sys.executable, "-m", "interp", command, "--help"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
        for flag in ("--dtype", "--device-map", "--attn-implementation", "--model_args"):
            assert flag in help_text, (command, flag)


def test_hooks_reads_the_config_only(tmp_path, capsys):
    """A directory with a config and no weights lists its hook names."""
    from interp.hooks import all_hook_names

    vlm = interp.load("tiny:llava")
    config = vlm.config
    config.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    assert main(["hooks", "--model", str(tmp_path)]) == 0
    names = capsys.readouterr().out.split()
    assert names == all_hook_names(config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
    assert names == vlm.hook_names()  # the same list the loaded model gives
    assert "vision.hook_projected" in names and "blocks.0.attn.hook_q" in names


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from interp.cli import build_parser; build_parser(); "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    seconds, torch_loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    assert torch_loaded == "False"
    assert float(seconds) < 3.0  # 0.24 s measured (8-12 s before the imports were lazy)


def test_load_prints_no_torchvision_note():
    """The note transformers logs about its PIL fallback is not printed on load; the filter is narrow."""
    result = subprocess.run(
        [sys.executable, "-c", "import interp; interp.load('organism')"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "torchvision" not in result.stderr + result.stdout
    from interp.models.processors import quiet_torchvision_fallback

    logger = logging.getLogger("transformers.utils.import_utils")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with quiet_torchvision_fallback():
            logger.warning("`XImageProcessor` requires torchvision (not installed); falling back to `XPil`")
            logger.warning("something else")
        logger.warning("`Y` requires torchvision (not installed); falling back to `YPil`")  # outside: shown
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else", "`Y` requires torchvision (not installed); falling back to `YPil`"]


def test_evaluate_output_path_directory(tmp_path, capsys):
    """lmms-eval's --output_path DIR writes DIR/<task>.jsonl."""
    code = main(
        [
            "evaluate",
            "--model_args",
            "pretrained=tiny:llava",
            "--tasks",
            "synthetic",
            "--limit",
            "2",
            "--output_path",
            str(tmp_path) + "/",
            "--batch_size",
            "1",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    assert (tmp_path / "synthetic.jsonl").is_file()
    summary = json.loads(capsys.readouterr().out)
    assert summary["summary"]["n"] == 2


# every command that writes a directory: a file (or a path under one) as its output is one line,
# exit 2, before any model loads or anything is computed, and the file is left as it was
DIRECTORY_WRITERS = [
    ("quickstart", "--out"),
    ("reproduce", "--model", "tiny:llava", "--out"),
    ("ablate-method", "--model", "tiny:llava", "--out"),
    ("patch", "--model", "tiny:llava", "--out"),
    ("explore", "--model", "tiny:llava", "--out"),
    ("organism", "train", "--out"),
    ("organism", "train", "--arch", "qwen2_vl", "--checkpoint-dir"),
    ("organism", "card", "--out"),
]


@pytest.mark.parametrize("under", [False, True], ids=["the-file", "under-the-file"])
@pytest.mark.parametrize("argv", DIRECTORY_WRITERS, ids=lambda argv: " ".join(a for a in argv if not a.startswith("-")))
def test_a_file_as_the_output_directory_is_refused_before_loading(capsys, monkeypatch, tmp_path, argv, under):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(interp, "load", no_loading)
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    out = a_file / "run" if under else a_file
    code, err = cli(capsys, *argv, str(out))
    assert code == 2
    assert one_line(err) == (
        f"error: cannot write {out}: {a_file} is a file, not a directory"
        if under
        else f"error: cannot write into {a_file}: it is a file, not a directory"
    )
    assert a_file.read_text() == "keep me"


def test_compare_checks_its_runs_then_its_output(capsys, tmp_path):
    run = ROOT / "docs" / "organism-runs" / "2026-12-01-qwen2vl" / "reproduce"
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    code, err = cli(capsys, "compare", str(run), str(run), "--out", str(a_file))
    assert code == 2 and one_line(err) == f"error: cannot write into {a_file}: it is a file, not a directory"
    assert a_file.read_text() == "keep me"
    missing, new_out = tmp_path / "no-run", tmp_path / "new-out"
    code, err = cli(capsys, "compare", str(missing), str(run), "--out", str(new_out))
    assert code == 2 and f"{missing}: no report.json" in one_line(err)
    assert not new_out.exists()  # a bad run is refused before the output directory is made
