"""Assembling the organism from the real SmolLM2 weights, and its training machinery."""

from __future__ import annotations

import pytest
import torch

from interp.data.synthetic import SyntheticVQA
from interp.models.organism.build import TowerSpec, apply_trained_state, build_organism, trainable_state
from interp.models.organism.train import TrainConfig, answer_batch, collate, patch_targets, word_targets


@pytest.fixture(scope="module")
def assembled():
    return build_organism(TowerSpec(), seed=0)


def test_the_language_model_is_the_pretrained_smollm2(assembled):
    """A text-only question through the assembled LLaVA: a random LM could not answer it."""
    model, processor = assembled
    tokenizer = processor.tokenizer
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}],
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_processor_expands_the_image_to_the_patch_grid(assembled):
    model, processor = assembled
    spec = TowerSpec()
    sample = SyntheticVQA("val", seed=0, image_size=spec.image_size)[0]
    inputs, labels = collate(processor, [sample], with_answers=True)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == spec.grid * spec.grid
    answer = labels[0][labels[0] != -100]
    assert processor.tokenizer.decode(answer) == sample.answer + "<|im_end|>"


def test_shipped_state_round_trips_in_fp16(assembled):
    model, processor = assembled
    state = trainable_state(model, with_attention=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    # attention projections of all 30 layers, tower, projector, <image> row; no LM MLPs
    assert not any(k.startswith("model.language_model.") and ".mlp." in k for k in state)
    lm_queries = [k for k in state if k.startswith("model.language_model.") and k.endswith("self_attn.q_proj.weight")]
    assert len(lm_queries) == model.config.text_config.num_hidden_layers
    size_mb = sum(v.numel() * 2 for v in state.values()) / 2**20
    assert size_mb <= 60
    fresh, _ = build_organism(TowerSpec(), seed=1)
    before = fresh.model.multi_modal_projector.linear_1.weight.clone()
    apply_trained_state(fresh, state)
    after = fresh.model.multi_modal_projector.linear_1.weight
    assert not torch.equal(before, after)
    assert (after - model.model.multi_modal_projector.linear_1.weight).abs().max() < 1e-3


def test_answer_loss_falls_when_training_on_one_batch():
    model, processor = build_organism(TowerSpec(), seed=0)
    processor.tokenizer.padding_side = "right"
    samples = [SyntheticVQA("train", seed=0)[i] for i in range(4)]
    inputs, labels = collate(processor, samples, with_answers=True)
    params = list(model.model.multi_modal_projector.parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in params:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(6):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_patch_targets_carry_one_centre_per_object():
    samples = SyntheticVQA("val", seed=0)[:10]
    target = patch_targets(samples, 6)
    assert target["colour"].shape == target["shape"].shape == target["centre"].shape == (10 * 36,)
    per_image = target["centre"].reshape(10, 36).sum(-1).tolist()
    assert per_image == [len(s.objects) for s in samples]
    colour, shape = samples[3].patch_labels(6, 6)
    assert torch.equal(target["colour"][3 * 36 : 4 * 36], colour.flatten())
    assert torch.equal(target["shape"][3 * 36 : 4 * 36], shape.flatten())
    assert (target["colour"][target["centre"].bool()] > 0).all()  # centres lie on objects


def test_word_targets_are_smollm2_embeddings(assembled):
    model, processor = assembled
    colours, shapes, marker = word_targets(model, processor.tokenizer)
    embed = model.model.language_model.embed_tokens.weight
    (red,) = processor.tokenizer(" red", add_special_tokens=False)["input_ids"]
    assert torch.equal(colours[1], embed[red]) and not shapes[0].any()
    ids = processor.tokenizer(" object", add_special_tokens=False)["input_ids"]
    assert torch.allclose(marker, embed[ids].mean(0))


def test_answer_batch_takes_consecutive_indices_with_a_focus_share():
    train = SyntheticVQA("train", seed=0)
    focus = SyntheticVQA("train", seed=0, kinds=("counting", "spatial"))
    config = TrainConfig(batch=16, focus_fraction=0.25)
    batch = answer_batch(train, focus, 1000, config)
    assert [s.id for s in batch] == [f"train-{i:06d}" for i in range(1000, 1016)]  # each index drawn once
    assert {s.kind for s in batch[12:]} == {"counting", "spatial"}
    assert {s.kind for s in batch[:12]} == set(train.kinds)
    assert [s.id for s in answer_batch(train, None, 0, config)] == [s.id for s in train[:16]]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"centre_marker": False, "focus_fraction": 0.0, "polish_steps": 0, "seed": 3},
        {"focus_kinds": ("existence",)},
    ],
)
def test_the_cards_train_command_gives_back_the_trained_config(overrides):
    """The model card's command, parsed by the real CLI, asks for the config that trained the weights."""
    import shlex
    from dataclasses import asdict

    from interp.cli import build_parser, organism_train_config
    from interp.models.organism.card import train_command

    config = TrainConfig(**overrides)
    words = shlex.split(train_command(asdict(config)))
    assert words[:3] == ["interp", "organism", "train"]
    assert organism_train_config(build_parser().parse_args(words[1:])) == config


def test_train_refuses_a_focus_fraction_outside_0_1():
    from interp.cli import main

    assert main(["organism", "train", "--focus-fraction", "1.5", "--out", "/nonexistent"]) != 0


def test_the_recipe_runs_every_stage_and_writes_its_weights(tmp_path, assembled):
    """A step or two of each stage (fp32: this CPU has no fast bf16) write both variants' files on
    the CPU tensors a file needs, and the log names where the run trained."""
    from safetensors.torch import load_file

    from interp.models.organism.train import train

    config = TrainConfig(
        tower_steps=2,
        tower_batch=4,
        words_steps=1,
        align_steps=1,
        adapt_steps=1,
        polish_steps=1,
        batch=2,
        warmup=1,
        eval_every=100,
        eval_samples=2,
        bf16=False,
    )
    summary = train(config, tmp_path)
    assert summary["device_name"] == "cpu"
    assert [e["stage"] for e in summary["log"] if e["stage"] >= 1] == [1, 2, 3]
    frozen, adapted = (load_file(str(tmp_path / f"{v}.safetensors")) for v in ("organism-frozen", "organism"))

    def lm_attention(state):
        return [k for k in state if k.startswith("model.language_model.") and ".self_attn." in k]

    assert lm_attention(adapted) and not lm_attention(frozen)  # the frozen variant keeps SmolLM2's attention
    smollm2 = assembled[0].model.language_model.layers[0].self_attn.q_proj.weight.to(torch.float16)
    trained = adapted["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert trained.device.type == "cpu" and not torch.equal(trained, smollm2)  # stage 2 trained the attention
