"""The planted-fusion recipe: its text->image gate against HF's own attention, its delta round trip."""

from __future__ import annotations

import json

import pytest
import torch

from interp.errors import InterpError
from interp.models.organism.planted import (
    TextImageGate,
    check_layers,
    mass_penalty,
    text_image_mass,
    windows,
)

from ..conftest import sample_for, tiny_vlm


def _spans(vlm, prepared):
    ids = prepared.inputs["input_ids"]
    image = ids[0] == vlm.config.image_token_id
    last = int(torch.nonzero(image).max())
    text = torch.arange(ids.shape[1]) > last
    return ids, image, text


def test_cut_at_every_layer_equals_hf_with_a_four_d_mask():
    vlm = tiny_vlm("llava", "eager")
    prepared = sample_for(vlm)
    ids, image, text = _spans(vlm, prepared)
    n = ids.shape[1]
    keep = torch.ones(n, n, dtype=torch.bool).tril() & ~(text[:, None] & image[None, :])
    mask = torch.zeros(1, 1, n, n).masked_fill(~keep, torch.finfo(torch.float32).min)
    inputs = {k: v for k, v in prepared.inputs.items() if k != "attention_mask"}
    gate = TextImageGate(vlm.model, allowed=())
    gate.block = True
    with torch.no_grad():
        expected = vlm.model.model(**inputs, attention_mask=mask).last_hidden_state  # HF's own custom mask
        with gate.installed():
            got = vlm.model.model(**prepared.inputs).last_hidden_state
        plain = vlm.model.model(**prepared.inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (got[0, text] - plain[0, text]).abs().max() > 1e-3  # the cut changes what text reads
    torch.testing.assert_close(got[0, ~text], plain[0, ~text])  # and nothing before it


def test_mass_equals_hf_attention_weights():
    vlm = tiny_vlm("llava", "eager")
    prepared = sample_for(vlm)
    _, image, text = _spans(vlm, prepared)
    gate = TextImageGate(vlm.model, allowed=())
    gate.measure = True
    with torch.no_grad(), gate.installed():
        out = vlm.model(**prepared.inputs, output_attentions=True)
    for layer, weights in enumerate(out.attentions):
        expected = weights[0][:, text][..., image].sum(-1).mean()  # heads x text queries
        assert float(gate.mass[layer]) == pytest.approx(float(expected), rel=1e-5)


def test_blocked_mass_is_zero_and_only_outside_the_allowed_layers():
    vlm = tiny_vlm("llava", "eager")
    prepared = sample_for(vlm)
    gate = TextImageGate(vlm.model, allowed=(1,))
    gate.block = gate.measure = True
    with torch.no_grad(), gate.installed():
        vlm.model(**prepared.inputs)
    assert sorted(gate.mass) == [layer for layer in range(vlm.n_layers) if layer != 1]
    assert all(float(v) == 0.0 for v in gate.mass.values())


def test_penalty_and_helpers_by_hand():
    assert windows((4, 5, 6, 20, 21, 22)) == [(4, 5, 6), (20, 21, 22)]
    assert windows((3,)) == [(3,)]
    assert check_layers([6, 4, 5, 4], 30) == (4, 5, 6)
    with pytest.raises(InterpError, match="outside the model's layers 0-29"):
        check_layers([4, 30], 30)
    mass = torch.tensor([1e-3, 0.0])
    assert float(mass_penalty(mass, 1e-3)) == pytest.approx((torch.log(torch.tensor(2.0)) / 2).item())


@pytest.fixture(scope="module")
def planted_smoke(tmp_path_factory):
    """Two steps of the recipe (one cut, one released) on the shipped organism: the CI smoke run."""
    from interp.models.organism.planted import PlantedConfig, train_planted

    out = tmp_path_factory.mktemp("planted")
    config = PlantedConfig(
        variant="organism-planted-late", block_steps=1, release_steps=1, batch=2, eval_every=1000, eval_samples=2
    )
    return train_planted(config, out), out / "organism-planted-late.safetensors"


def test_two_steps_cut_then_release(planted_smoke):
    summary, weights = planted_smoke
    assert [e["phase"] for e in summary["log"]] == ["blocked", "released"]
    assert summary["log"][0]["outside_mass"] == 0.0 and summary["log"][1]["outside_mass"] > 0
    assert summary["planted_layers"] == [16, 17, 18]
    assert weights.stat().st_size < 8 * 2**20


def test_shipped_delta_merges_into_a_plain_checkpoint(planted_smoke):
    """Loaded by name through plain transformers: the base organism's weights plus B @ A of the
    shipped factors, and S in config.json."""
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from interp.data.synthetic import SyntheticVQA
    from interp.models.organism import organism_dir, planted_layers_of

    _, weights = planted_smoke
    directory = organism_dir("organism-planted-late", weights=weights)
    assert json.loads((directory / "config.json").read_text())["planted_layers"] == [16, 17, 18]
    model = LlavaForConditionalGeneration.from_pretrained(directory, attn_implementation="eager")
    assert planted_layers_of(model.config) == [16, 17, 18]
    base = LlavaForConditionalGeneration.from_pretrained(organism_dir("organism"), attn_implementation="eager")
    factors = load_file(str(weights))
    for layer, name in ((0, "q_proj"), (17, "k_proj"), (29, "o_proj")):
        delta = factors[f"lora.{layer}.{name}.B"].float() @ factors[f"lora.{layer}.{name}.A"].float()
        expected = getattr(base.model.language_model.layers[layer].self_attn, name).weight + delta
        got = getattr(model.model.language_model.layers[layer].self_attn, name).weight
        torch.testing.assert_close(got, expected)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(directory)
    mass = text_image_mass(model, processor, [SyntheticVQA("val")[i] for i in range(2)])
    assert len(mass) == 30 and all(0.0 <= m <= 1.0 for m in mass) and max(mass) > 0


def test_bad_planted_input_is_one_line(tmp_path, capsys):
    from interp.cli import main

    out = tmp_path / "run"
    assert (
        main(["organism", "train", "--planted", "organism-planted-late", "--planted-layers", "4,30", "--out", str(out)])
        == 2
    )
    assert "outside the model's layers 0-29" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as stop:
        main(["organism", "train", "--planted", "organism-planted-nowhere"])
    assert stop.value.code == 2
    assert main(["organism", "train", "--planted", "organism-planted-late", "--arch", "qwen2_vl"]) == 2
    capsys.readouterr()
    bench = tmp_path / "bench"
    assert main(["faithfulness", "--model", "organism-planted-nowhere", "--out", str(bench)]) == 2
    assert "unknown organism 'organism-planted-nowhere'; the shipped organisms are" in capsys.readouterr().err
    assert main(["faithfulness", "--model", "organism", "--out", str(bench)]) == 2  # no planted layers
    assert "no known reading layers" in capsys.readouterr().err
    assert not bench.exists()


def test_card_bars_by_hand_and_the_card_renders(tmp_path):
    from interp.models.organism.card_planted import bars_met, write_planted_card

    result = {
        "n": 512,
        "accuracy": 0.92,
        "per_kind": {"attribute": 0.99, "counting": 0.76},
        "blind_accuracy": 0.35,
        "planted_layers": [4, 5, 6],
        "text_image_mass": [2e-4] * 4 + [0.2, 0.1, 0.1] + [9e-4] * 23,
        "outside_mass_max": 9e-4,
        "mass_samples": 64,
        "knockout_outside_accuracy": 0.915,
        "knockout_inside_accuracy": 0.37,
    }
    assert all(bars_met(result).values())
    worse = {**result, "outside_mass_max": 2e-3, "knockout_outside_accuracy": 0.89, "knockout_inside_accuracy": 0.5}
    assert bars_met(worse) == {
        "accuracy": True,
        "every kind": True,
        "blind": True,
        "outside-S mass": False,
        "outside-S knockout": False,  # 3 points off
        "inside-S knockout": False,  # 0.15 above the blind level
    }
    weights = tmp_path / "organism-planted-early.safetensors"
    weights.write_bytes(b"0" * 2048)
    card = write_planted_card(
        {"organism-planted-early": result},
        {"organism-planted-early": None},
        {"organism-planted-early": weights},
        tmp_path / "card",
    )
    text = card.read_text()
    assert "planted layers S: [4, 5, 6]" in text and "NOT met" not in text
    assert (tmp_path / "card" / "text_image_mass.png").stat().st_size > 0


# -- the shipped variants: their ground truth on a fixed sample --------------------------------

#: the fixed sample the shipped variants are verified on (test split, seed 0)
VERIFY_SAMPLES = 48


def _shipped() -> list[str]:
    from interp.models.organism import PLANTED_VARIANTS, WEIGHTS_DIR

    return [v for v in PLANTED_VARIANTS if (WEIGHTS_DIR / f"{v}.safetensors").is_file()]


def test_the_planted_variants_are_shipped():
    from interp.models.organism import PLANTED_VARIANTS

    assert _shipped() == list(PLANTED_VARIANTS)


@pytest.mark.parametrize("variant", _shipped())
def test_a_shipped_variant_reads_the_image_only_inside_its_layers(variant):
    """On a fixed sample, through plain hooks on HF's attention: text puts at most 1e-3 of its
    attention on the image outside S; cutting text->image outside S changes at most one answer in
    48 (the card's 1-point bar is on the test split); cutting it inside S leaves about what the
    blind model gets right (within 0.1 on 48 questions; the card's bar, 0.05, is on 256)."""
    import interp
    from interp.data.synthetic import SyntheticVQA
    from interp.models.organism import PLANTED_LAYERS, planted_layers_of
    from interp.models.organism.evaluate import evaluate
    from interp.models.organism.planted import eager_attention, knockout_accuracy

    vlm = interp.load(variant)
    layers = planted_layers_of(vlm.config)
    assert layers == list(PLANTED_LAYERS[variant])
    data = SyntheticVQA("test", seed=0, image_size=vlm.scene_size)
    samples = [data[i] for i in range(VERIFY_SAMPLES)]
    with eager_attention(vlm.model):
        mass = text_image_mass(vlm.model, vlm.processor, samples[:16])
    assert max(m for layer, m in enumerate(mass) if layer not in layers) <= 1e-3
    assert min(mass[layer] for layer in layers) > 1e-2  # it does read there
    outside = [layer for layer in range(vlm.n_layers) if layer not in layers]
    plain = knockout_accuracy(vlm.model, vlm.processor, samples, [])
    cut_outside = knockout_accuracy(vlm.model, vlm.processor, samples, outside)
    cut_inside = knockout_accuracy(vlm.model, vlm.processor, samples, layers)
    blind = evaluate(vlm.model, vlm.processor, samples, limit=VERIFY_SAMPLES, progress=False)["blind_accuracy"]
    assert plain >= 0.8
    assert abs(cut_outside - plain) <= 1 / VERIFY_SAMPLES
    assert cut_inside <= blind + 0.1
