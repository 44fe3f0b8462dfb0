"""The Qwen2-VL organism: SmolLM2 mapped into Qwen2, its training machinery, and the shipped model."""

from __future__ import annotations

import json
import multiprocessing
import shlex
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import interp
from interp.data.synthetic import SyntheticVQA, is_correct
from interp.models.organism import publish_dir
from interp.models.organism.evaluate import generate_answers
from interp.models.organism.qwen2vl import (
    MERGE,
    QwenTowerSpec,
    apply_trained_state,
    build_qwen_organism,
    trainable_state,
)
from interp.models.organism.weight_deltas import add_full_attention, add_lora, merge_adapters, quantize_rows
from interp.models.organism.train_qwen2vl import (
    QwenTrainConfig,
    collate,
    image_inputs,
    lr_scale,
    merged_features,
    token_targets,
)


@pytest.fixture(scope="module")
def assembled():
    return build_qwen_organism(QwenTowerSpec(), seed=0)


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    from interp.models.organism.smollm2 import smollm2_dir

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).eval()


# -- the mapping -------------------------------------------------------------------------


def test_text_only_logits_equal_smollm2s(assembled, smollm2):
    """Zero q/k/v biases and equal M-RoPE components: Qwen2 computes exactly what Llama does."""
    model, processor = assembled
    text = model.config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert text.rope_parameters["rope_theta"] == smollm2.config.rope_parameters["rope_theta"]
    biases = [
        m.bias
        for layer in model.model.language_model.layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
    ]
    assert biases and all(not b.any() for b in biases)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The quick brown fox jumps over the lazy dog, and then it runs into the forest.",
    ]
    for prompt in prompts:
        ids = processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ours = model(input_ids=ids).logits
            theirs = smollm2(input_ids=ids).logits
        vocab = theirs.shape[-1]
        assert ours.shape[-1] == vocab + 4  # the four Qwen vision specials
        assert (ours[..., :vocab] - theirs).abs().max() < 1e-4


