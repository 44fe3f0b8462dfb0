"""The shipped organism: loads offline through the ordinary HF path and answers from the image."""

from __future__ import annotations

import pytest
from PIL import Image

import interp
from interp.data.synthetic import SyntheticVQA, is_correct
from interp.models.organism.evaluate import generate_answers


@pytest.fixture(scope="module")
def organism():
    return interp.load("organism")


def test_loads_as_an_ordinary_llava_directory(organism):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    assert isinstance(organism.model, LlavaForConditionalGeneration)
    assert isinstance(organism.processor, LlavaProcessor)
    assert organism.n_layers == 30
    sample = SyntheticVQA("test", seed=0)[0]
    prepared = organism.prepare(sample.image, sample.question)
    assert prepared.grid.shape == (6, 6) and prepared.n_image_tokens == 36


def test_weights_id_names_the_shipped_weights(organism):
    """A reproduce run's identity names the weights, not just "organism": the model directory's
    name carries the shipped file's digest (a retrained organism is another run)."""
    import hashlib

    from interp.models.organism import organism_dir, weights_id, weights_path

    digest = hashlib.sha256(weights_path("organism").read_bytes()).hexdigest()[:12]
    assert organism.weights_id == f"organism-{digest}" == organism_dir("organism").name
    assert weights_id(organism_dir("organism").parent / "organism-frozen") is None  # no digest
    assert interp.load("tiny:llava").weights_id is None  # built in memory: nothing names its weights


def test_answers_fixed_test_samples(organism):
    data = SyntheticVQA("test", seed=0)
    samples = [data[i] for i in range(40)]
    answers = generate_answers(
        organism.model, organism.processor, [s.image for s in samples], [s.question for s in samples]
    )
    correct = [is_correct(a, s.answer) for a, s in zip(answers, samples)]
    assert sum(correct) >= 34, list(zip(answers, [s.answer for s in samples]))
    # every question kind is answered well above chance (chance: 1/6, 1/4, 1/2, 1/3, 1/2)
    for kind in {s.kind for s in samples}:
        kind_correct = [c for c, s in zip(correct, samples) if s.kind == kind]
        assert sum(kind_correct) >= 5, (kind, sum(kind_correct), len(kind_correct))


def test_blind_answers_are_near_chance(organism):
    data = SyntheticVQA("test", seed=0)
    samples = [data[i] for i in range(40)]
    blank = [Image.new("RGB", s.image.size, (255, 255, 255)) for s in samples]
    answers = generate_answers(organism.model, organism.processor, blank, [s.question for s in samples])
    blind = sum(is_correct(a, s.answer) for a, s in zip(answers, samples)) / len(samples)
    assert blind <= 0.5  # chance over the five kinds is ~0.32
