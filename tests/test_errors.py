"""Each way a user can get the input wrong ends in one clear line."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.cli import main
from interp.errors import HookNameError, InputError, InterpError, LayerIndexError, UnsupportedModelError
from interp.models.adapters import adapter_for
from interp.models.tiny import tiny_model_types

from .conftest import make_image, sample_for, tiny_vlm


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_image_token_count_mismatch_in_ready_inputs():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    inputs = dict(sample.inputs)
    ids = inputs["input_ids"].clone()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[sample.image_positions[0]] = False  # drop one image token
    inputs["input_ids"] = ids[:, keep]
    inputs["attention_mask"] = inputs["attention_mask"][:, keep]
    with pytest.raises(InputError) as error:
        vlm.from_inputs(inputs)
    message = _one_line(error)
    assert "image-token count mismatch" in message
    assert f"has {sample.n_image_tokens - 1} image tokens" in message
    assert f"need {sample.n_image_tokens}" in message


def test_image_token_count_mismatch_in_prompt():
    vlm = tiny_vlm("llava")
    with pytest.raises(InputError) as error:
        vlm.prepare(make_image(), "what?", prompt="<image><image> two placeholders, one image")
    assert "rejected the inputs" in _one_line(error) or "mismatch" in _one_line(error)


REQUIRES_EXTRA = [t for t in tiny_model_types() if set(adapter_for(t).required_inputs) - {"input_ids", "pixel_values"}]


@pytest.mark.parametrize("model_type", REQUIRES_EXTRA)
def test_missing_required_extra_inputs(model_type):
    vlm = tiny_vlm(model_type)
    sample = sample_for(vlm)
    for extra in set(vlm.adapter.required_inputs) - {"input_ids", "pixel_values"}:
        inputs = {k: v for k, v in sample.inputs.items() if k != extra}
        with pytest.raises(InputError) as error:
            vlm.from_inputs(inputs)
        message = _one_line(error)
        assert f"missing `{extra}`" in message and vlm.adapter.name in message
        with pytest.raises(InputError):
            vlm.trace(inputs)


def test_extra_inputs_are_declared_where_the_forward_needs_them():
    for model_type in ("llava_next", "llava_onevision", "mistral3"):
        assert "image_sizes" in adapter_for(model_type).required_inputs
    for model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert {"image_grid_thw", "mm_token_type_ids"} <= set(adapter_for(model_type).required_inputs)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    with pytest.raises(UnsupportedModelError) as error:
        adapter_for("bert")
    message = _one_line(error)
    assert "unsupported model_type 'bert'" in message
    for model_type in tiny_model_types():
        assert model_type in message

    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=10
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as error:
        interp.load(str(tmp_path))
    assert "unsupported model_type 'llama'" in _one_line(error)


def test_layer_index_out_of_range():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    for bad in (vlm.n_layers, 99, -vlm.n_layers - 1):
        with pytest.raises(LayerIndexError) as error:
            vlm.run(sample, interp.ScaleImageTokens([bad]))
        assert _one_line(error) == (
            f"layer {bad} is out of range: this model has {vlm.n_layers} decoder layers (0..{vlm.n_layers - 1})"
        )
    with pytest.raises(LayerIndexError):
        vlm.layer(99)
    with pytest.raises(LayerIndexError):
        interp.parse_hook_name("blocks.99.hook_resid_pre", vlm.n_layers)
    with pytest.raises(HookNameError) as error:
        interp.parse_hook_name("blocks.1.hook_nonsense", vlm.n_layers)
    assert "unknown hook name 'blocks.1.hook_nonsense'" in _one_line(error)
    # negative indices count from the end
    assert vlm.run(sample, interp.RecordAttention([-1])).layers("attention") == [vlm.n_layers - 1]


def test_no_image_given():
    vlm = tiny_vlm("llava")
    for nothing in (None, []):
        with pytest.raises(InputError) as error:
            vlm.prepare(nothing, "what is this?")
        assert _one_line(error).startswith("no image given")


def test_unreadable_and_missing_image_files(tmp_path):
    vlm = tiny_vlm("llava")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(InputError) as error:
        vlm.prepare(str(broken), "what?")
    assert _one_line(error).startswith(f"cannot read image file {broken}")
    with pytest.raises(InputError) as error:
        vlm.prepare(tmp_path / "absent.png", "what?")
    assert _one_line(error) == f"image file not found: {tmp_path / 'absent.png'}"
    with pytest.raises(InputError) as error:
        vlm.prepare(42, "what?")
    assert "cannot use int as an image" in _one_line(error)


def test_bad_selectors_and_subsets():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    with pytest.raises(InterpError, match="unknown src selector 'nowhere'"):
        vlm.run(sample, interp.AttentionKnockout("nowhere", "image", [0]))
    with pytest.raises(InterpError, match="image-token indices must be in"):
        vlm.run(sample, interp.ScaleImageTokens([0], tokens=[sample.n_image_tokens]))
    with pytest.raises(InterpError, match="boolean token mask has 3 entries"):
        vlm.run(sample, interp.ScaleImageTokens([0], tokens=torch.ones(3, dtype=torch.bool)))


def test_cli_prints_one_error_line(capsys):
    assert main(["quickstart", "--model", "tiny:nope"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unsupported model_type 'nope'")


def test_remote_without_an_api_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    with pytest.raises(InterpError, match="remote runs need an NDIF API key"):
        vlm.run(sample, interp.RecordAttention([0]), remote=True)