def test_processor_has_dynamic_resolution(assembled):
    model, processor = assembled
    side = processor.image_processor.patch_size * processor.image_processor.merge_size
    grids = {}
    for size in (96, 128):
        sample = SyntheticVQA("val", seed=0, image_size=size)[0]
        inputs, _ = collate(processor, [sample])
        t, h, w = inputs["image_grid_thw"][0].tolist()
        assert (t, h * processor.image_processor.patch_size, w * processor.image_processor.patch_size) == (
            1,
            size,
            size,
        )
        n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
        assert n_image == (size // side) ** 2 == h * w // MERGE**2
        assert int(inputs["mm_token_type_ids"].sum()) == n_image
        grids[size] = (h, w)
    assert grids[96] != grids[128]


def test_merged_features_are_row_major_over_the_token_grid(assembled):
    """The tower-stage labels line up with the LM's image tokens: with the tower's attention
    zeroed, brightening one token's pixel block changes exactly that row of features."""
    model, processor = assembled
    from copy import deepcopy

    visual = deepcopy(model.model.visual)
    for block in visual.blocks:
        for parameter in block.attn.parameters():
            torch.nn.init.zeros_(parameter)
    side = processor.image_processor.patch_size * MERGE
    rng = np.random.default_rng(0)
    base = (rng.uniform(0.3, 0.6, size=(96, 128, 3)) * 255).astype("uint8")
    rows, cols = 96 // side, 128 // side
    r, c = 2, 5
    bright = base.copy()
    bright[r * side : (r + 1) * side, c * side : (c + 1) * side] = 255
    with torch.no_grad():
        a = merged_features(visual, image_inputs(processor, [Image.fromarray(base)]))
        b = merged_features(visual, image_inputs(processor, [Image.fromarray(bright)]))
        # the merger reads the same grouping: its output is the model's image features
        inputs = image_inputs(processor, [Image.fromarray(base)])
        pooled = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        assert torch.allclose(visual.merger(a.reshape(-1, a.shape[-1] // MERGE**2)), pooled, atol=1e-5)
    changed = ((a - b).abs().amax(-1) > 1e-5).nonzero().flatten().tolist()
    assert a.shape[0] == rows * cols and changed == [r * cols + c]


def test_token_targets_follow_the_merged_grids():
    samples = [SyntheticVQA("val", seed=0, image_size=96)[i] for i in range(3)]
    samples.append(SyntheticVQA("val", seed=0, image_size=128)[3])
    grids = [(6, 6)] * 3 + [(8, 8)]
    target = token_targets(samples, grids)
    assert target["colour"].shape == (3 * 36 + 64,)
    colour, _ = samples[3].patch_labels(8, 8)
    assert torch.equal(target["colour"][108:], colour.flatten())
    assert int(target["centre"][108:].sum()) == len(samples[3].objects)


def test_token_positions_are_the_tokens_centres_as_fractions():
    from interp.models.organism.train_qwen2vl import token_positions

    where = token_positions(2, 3)  # row-major: (0,0) (0,1) (0,2) (1,0) ...
    assert torch.allclose(
        where, torch.tensor([[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6], [0.75, 1 / 6], [0.75, 0.5], [0.75, 5 / 6]])
    )
    samples = [SyntheticVQA("val", seed=0, image_size=96)[0], SyntheticVQA("val", seed=0, image_size=128)[1]]
    target = token_targets(samples, [(6, 6), (8, 8)])["position"]
    assert target.shape == (36 + 64, 2)
    assert torch.allclose(target[36 + 8 * 2 + 5], torch.tensor([2.5 / 8, 5.5 / 8]))  # 8x8 grid, row 2, column 5


def test_position_words_are_the_spatial_words_differences(assembled):
    from interp.models.organism.train_qwen2vl import position_words

    model, processor = assembled
    embed = model.model.language_model.embed_tokens.weight
    ids = {
        w: processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        for w in ("below", "above", "right", "left")
    }
    assert all(len(i) == 1 for i in ids.values())  # each one token of SmolLM2's vocabulary
    words = position_words(model, processor.tokenizer)
    assert torch.equal(words[0], embed[ids["below"][0]] - embed[ids["above"][0]])
    assert torch.equal(words[1], embed[ids["right"][0]] - embed[ids["left"][0]])


def test_stage0_learns_positions_only_when_asked(tmp_path):
    """With --position-weight the tower's stage 0 logs how far its position head is from each token
    (in tokens); the default run has no such head, and so draws the same random numbers as before."""
    from interp.models.organism import train_qwen2vl as recipe

    def run(name, **extra):
        config = QwenTrainConfig(
            tower_steps=2, tower_batch=2, tower_sizes=(96,), words_steps=2, adapt_steps=0, lora_rank=2, **extra
        )
        return recipe.train_qwen2vl(config, tmp_path / name)["log"]

    plain, placed = run("plain"), run("placed", position_weight=4.0, position_words=True)
    assert all("position_error_tokens" not in e for e in plain if e["stage"] == 0)
    errors = [e["position_error_tokens"] for e in placed if e["stage"] == 0]
    assert errors and all(0 < e < 6 for e in errors)
    # stage 0's first step saw the same tower, so its colour/shape loss is the same up to the position term
    first = next(e for e in plain if e["stage"] == 0), next(e for e in placed if e["stage"] == 0)
    assert first[0]["patch_accuracy"] == first[1]["patch_accuracy"]
    assert first[1]["loss"] > first[0]["loss"]
    # the card says what the run did (the result: an `organism eval --json` output's fields)
    from interp.models.organism.card_qwen2vl import write_qwen_card

    kinds = {k: 0.5 for k in ("attribute", "counting", "existence", "identity", "spatial")}
    result = {"n": 10, "accuracy": 0.5, "per_kind": kinds, "blind_accuracy": 0.3, "blind_per_kind": kinds}
    cards = {
        name: write_qwen_card(tmp_path / name, result, tmp_path / f"card-{name}").read_text()
        for name in ("plain", "placed")
    }
    assert "--position-weight 4.0 --position-words" in cards["placed"] and "--position" not in cards["plain"]
    assert "(row, column) head" in cards["placed"] and "(row, column)" not in cards["plain"]
    assert f"off by {errors[-1]:.2f} tokens per axis" in cards["placed"]
    assert "earlier process" not in cards["placed"]
    # a run whose tower came from --tower-from: stage 0's time is the earlier process's, not this one's
    log_file = tmp_path / "placed" / "training_log.json"
    summary = json.loads(log_file.read_text())
    log_file.write_text(json.dumps({**summary, "tower_from": str(tmp_path / "T" / "organism-qwen2vl.safetensors")}))
    tower_seconds = [e["seconds"] for e in summary["log"] if e["stage"] == 0][-1]
    carried = write_qwen_card(tmp_path / "placed", result, tmp_path / "card-carried").read_text()
    assert f"earlier process ({tower_seconds:.0f} s); 0b here:" in carried and "min after stage 0" in carried


def test_the_card_says_how_many_threads_the_answer_stages_ran_on():
    """A CPU run resumed with another thread count: its card counts the steps per count (the tower's
    stages are not counted); a log from before the count was logged reads as those runs ran."""
    from interp.models.organism.card_qwen2vl import cpu_threads

    log = (
        [{"stage": 0}, {"stage": 0.5}]
        + [{"stage": 2}] * 3
        + [{"stage": 2, "threads": 2}] * 2
        + [{"stage": 3, "threads": 1}]
    )
    assert cpu_threads(log) == "1 step on 1 thread, 2 steps on 2 threads, 3 steps before it was logged"
    assert cpu_threads(log[:5]) is None


def test_lora_merges_into_an_ordinary_checkpoint(assembled):
    """The shipped state (fp16 LoRA factors, biases, tower, rows) applied to a fresh build
    gives the trained model's outputs with plain Linear layers."""
    model, processor = assembled
    from copy import deepcopy

    trained = deepcopy(model)
    add_lora(trained, rank=4, alpha=8.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if ".lora_B" in name or (".self_attn." in name and name.endswith(".bias")):
                parameter.normal_(0, 0.02)
    state = trainable_state(trained)
    assert all(v.dtype == torch.float16 for v in state.values())
    assert not any(".mlp." in k and "visual" not in k for k in state)
    size_mb = sum(v.numel() * 2 for v in state.values()) / 2**20
    assert size_mb < 30
    sample = SyntheticVQA("val", seed=0)[0]
    inputs, _ = collate(processor, [sample])
    with torch.no_grad():
        expected = trained(**inputs).logits
    fresh, _ = build_qwen_organism(QwenTowerSpec(), seed=5)
    apply_trained_state(fresh, state)
    assert type(fresh.model.language_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        got = fresh(**inputs).logits
    assert (got - expected).abs().max() < 5e-2  # fp16 rounding of the shipped factors
    merge_adapters(trained)
    with torch.no_grad():
        merged = trained(**inputs).logits
    assert (merged - expected).abs().max() < 1e-3


def test_the_attention_mode_is_lora_or_full():
    assert QwenTrainConfig(attention="full").attention == "full"
    with pytest.raises(ValueError, match="'lora' or 'full'"):
        QwenTrainConfig(attention="Full")


def test_full_attention_trains_every_weight_and_ships_its_change_as_int8(assembled):
    """``attention="full"``: the trained q/k/v/o are SmolLM2's plus a full-rank change; it ships as
    int8 codes with a scale per row (within half a step of the change), and the shipped file applied
    to a fresh build gives the trained model's outputs with plain Linear layers."""
    model, processor = assembled
    from copy import deepcopy

    codes, scale = quantize_rows(torch.tensor([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0], [2e-3, 1e-3, -2e-3]]))
    assert codes.dtype == torch.int8 and codes[0].tolist() == [50, -127, 0] and codes[1].tolist() == [0, 0, 0]
    assert codes[2].tolist() == [127, 64, -127]  # each row's own scale (1e-3 is 63.5 steps: rounds to 64)
    assert scale.dtype == torch.float16 and float(scale[0]) == pytest.approx(0.01, rel=1e-3)

    trained = deepcopy(model)
    deltas = add_full_attention(trained)
    assert len(deltas) == 4 * model.config.text_config.num_hidden_layers
    q = trained.model.language_model.layers[0].self_attn.q_proj
    assert q.delta_weight.shape == q.base.weight.shape and not q.delta_weight.any()
    sample = SyntheticVQA("val", seed=0)[0]
    inputs, _ = collate(processor, [sample])
    with torch.no_grad():
        before = model(**inputs).logits
        assert torch.equal(trained(**inputs).logits, before)  # a zero change computes SmolLM2's attention
        torch.manual_seed(3)
        for delta in deltas:
            delta.normal_(0, 0.01)
        expected = trained(**inputs).logits
    state = trainable_state(trained)
    assert state["delta.0.q_proj.int8"].dtype == torch.int8 and state["delta.0.q_proj.scale"].dtype == torch.float16
    step = state["delta.0.q_proj.scale"].float()[:, None]
    assert ((state["delta.0.q_proj.int8"].float() * step - q.delta_weight).abs() <= step / 2 + 1e-6).all()
    size_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    assert size_mb < 30
    fresh, _ = build_qwen_organism(QwenTowerSpec(), seed=5)
    apply_trained_state(fresh, state)
    assert type(fresh.model.language_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        got = fresh(**inputs).logits
    # the int8 (and fp16 tower) rounding moves the logits by a small fraction of what the change moved them
    error, change = (got - expected).abs().max(), (expected - before).abs().max()
    assert error < 0.1 and error < 0.02 * change
    merge_adapters(trained)
    assert type(trained.model.language_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        assert (trained(**inputs).logits - expected).abs().max() < 1e-3


def test_lr_warmup_does_not_depend_on_the_step_count():
    warm = 10
    assert [lr_scale(s, 100, warm) for s in range(warm)] == [lr_scale(s, 500, warm) for s in range(warm)]
    assert lr_scale(99, 100, warm) == pytest.approx(0.1, abs=1e-3)
    assert lr_scale(warm, 100, warm) == pytest.approx(1.0)


def test_the_cards_train_command_gives_back_the_trained_config():
    from interp.cli import build_parser, organism_train_config
    from interp.models.organism.card_qwen2vl import train_command

    for config in (
        QwenTrainConfig(seed=2, adapt_steps=123, lora_rank=8),
        QwenTrainConfig(focus_kinds=("existence", "spatial"), focus_fraction=0.4),
        QwenTrainConfig(position_weight=4.0, position_words=True, lora_rank=96, lora_alpha=111.0),
        QwenTrainConfig(attention="full", tower_steps=2000, position_weight=4.0),
    ):
        words = shlex.split(train_command(asdict(config)))
        assert words[:5] == ["interp", "organism", "train", "--arch", "qwen2_vl"]
        assert organism_train_config(build_parser().parse_args(words[1:])) == config


@pytest.mark.parametrize("kinds", ["colour", "", "existence,,shape"])
def test_train_refuses_unknown_focus_kinds(kinds, capsys):
    from interp.cli import main

    assert main(["organism", "train", "--arch", "qwen2_vl", "--focus-kinds", kinds, "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--focus-kinds" in err


def test_a_resumed_training_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """Stage 2 killed after an evaluation and resumed from its checkpoint's state ends with
    exactly the weights of a run that was never interrupted (a few steps, batch 2)."""
    from safetensors.torch import load_file

    from interp.errors import InterpError
    from interp.models.organism import train_qwen2vl as recipe

    def config(folder):
        return QwenTrainConfig(
            tower_steps=2,
            tower_batch=2,
            tower_sizes=(96,),
            words_steps=2,
            adapt_steps=4,
            batch=2,
            warmup=1,
            eval_every=2,
            eval_samples=2,
            lora_rank=4,
            checkpoint_dir=str(tmp_path / folder),
        )

    recipe.train_qwen2vl(config("a"), tmp_path / "a")
    evaluations = {"n": 0}
    real = recipe.quick_accuracy

    def killed_at_the_second_evaluation(*args, **kwargs):
        evaluations["n"] += 1
        if evaluations["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "quick_accuracy", killed_at_the_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        recipe.train_qwen2vl(config("b"), tmp_path / "b")
    monkeypatch.setattr(recipe, "quick_accuracy", real)
    state = tmp_path / "b" / "stage2-resume.pt"
    assert torch.load(state, weights_only=False)["step"] == 2
    with pytest.raises(InterpError, match="other settings: adapt_steps"):
        recipe.train_qwen2vl(
            QwenTrainConfig(**{**asdict(config("c")), "adapt_steps": 6, "tower": QwenTowerSpec()}),
            tmp_path / "c",
            resume_from=state,
        )
    # a state from before the position options existed (its identity lacks them) resumes as theirs off
    old = torch.load(state, weights_only=False)
    for key in ("position_weight", "position_words"):
        del old["identity"][key]
    torch.save(old, tmp_path / "b" / "old-resume.pt")
    with pytest.raises(InterpError, match="position_weight"):
        recipe.train_qwen2vl(
            QwenTrainConfig(**{**asdict(config("d")), "position_weight": 1.0, "tower": QwenTowerSpec()}),
            tmp_path / "d",
            resume_from=tmp_path / "b" / "old-resume.pt",
        )
    summary = recipe.train_qwen2vl(config("c"), tmp_path / "c", resume_from=tmp_path / "b" / "old-resume.pt")
    straight = load_file(str(tmp_path / "a" / "organism-qwen2vl.safetensors"))
    resumed = load_file(str(tmp_path / "c" / "organism-qwen2vl.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [e["step"] for e in summary["log"] if e["stage"] == 2]
    assert steps == [0, 1, 2, 3]  # the log holds every step once
    assert {e["threads"] for e in summary["log"] if e["stage"] == 2} == {torch.get_num_threads()}
    assert json.loads((tmp_path / "a" / "training_log.json").read_text())["config"]["adapt_steps"] == 4


def test_train_rejects_llava_only_flags_for_qwen():
    from interp.cli import main

    assert main(["organism", "train", "--arch", "qwen2_vl", "--no-centre-marker", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--lora-rank", "4", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--position-words", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--lora-alpha", "8", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--arch", "qwen2_vl", "--lora-alpha", "0", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--arch", "qwen2_vl", "--position-weight", "-1", "--out", "/nonexistent"]) == 2
    assert main(["organism", "train", "--full-attention", "--out", "/nonexistent"]) == 2
    assert (
        main(
            ["organism", "train", "--arch", "qwen2_vl", "--full-attention", "--lora-rank", "8", "--out", "/nonexistent"]
        )
        == 2
    )


def _publish(target: str, delay: float) -> str:
    def write(directory: Path) -> None:
        (directory / "a.txt").write_text("first half")
        time.sleep(delay)
        (directory / "config.json").write_text("{}")

    return str(publish_dir(Path(target), write))


def test_concurrent_first_publishes_do_not_collide(tmp_path):
    target = tmp_path / "cache" / "organism-x"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.starmap(_publish, [(str(target), 0.5), (str(target), 0.5)])
    assert results == [str(target)] * 2
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "config.json"]
    assert [p.name for p in target.parent.iterdir()] == ["organism-x"]  # no temporary left behind


# -- the shipped organism --------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    return interp.load("organism-qwen2vl")


def test_loads_as_an_ordinary_qwen2vl_directory(organism):
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    assert isinstance(organism.model, Qwen2VLForConditionalGeneration)
    assert isinstance(organism.processor, Qwen2VLProcessor)
    assert AutoConfig.from_pretrained(organism.model.name_or_path).model_type == "qwen2_vl"
    assert organism.n_layers == 30
    assert organism.scene_size == 96  # the organism's training scenes, though its tower takes any size
    side = organism.processor.image_processor.patch_size * organism.processor.image_processor.merge_size
    for size in (96, 128):
        sample = SyntheticVQA("test", seed=0, image_size=size)[0]
        prepared = organism.prepare(sample.image, sample.question)
        assert prepared.grid.shape == (size // side, size // side)
        assert prepared.n_image_tokens == (size // side) ** 2


def test_answers_fixed_test_samples(organism):
    """The shipped run meets its bar on the first 60 test questions too (12 of each kind; greedy):
    57 right when it shipped (counting 10 of 12, spatial 11), and each kind far above what the
    question alone gives (a blank image)."""
    data = SyntheticVQA("test", seed=0)
    samples = [data[i] for i in range(60)]
    answers = generate_answers(
        organism.model, organism.processor, [s.image for s in samples], [s.question for s in samples]
    )
    blank = [Image.new("RGB", s.image.size, (255, 255, 255)) for s in samples]
    blind = generate_answers(organism.model, organism.processor, blank, [s.question for s in samples])
    right = {kind: [0, 0, 0] for kind in {s.kind for s in samples}}  # seen, right, right blind
    for answer, guess, sample in zip(answers, blind, samples):
        tally = right[sample.kind]
        tally[0] += 1
        tally[1] += is_correct(answer, sample.answer)
        tally[2] += is_correct(guess, sample.answer)
    assert sum(t[1] for t in right.values()) >= 54, (right, list(zip(answers, samples)))
    for kind, (seen, correct, blind_correct) in right.items():
        assert correct >= 0.75 * seen and correct > blind_correct, (kind, seen, correct, blind_correct)


def test_blind_answers_are_near_chance(organism):
    data = SyntheticVQA("test", seed=0)
    samples = [data[i] for i in range(40)]
    blank = [Image.new("RGB", s.image.size, (255, 255, 255)) for s in samples]
    answers = generate_answers(organism.model, organism.processor, blank, [s.question for s in samples])
    assert sum(is_correct(a, s.answer) for a, s in zip(answers, samples)) / len(samples) <= 0.5


def _layer0_input(vlm, inputs) -> torch.Tensor:
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = vlm.adapter.resolve(vlm.model, "layers")[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.model(**inputs)
    finally:
        handle.remove()
    return captured["h"][0]


@pytest.mark.parametrize("height,width", [(96, 96), (96, 128)])
def test_brightened_block_changes_exactly_its_cells(height, width):
    """Grid geometry on the trained weights: with the tower's attention zeroed each image
    token sees only its own 2x2 patch block, so brightening a region changes exactly the
    cells whose pixel blocks it touches, at each resolution."""
    from interp.models.organism import organism_dir

    vlm = interp.load(str(organism_dir("organism-qwen2vl")))
    for block in vlm.model.model.visual.blocks:
        for parameter in block.attn.parameters():
            torch.nn.init.zeros_(parameter)
    side = vlm.processor.image_processor.patch_size * vlm.processor.image_processor.merge_size
    rng = np.random.default_rng(0)
    base = (rng.uniform(0.35, 0.65, size=(height, width, 3)) * 255).astype("uint8")
    bright = base.copy()
    top, right = height // 4, 3 * width // 4  # rows [0, h/4), cols [3w/4, w)
    bright[:top, right:] = 255
    a = vlm.prepare(Image.fromarray(base), "what is here?")
    b = vlm.prepare(Image.fromarray(bright), "what is here?")
    changed = (_layer0_input(vlm, a.inputs) - _layer0_input(vlm, b.inputs)).abs().amax(-1) > 1e-5
    grid = a.layouts[0].grid
    assert grid.shape == (height // side, width // side)
    expected = torch.zeros(grid.shape, dtype=torch.bool)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            expected[r, c] = r * side < top and (c + 1) * side > right
    assert torch.equal(changed[grid.positions], expected)
    text = torch.ones_like(changed)
    text[a.image_positions] = False
    assert not changed[text].any()


def test_analyses_run_on_the_organism(organism):
    """Each analysis on two test scenes, checked against plain HF forwards."""
    from interp.analysis.attention import attention_maps, relevant_mass
    from interp.analysis.logit_lens import early_output
    from interp.analysis.sweep import masking_sweep
    from interp.analysis.teacher import teacher_force

    items = SyntheticVQA("test", seed=0)[:2]
    layers = [0, 14, 29]
    fast = masking_sweep(organism, items, variants=("single",), layers=layers, mode="fast", progress=False)
    naive = masking_sweep(organism, items, variants=("single",), layers=layers, mode="naive", progress=False)
    merged = fast.merge(naive, on=["item", "variant", "layer"], suffixes=("_fast", "_naive"))
    assert len(merged) == 2 * (1 + len(layers))
    assert (merged.logprob_fast - merged.logprob_naive).abs().max() < 1e-3
    lens = early_output(organism, items[:1], progress=False)
    assert lens.layer.nunique() == organism.n_layers
    item = items[0]
    tf = teacher_force(organism, organism.prepare(item.image, item.question), item.answer)
    with torch.no_grad():
        logits = organism.model(**tf.prepared.inputs).logits[0]
    logprobs = torch.log_softmax(logits.float(), -1)
    expected = float(logprobs[tf.positions, tf.targets][: tf.n_answer].sum())
    assert lens[lens.layer == organism.n_layers - 1].logprob.iloc[0] == pytest.approx(expected, abs=1e-3)
    assert float(fast[fast.variant == "baseline"].logprob.iloc[0]) == pytest.approx(expected, abs=1e-3)
    maps = attention_maps(organism, items[:1], layers=layers, progress=False)
    share = relevant_mass(maps)
    assert set(share.layer) == set(layers) and share.relevant_share.between(0, 1).all()


def test_card_writes_into_a_user_directory_never_the_package(tmp_path, monkeypatch):
    """`interp organism card` (and `train`) default to ~/.cache/interp/...; --out writes where asked."""
    from interp.cli import default_organism_dir, main
    from interp.models.organism import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "qwen2vl"
    before = {p.name: p.stat().st_mtime for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    results = json.loads((shipped / "test_results.json").read_text())
    out = tmp_path / "card"
    assert (
        main(
            [
                "organism",
                "card",
                "--arch",
                "qwen2_vl",
                "--results",
                str(shipped / "test_results.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "MODEL_CARD.md").read_text()
    assert f"**{results['accuracy']:.3f}**" in text and (out / "loss_curve.png").stat().st_size > 0
    assert text == (shipped / "MODEL_CARD.md").read_text()  # the shipped card is this command's output
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    assert main(["organism", "card", "--arch", "qwen2_vl", "--results", str(shipped / "test_results.json")]) == 0
    (written,) = (tmp_path / "cache" / "organism-cards").iterdir()
    assert (written / "MODEL_CARD.md").exists()
    assert default_organism_dir("runs", "qwen2_vl").parent == tmp_path / "cache" / "organism-runs"
    assert {p.name: p.stat().st_mtime for p in WEIGHTS_DIR.rglob("*") if p.is_file()} == before
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**results, "split": "val"}))
    assert main(["organism", "card", "--arch", "qwen2_vl", "--results", str(bad), "--out", str(out)]) == 2


def test_a_stage2_state_resumes_with_a_polish_stage_and_the_polish_stage_resumes(tmp_path, monkeypatch):
    """A stage-2 state of a run without a polish stage continues with one (stage 2 does not read
    the polish settings), and that run killed in its polish stage and resumed from the
    stage-3 state ends with exactly the weights of the uninterrupted run with the polish stage.
    (With q/k/v/o trained in full: their int8 rounding before the polish stage is redone on resume;
    the other resume test runs LoRA.)"""
    from safetensors.torch import load_file

    from interp.errors import InterpError
    from interp.models.organism import train_qwen2vl as recipe

    def config(folder, polish):
        return QwenTrainConfig(
            tower_steps=2,
            tower_batch=2,
            tower_sizes=(96,),
            words_steps=2,
            adapt_steps=2,
            polish_steps=polish,
            batch=2,
            warmup=1,
            eval_every=2,
            eval_samples=2,
            attention="full",
            checkpoint_dir=str(tmp_path / folder),
        )

    real = recipe.quick_accuracy
    evaluations = {"n": 0, "kill": 0}

    def killed(*args, **kwargs):
        evaluations["n"] += 1
        if evaluations["n"] == evaluations["kill"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "quick_accuracy", killed)
    recipe.train_qwen2vl(config("straight", 4), tmp_path / "straight")  # evaluations: stage 2 @2, stage 3 @2, @4
    recipe.train_qwen2vl(config("a", 0), tmp_path / "a")  # no polish stage: its stage-2 state is the last one
    evaluations.update(n=0, kill=2)  # resumed with a polish stage, killed at that stage's second evaluation
    with pytest.raises(KeyboardInterrupt):
        recipe.train_qwen2vl(config("a", 4), tmp_path / "a", resume_from=tmp_path / "a" / "stage2-resume.pt")
    state = tmp_path / "a" / "stage3-resume.pt"
    assert torch.load(state, weights_only=False)["step"] == 2
    with pytest.raises(InterpError, match="--polish-steps"):
        recipe.train_qwen2vl(config("a", 0), tmp_path / "a", resume_from=state)
    with pytest.raises(InterpError, match="other settings: polish_steps"):
        recipe.train_qwen2vl(config("a", 6), tmp_path / "a", resume_from=state)
    evaluations.update(n=0, kill=0)
    summary = recipe.train_qwen2vl(config("a", 4), tmp_path / "a", resume_from=state)
    straight = load_file(str(tmp_path / "straight" / "organism-qwen2vl.safetensors"))
    resumed = load_file(str(tmp_path / "a" / "organism-qwen2vl.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [(e["stage"], e["step"]) for e in summary["log"] if e["stage"] >= 2] == [
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
    ]


def test_eval_takes_another_weights_file_of_the_recipe(tmp_path, capsys):
    """``organism eval --weights FILE``: a file of the variant's recipe (here a copy of the shipped
    one) gives the shipped variant's answers; a missing file or another architecture's weights
    is one line, exit 2."""
    import shutil

    from interp.cli import main
    from interp.models.organism import weights_path

    copy = tmp_path / "candidate.safetensors"
    shutil.copy(weights_path("organism-qwen2vl"), copy)
    args = ["organism", "eval", "--variant", "organism-qwen2vl", "--limit", "4", "--no-blind", "--json"]
    assert main(args) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert main(args + ["--weights", str(copy)]) == 0
    candidate = json.loads(capsys.readouterr().out)
    assert candidate.pop("weights") == str(copy)
    assert candidate == shipped
    assert main(args + ["--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(args + ["--weights", str(weights_path("organism"))]) == 2
    assert "holds organism weights (llava)" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("device,message", [("nonsense", "is not a device"), ("cuda:3", "no CUDA device")])
def test_train_refuses_a_device_this_machine_lacks(arch, device, message, tmp_path, capsys):
    """``--device`` moves either recipe onto an accelerator; one that is not there (or not a
    device at all) is one line before any work, and nothing is written."""
    import torch

    from interp.cli import main

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(["organism", "train", "--arch", arch, "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err
    assert not out.exists() or not any(out.iterdir())
