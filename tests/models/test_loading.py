"""interp.load: local directories, built models, tiny models; `interp families`."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.cli import main
from interp.models.adapters import adapter_for, all_adapters, supported_model_types
from interp.models.tiny import build_tiny, save_tiny, tiny_model_types

from ..conftest import make_image


def test_registry_and_tiny_builders_stay_in_sync():
    # every family module has a tiny builder for the very model types its adapter claims
    assert set(supported_model_types()) == set(tiny_model_types())
    assert len(all_adapters()) >= 10


def test_load_from_a_saved_directory_matches_the_built_model(tmp_path):
    save_tiny("llava", tmp_path, attn_implementation="eager")
    from_dir = interp.load(str(tmp_path), attn_implementation="eager")
    model, processor = build_tiny("llava", attn_implementation="eager")
    built = interp.load(model, processor)
    assert isinstance(from_dir, interp.VLM) and from_dir.adapter is adapter_for("llava")
    a = from_dir.prepare(make_image(), "Which shape is red?")
    b = built.prepare(make_image(), "Which shape is red?")
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.allclose(from_dir.run(a).logits, built.run(b).logits, atol=1e-6)


# Families whose saved processor reloads on this machine (no torchvision): the
# others (internvl, llava_onevision, mistral3, smolvlm) need torchvision to rebuild
# their processor from disk, which GPU installs have.
RELOADABLE = ["gemma3", "idefics3", "llava", "llava_next", "paligemma", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


@pytest.mark.parametrize("model_type", RELOADABLE)
def test_saved_directories_reload_with_identical_outputs(model_type, tmp_path):
    save_tiny(model_type, tmp_path, attn_implementation="eager")
    from_dir = interp.load(str(tmp_path))
    built = interp.load(*build_tiny(model_type, attn_implementation="eager"))
    a = from_dir.prepare(make_image(), "Which shape is red?")
    b = built.prepare(make_image(), "Which shape is red?")
    assert torch.equal(a.input_ids, b.input_ids)
    assert (from_dir.run(a).logits - built.run(b).logits).abs().max() < 1e-5


def test_load_defaults_keep_the_checkpoint_attention(tmp_path):
    save_tiny("llava", tmp_path, attn_implementation="sdpa")
    assert interp.load(str(tmp_path)).attn_implementation == "sdpa"
    assert interp.load(str(tmp_path), attn_implementation="eager").attn_implementation == "eager"


def test_built_model_needs_its_processor():
    model, _ = build_tiny("llava")
    try:
        interp.load(model)
    except interp.InterpError as error:
        assert "needs its processor" in str(error)
    else:  # pragma: no cover
        raise AssertionError("expected an error")


def test_missing_directory(tmp_path):
    try:
        interp.load(str(tmp_path / "nope"))
    except interp.InterpError as error:
        assert str(error) == f"model directory not found: {tmp_path / 'nope'}"
    else:  # pragma: no cover
        raise AssertionError("expected an error")


def test_families_cli_lists_every_family(capsys):
    assert main(["families"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [t for a in all_adapters() for t in a.model_types]
    assert len(lines) >= 10


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    assert main(["quickstart", "--model", "tiny:llava", "--out", str(tmp_path)]) == 0
    import json

    report = json.loads((tmp_path / "quickstart.json").read_text())
    assert len(report["layers"]) == report["n_layers"] == 4
    assert report["image_tokens"] == report["grid"][0] * report["grid"][1]
    assert all(0 < row["image_attention_mass"] < 1 for row in report["layers"])


def test_remote_load_builds_on_meta_and_never_loads_weights(tmp_path, monkeypatch):
    from nnsight import CONFIG

    save_tiny("llava", tmp_path)
    vlm = interp.load(str(tmp_path), remote=True)
    assert vlm.remote and vlm.device.type == "meta"
    sample = vlm.prepare(make_image(), "Which shape is red?")
    assert sample.n_image_tokens == sample.grid.shape[0] * sample.grid.shape[1]
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    try:
        vlm.run(sample, interp.RecordAttention([0]))
    except interp.InterpError as error:
        assert "NDIF API key" in str(error)
    else:  # pragma: no cover
        raise AssertionError("expected an error")
