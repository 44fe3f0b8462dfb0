"""Accuracy of the organism (or any LLaVA-style HF model) on the synthetic benchmark."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


def generate_answers(
    model,
    processor,
    images: Sequence,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 4,
    batch: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy answers, ``batch`` prompts per ``generate`` call (the evaluation runner's batching)."""
    from tqdm.auto import tqdm

    from ...evaluation.runner import greedy_replies
    from ..adapters import adapter_for

    adapter = adapter_for(model.config)
    answers: list[str] = []
    for start in tqdm(range(0, len(questions), batch), desc="answering", unit="batch", disable=not progress):
        answers += greedy_replies(
            model,
            processor,
            adapter,
            list(images[start : start + batch]),
            list(questions[start : start + batch]),
            max_new_tokens=max_new_tokens,
        )
    return answers


def evaluate(
    model, processor, dataset, *, limit: int | None = None, blind: bool = True, progress: bool = False
) -> dict:
    """``accuracy``, per-kind accuracy, and ``blind_accuracy`` (every image replaced by a
    blank image of the same size: what the model gets without looking)."""
    from ...data.synthetic import is_correct

    n = len(dataset) if limit is None else min(limit, len(dataset))
    samples = [dataset[i] for i in range(n)]
    questions = [s.question for s in samples]
    answers = generate_answers(model, processor, [s.image for s in samples], questions, progress=progress)
    result: dict = {"n": n}
    correct = [is_correct(a, s.answer) for a, s in zip(answers, samples)]
    result["accuracy"] = sum(correct) / n
    kinds = sorted({s.kind for s in samples})
    result["per_kind"] = {
        k: sum(c for c, s in zip(correct, samples) if s.kind == k) / sum(s.kind == k for s in samples) for k in kinds
    }
    if blind:
        blank = [Image.new("RGB", s.image.size, (255, 255, 255)) for s in samples]
        blind_answers = generate_answers(model, processor, blank, questions, progress=progress)
        blind_correct = [is_correct(a, s.answer) for a, s in zip(blind_answers, samples)]
        result["blind_accuracy"] = sum(blind_correct) / n
        result["blind_per_kind"] = {
            k: sum(c for c, s in zip(blind_correct, samples) if s.kind == k) / sum(s.kind == k for s in samples)
            for k in kinds
        }
    result["examples"] = [
        {"id": s.id, "question": s.question, "answer": s.answer, "prediction": a}
        for s, a in list(zip(samples, answers))[:8]
    ]
    return result
