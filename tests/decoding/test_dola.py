"""DoLa decoding against an independent computation.

The reference is a plain-PyTorch loop: one full HF forward per generated token on the
grown sequence (no KV cache, no nnsight) with ``output_hidden_states`` (and eager
``output_attentions`` for the attention rule); the layer scores are computed here with
``F.kl_div`` (as transformers' code) and numpy (scipy's Jensen-Shannon definition), the
penalty and sampling warpers are transformers' own ``LogitsProcessor`` classes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

import interp
from interp.data.synthetic import SyntheticVQA
from interp.decoding import (
    apply_repetition_penalty,
    attention_jsd_scores,
    candidate_layers,
    dola_contrast,
    dola_generate,
    logit_jsd_scores,
    relative_top_filter,
    sample_next,
    squared_jsd,
)
from interp.errors import InterpError, LayerIndexError
from interp.interventions import ScaleImageTokens

from ..conftest import sample_for, tiny_vlm

# -- the independent reference ---------------------------------------------------------------------


def _np_squared_jsd(p, q):
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return 0.5 * (kl(p, m) + kl(q, m))


def _eos_ids(vlm):
    eos = vlm.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()


@torch.no_grad()
def reference_dola(
    vlm,
    prepared,
    *,
    layers,
    select="logits",
    relative_top=0.1,
    penalty=1.2,
    max_new_tokens=3,
    do_sample=False,
    temperature=None,
    seed=0,
    scale_image_at=None,
    penalize_prompt=True,
):
    """Tokens and premature layers of DoLa by full re-forwards (``layers=None``: no DoLa)."""
    model = vlm.model
    head = model.get_output_embeddings()
    inputs = {k: v for k, v in prepared.inputs.items()}
    ids = inputs.pop("input_ids")
    inputs.pop("attention_mask", None)
    per_token = [k for k, v in inputs.items() if torch.is_tensor(v) and v.shape[:2] == ids.shape]
    image = prepared.image_positions
    handles = []
    if scale_image_at is not None:
        layer, scale = scale_image_at

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = hidden.clone()
            hidden[:, image] = hidden[:, image] * scale
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        block = vlm.adapter.resolve(model, "layers")[layer]
        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    penalty_processor = RepetitionPenaltyLogitsProcessor(penalty=float(penalty))
    warpers = [TemperatureLogitsWarper(temperature), TopKLogitsWarper(50)] if do_sample else []
    generator = torch.Generator().manual_seed(seed)
    history = ids if penalize_prompt else ids[:, :0]
    tokens, chosen_layers = [], []
    try:
        for _ in range(max_new_tokens):
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                **inputs,
                use_cache=False,
                output_hidden_states=True,
                output_attentions=(select == "attention"),
            )
            final = out.logits[:, -1].float()
            if layers is None:
                scores, layer = final, None
            else:
                early = {l: head(out.hidden_states[l][:, -1]) for l in layers}
                if len(layers) == 1:
                    layer = layers[0]
                elif select == "logits":
                    js = []
                    for l in layers:
                        p, q = F.softmax(final, -1), F.softmax(early[l], -1)
                        m = 0.5 * (p + q)
                        kl1 = F.kl_div(F.log_softmax(final, -1), m, reduction="none").mean(-1)
                        kl2 = F.kl_div(F.log_softmax(early[l], -1), m, reduction="none").mean(-1)
                        js.append(float((0.5 * (kl1 + kl2)).mean()))
                    layer = layers[int(np.argmax(js))]
                else:
                    last = out.attentions[-1][0, :, -1, image].mean(0).float().numpy()
                    js = [
                        _np_squared_jsd(last, out.attentions[l][0, :, -1, image].mean(0).float().numpy())
                        for l in layers
                    ]
                    layer = layers[int(np.argmax(js))]
                log_p = F.log_softmax(final, -1)
                log_q = F.log_softmax(early[layer], -1)
                keep = log_p >= log_p.max(-1, keepdim=True).values + math.log(relative_top)
                scores = torch.where(keep, log_p, -torch.inf) - torch.where(keep, log_q, torch.tensor(-1e-3))
            scores = penalty_processor(history, scores)
            if do_sample:
                for warper in warpers:
                    scores = warper(history, scores)
                token = torch.multinomial(F.softmax(scores, -1), 1, generator=generator)[:, 0]
            else:
                token = scores.argmax(-1)
            tokens.append(int(token))
            chosen_layers.append(layer)
            ids = torch.cat([ids, token[:, None]], dim=1)
            for key in per_token:  # e.g. Qwen2-VL's mm_token_type_ids: the new token is text (0)
                inputs[key] = torch.cat([inputs[key], inputs[key].new_zeros(1, 1)], dim=1)
            history = torch.cat([history, token[:, None]], dim=1)
            if int(token) in _eos_ids(vlm):
                break
    finally:
        for handle in handles:
            handle.remove()
    return tokens, chosen_layers


# -- on the organism --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    return interp.load("organism")


@pytest.fixture(scope="module")
def organism_eager():
    return interp.load("organism", attn_implementation="eager")


@pytest.fixture(scope="module")
def organism_questions(organism):
    data = SyntheticVQA("test", seed=0, image_size=organism.config.vision_config.image_size)
    return [organism.prepare(data[i].image, data[i].question) for i in range(10)]


def test_organism_candidates_skip_the_tied_embedding(organism):
    n = organism.n_layers
    assert organism.model.get_output_embeddings().weight is organism.model.get_input_embeddings().weight
    assert candidate_layers(n, "low", tied=True) == list(range(2, n // 2, 2))
    assert candidate_layers(n, "high", tied=True) == list(range(n // 2, n, 2))


@pytest.mark.parametrize("select", ["logits", "attention"])
def test_dola_equals_reference_on_10_organism_questions(organism, organism_eager, organism_questions, select):
    candidates = list(range(2, organism.n_layers // 2, 2))
    seen_layers = set()
    for prepared in organism_questions:
        ours = dola_generate(organism, prepared, select=select, max_new_tokens=2)
        tokens, layers = reference_dola(organism_eager, prepared, layers=candidates, select=select, max_new_tokens=2)
        assert ours.token_ids.tolist() == tokens
        assert ours.premature_layers == layers
        seen_layers.update(layers)
    assert len(seen_layers) > 1  # the rule really chooses between layers on these questions


def test_authors_penalty_on_generated_tokens_only(organism, organism_questions):
    candidates = list(range(2, organism.n_layers // 2, 2))
    for prepared in organism_questions[:1]:
        ours = dola_generate(organism, prepared, select="logits", max_new_tokens=3, penalize_prompt=False)
        tokens, layers = reference_dola(organism, prepared, layers=candidates, max_new_tokens=3, penalize_prompt=False)
        assert (ours.token_ids.tolist(), ours.premature_layers) == (tokens, layers)


def test_no_dola_is_plain_greedy(organism, organism_questions):
    for prepared in organism_questions[:2]:
        ours = dola_generate(organism, prepared, layers=None, repetition_penalty=1.0, max_new_tokens=4)
        plain = organism.run(prepared, generate=True, max_new_tokens=4)
        assert ours.token_ids.tolist() == plain.sequences[0].tolist()
        assert ours.premature_layers == [None] * len(ours.token_ids)


def test_intervention_applies_in_the_prefill_of_the_same_run(organism, organism_eager, organism_questions):
    layer = 3
    changed = 0
    for prepared in organism_questions[:2]:
        ours = dola_generate(
            organism,
            prepared,
            select="attention",
            max_new_tokens=3,
            interventions=[ScaleImageTokens([layer], scale=0.0)],
        )
        tokens, layers = reference_dola(
            organism_eager,
            prepared,
            layers=list(range(2, organism.n_layers // 2, 2)),
            select="attention",
            max_new_tokens=3,
            scale_image_at=(layer, 0.0),
        )
        assert (ours.token_ids.tolist(), ours.premature_layers) == (tokens, layers)
        clean = dola_generate(organism, prepared, select="attention", max_new_tokens=3)
        changed += clean.premature_layers != ours.premature_layers or clean.text != ours.text
    assert changed  # the mask does something, so the equality above is not vacuous


def test_remote_local_equals_local(organism, organism_questions):
    prepared = organism_questions[1]
    local = dola_generate(organism, prepared, select="attention", max_new_tokens=3)
    remote = dola_generate(organism, prepared, select="attention", max_new_tokens=3, remote="local")
    assert remote.token_ids.tolist() == local.token_ids.tolist()
    assert remote.premature_layers == local.premature_layers


# -- tiny models of two families --------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("select", ["logits", "attention"])
def test_dola_equals_reference_on_tiny_models(model_type, select):
    vlm = tiny_vlm(model_type)
    prepared = sample_for(vlm)
    layers = list(range(vlm.n_layers))
    ours = dola_generate(vlm, prepared, layers=layers, select=select, max_new_tokens=4)
    tokens, chosen = reference_dola(vlm, prepared, layers=layers, select=select, max_new_tokens=4)
    assert (ours.token_ids.tolist(), ours.premature_layers) == (tokens, chosen)
    # untied tiny models: 'low' starts at the embedding output
    assert candidate_layers(vlm.n_layers, "low", tied=False)[0] == 0


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_sampling_equals_reference_with_the_same_seed(model_type):
    vlm = tiny_vlm(model_type)
    prepared = sample_for(vlm)
    layers = list(range(vlm.n_layers))
    draws = set()
    for seed in (0, 1, 2):
        ours = dola_generate(
            vlm,
            prepared,
            layers=layers,
            select="attention",
            max_new_tokens=4,
            do_sample=True,
            temperature=3.0,
            seed=seed,
            relative_top=1e-4,
        )
        tokens, chosen = reference_dola(
            vlm,
            prepared,
            layers=layers,
            select="attention",
            max_new_tokens=4,
            do_sample=True,
            temperature=3.0,
            seed=seed,
            relative_top=1e-4,
        )
        assert (ours.token_ids.tolist(), ours.premature_layers) == (tokens, chosen)
        draws.add(tuple(tokens))
    assert len(draws) > 1  # the seeds really change the draws


# -- the pieces on hand-worked numbers ------------------------------------------------------------------


def test_relative_top_filter_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: with relative_top 0.25 the threshold is 0.125
    final = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    premature = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25]]))
    f, p = relative_top_filter(final, premature, 0.25)
    assert torch.allclose(f[0, :3], final[0, :3], atol=1e-6) and f[0, 3] == -math.inf
    assert torch.allclose(p[0, :3], torch.full((3,), math.log(0.25)), atol=1e-6) and p[0, 3] == pytest.approx(-1e-3)
    contrast = dola_contrast(final, premature, 0.25)
    expected = [math.log(0.5 / 0.25), math.log(0.3 / 0.25), math.log(0.15 / 0.25)]
    assert contrast[0, :3].tolist() == pytest.approx(expected, abs=1e-6) and contrast[0, 3] == -math.inf
    # relative_top 1: only the top token survives
    assert torch.isfinite(dola_contrast(final, premature, 1.0)).sum() == 1


def test_repetition_penalty_by_hand():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # positive halved, negative doubled, once per token
    assert apply_repetition_penalty(scores, torch.tensor([[0]])[:, :0], 2.0).tolist() == scores.tolist()


def test_layer_scores_by_hand():
    # identical distributions score 0; a uniform vs a one-hot over 2 tokens:
    # m = (0.75, 0.25); KL(m||p) = .75 ln 1.5 + .25 ln .5, KL(m||q) = .75 ln .75 + .25 ln(.25/1e-30 ...)
    final = torch.tensor([[0.0, 0.0]])
    same = torch.tensor([[[0.0, 0.0]]])
    assert logit_jsd_scores(final, same).item() == pytest.approx(0.0, abs=1e-7)
    q = torch.tensor([[[math.log(3.0), 0.0]]])  # probabilities 0.75, 0.25
    m = torch.tensor([0.625, 0.375])
    kl_mp = (m * torch.log(m / 0.5)).mean()
    kl_mq = (m * torch.log(m / torch.tensor([0.75, 0.25]))).mean()
    assert logit_jsd_scores(final, q).item() == pytest.approx(float(0.5 * (kl_mp + kl_mq)), rel=1e-5)
    # squared JSD base 2: disjoint supports give exactly 1; rescaling does not matter
    assert squared_jsd(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0])).item() == pytest.approx(1.0)
    p, r = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.5, 0.25, 0.25])
    assert squared_jsd(p * 7, r).item() == pytest.approx(_np_squared_jsd(p, r), rel=1e-6)
    scores = attention_jsd_scores(p, torch.stack([p, r, torch.tensor([1.0, 0.0, 0.0])]))
    assert scores[0].item() == pytest.approx(0.0, abs=1e-12) and int(scores.argmax()) == 2


def test_sample_next_greedy_and_top_k():
    scores = torch.tensor([[0.0, 5.0, 4.9, -1.0]])
    assert sample_next(scores, do_sample=False).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(scores, do_sample=True, temperature=100.0, top_k=2, generator=g)) for _ in range(50)}
    assert draws == {1, 2}  # top-2 only, and the high temperature reaches both


# -- bad inputs: one clear line each ------------------------------------------------------------------------


def test_bad_inputs(organism, organism_questions):
    prepared = organism_questions[0]
    with pytest.raises(InterpError, match="unknown DoLa select rule 'grad'"):
        dola_generate(organism, prepared, select="grad")
    with pytest.raises(LayerIndexError, match="out of range"):
        dola_generate(organism, prepared, layers=[2, organism.n_layers])
    with pytest.raises(LayerIndexError, match="out of range"):
        dola_generate(organism, prepared, layers=[-1])
    with pytest.raises(InterpError, match="'low', 'high'"):
        dola_generate(organism, prepared, layers="middle")
    with pytest.raises(InterpError, match="temperature > 0"):
        dola_generate(organism, prepared, do_sample=True, temperature=0.0)
    with pytest.raises(InterpError, match="temperature > 0"):
        dola_generate(organism, prepared, do_sample=True, temperature=-1)
    with pytest.raises(InterpError) as caught:
        dola_generate(organism, prepared, layers=[99])
    assert "\n" not in str(caught.value)
