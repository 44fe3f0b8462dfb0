"""The model organism: loads offline through the ordinary HF path and really sees."""

from __future__ import annotations

import json

import pytest
import torch

import interp
from interp.cli import main
from interp.data.synthetic import QUESTION_KINDS, SyntheticVQA, is_correct
from interp.models.organism import WEIGHTS_DIR, organism_dir
from interp.models.organism.smollm2 import smollm2_dir

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "organism.safetensors").exists(), reason="organism weights not trained"
)


@pytest.fixture(scope="module")
def organism():
    return interp.load("organism")


@pytest.fixture(scope="module")
def test_set():
    return SyntheticVQA("test", seed=0, image_size=96)


def test_organism_is_an_ordinary_llava_directory(organism):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    directory = organism_dir("organism")
    assert (directory / "config.json").exists() and (directory / "processor_config.json").exists()
    assert isinstance(organism.model, LlavaForConditionalGeneration)
    assert isinstance(organism.processor, LlavaProcessor)
    assert organism.adapter.name == "LLaVA"
    assert organism.n_layers == 30
    assert organism.attn_implementation == "sdpa"


def test_grid_comes_from_the_processor_outputs(organism, test_set):
    sample = organism.prepare(test_set[0].image, test_set[0].question)
    rows, cols = sample.grid.shape
    assert rows * cols == sample.n_image_tokens
    assert rows >= 6 and cols >= 6


def test_answers_fixed_test_samples(organism, test_set):
    """The first two test samples of every question kind, through the nnsight path."""
    picked = {kind: [] for kind in QUESTION_KINDS}
    for index in range(40):
        sample = test_set[index]
        if len(picked[sample.kind]) < 2:
            picked[sample.kind].append(sample)
    wrong = []
    for kind, samples in picked.items():
        assert len(samples) == 2, kind
        for sample in samples:
            result = organism.run(organism.prepare(sample.image, sample.question), generate=True, max_new_tokens=4)
            if not is_correct(result.text[0], sample.answer):
                wrong.append((sample.id, sample.question, sample.answer, result.text[0]))
    assert len(wrong) <= 1, wrong


def test_blank_image_answers_do_not_know(organism, test_set):
    """With the image replaced by a blank one, colour answers collapse: the model uses the image."""
    from PIL import Image

    attribute = [s for s in (test_set[i] for i in range(60)) if s.kind == "attribute"][:6]
    blank = Image.new("RGB", (96, 96), (255, 255, 255))
    seen = [organism.run(organism.prepare(s.image, s.question), generate=True, max_new_tokens=3).text[0] for s in attribute]
    blind = [organism.run(organism.prepare(blank, s.question), generate=True, max_new_tokens=3).text[0] for s in attribute]
    assert sum(is_correct(a, s.answer) for a, s in zip(seen, attribute)) >= 5
    assert sum(is_correct(a, s.answer) for a, s in zip(blind, attribute)) <= 3


def test_frozen_variant_keeps_smollm2_and_full_variant_adapts_only_attention(organism):
    from safetensors.torch import load_file

    frozen = interp.load("organism-frozen")
    smol = load_file(str(smollm2_dir() / "model.safetensors"))
    full_state = organism.model.model.language_model.state_dict()
    frozen_state = frozen.model.model.language_model.state_dict()
    for name in ("layers.3.mlp.down_proj.weight", "layers.10.self_attn.q_proj.weight", "norm.weight"):
        assert torch.equal(frozen_state[name], smol[f"model.{name}"]), name
    assert torch.equal(full_state["layers.3.mlp.down_proj.weight"], smol["model.layers.3.mlp.down_proj.weight"])
    adapted = full_state["layers.10.self_attn.q_proj.weight"]
    # shipped in fp16: adapted weights differ from SmolLM2's by far more than rounding
    assert (adapted - smol["model.layers.10.self_attn.q_proj.weight"]).abs().max() > 1e-2


def test_organism_eval_cli_prints_json(capsys):
    assert main(["organism", "eval", "--split", "test", "--limit", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 10
    assert {"accuracy", "blind_accuracy", "per_kind"} <= set(result)
    assert 0.0 <= result["blind_accuracy"] <= 1.0
    assert result["accuracy"] >= 0.7
