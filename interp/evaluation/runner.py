"""Run a model on a benchmark: greedy answers, per-sample scores, resumable JSONL.

::

    import interp
    from interp.data.tasks import load_task
    from interp.evaluation import evaluate, summarize

    vlm = interp.load("llava-hf/llava-1.5-7b-hf", dtype="float16", device_map="auto")
    task = load_task("textvqa", "/data/textvqa")
    rows = evaluate(vlm, task, out="runs/textvqa.jsonl", limit=500)   # a DataFrame
    summarize(task, rows)        # {"n": 500, "vqa_accuracy": ...}

Prompt: the task's question, then on a new line the prompt suffix (lmms-eval's
``post_prompt``; "Answer the question using a single word or phrase." for most tasks,
none for ``synthetic``, whose organism was trained without it), through the model's
chat template (``vlm.prepare``). Decoding is greedy (``do_sample=False``, one beam),
``max_new_tokens`` from the task (16; DocVQA 32; synthetic 4) unless given.

Batching: families with a fixed number of image tokens per image (``llava``, which
includes the organism) answer ``batch_size`` questions (default 8) per ``generate``
call, left-padded; other families answer one at a time. Batches are fixed slices of
the run's document list, so a resumed run pads exactly as an uninterrupted one.

Each row (JSONL line and DataFrame row) has lmms-eval's ``--log_samples`` fields
``doc_id``, ``target`` (list of ground-truth answers), ``resps`` (``[[reply]]``),
``filtered_resps`` (``[reply]``), the task's metric fields, and ``task``, ``model``,
``question``, ``prompt`` and ``seconds`` (time to read the images and generate, per
sample of its batch).

Resume: with ``out``, rows already in the file are kept and only the missing
documents run (see :mod:`interp.evaluation.results`); the model, task, split, limit,
shard, prompt suffix and ``max_new_tokens`` must be those the file was written with
(the batch size may change). ``shard=(i, n)`` runs the i-th of n interleaved slices
(1-based; :mod:`interp.evaluation.shards`).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import platform
import time
from pathlib import Path
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..data.tasks import Benchmark, Doc, Task, get_benchmark, load_task
from ..errors import InterpError
from ..inputs import build_prompt, load_image
from .results import ResultsLog
from .shards import parse_shard, shard_docs

DEFAULT_BATCH_SIZE = 8


def can_batch(vlm) -> bool:
    """Whether the family batches prompts with images (its adapter's ``batched_generation``:
    every image the same number of tokens, so a left-padded batch is the same computation
    as one prompt at a time)."""
    return vlm.adapter.batched_generation


def effective_batch_size(vlm, batch_size: int | None) -> int:
    """The batch size a run will use: 1 for families that cannot batch."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InterpError(f"batch size must be a positive integer, got {batch_size!r}")
    if not can_batch(vlm):
        return 1
    return DEFAULT_BATCH_SIZE if batch_size is None else batch_size


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("interp", "torch", "transformers", "nnsight", "datasets"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def _as_task(task: Task | str, vlm) -> Task:
    """A task, or a task name loaded (a benchmark that draws its images draws them at the model's scene size)."""
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        return load_task(task, image_size=vlm.scene_size) if get_benchmark(task).draws_images else load_task(task)
    raise InterpError(f"evaluate needs a Task (interp.data.tasks.load_task) or a task name, not {type(task).__name__}")


# -- generation ------------------------------------------------------------------------------------


def batch_inputs(processor, adapter, images: list, prompts: list[str], *, dtype=None, device=None) -> dict:
    """Left-padded processor outputs for several (image, prompt) pairs (one image each)."""
    texts = [build_prompt(processor, adapter, prompt, 1) for prompt in prompts]
    encoded = processor(
        images=[load_image(image) for image in images],
        text=texts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    inputs = {k: v for k, v in dict(encoded).items() if k != "labels"}
    if "pixel_values" in inputs and dtype is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    adapter.check_inputs(inputs)
    return {k: v.to(device) if isinstance(v, torch.Tensor) and device is not None else v for k, v in inputs.items()}


def _generate(
    model, inputs: dict, *, max_new_tokens: int, temperature: float | None = None, seed: int | None = None
) -> torch.Tensor:
    """The new token ids of one ``generate`` call: greedy, or sampled at ``temperature``
    after ``torch.manual_seed(seed)``."""
    sampling = {"do_sample": False}
    if temperature is not None:
        torch.manual_seed(0 if seed is None else seed)
        sampling = {"do_sample": True, "temperature": temperature}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, **sampling)
    return output[:, inputs["input_ids"].shape[1] :]


@torch.no_grad()
def greedy_replies(model, processor, adapter, images: list, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """Greedy replies of a plain HF model, one ``generate`` call for the lot (left-padded batch)."""
    params = next(model.parameters())
    inputs = batch_inputs(processor, adapter, images, prompts, dtype=params.dtype, device=params.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    replies = tokenizer.batch_decode(_generate(model, inputs, max_new_tokens=max_new_tokens), skip_special_tokens=True)
    return [reply.strip() for reply in replies]


@torch.no_grad()
def generate_replies(
    vlm,
    images: list,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float | None = None,
    seed: int | None = None,
) -> list[str]:
    """Greedy replies (or, with ``temperature``, sampled ones after ``torch.manual_seed(seed)``),
    one per (image, prompt); one ``generate`` call for the lot."""
    if len(prompts) == 1:
        inputs = vlm.prepare(images[0], prompts[0]).inputs
    else:
        inputs = batch_inputs(vlm.processor, vlm.adapter, images, prompts, dtype=vlm.dtype, device=vlm.device)
    return vlm.decode(_generate(vlm.model, inputs, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))


# -- the run ------------------------------------------------------------------------------------------


def first_batch_plan(vlm, task: Task, *, batch_size: int | None, prompt_suffix: str | None, max_new_tokens: int | None):
    """What one ``generate`` batch of :func:`evaluate` will hold, from the task's first question
    (:func:`interp.planner.plan_generation`); no weights needed (a config-only load will do)."""
    from ..planner import plan_generation

    doc = task.docs[0]
    suffix = task.benchmark.prompt_suffix if prompt_suffix is None else prompt_suffix
    prepared = vlm.prepare(doc.load_image(), task.prompt(doc, suffix))
    return plan_generation(
        vlm.adapter,
        vlm.config,
        vlm.dtype,
        prepared,
        batch=effective_batch_size(vlm, batch_size),
        max_new_tokens=task.benchmark.max_new_tokens if max_new_tokens is None else max_new_tokens,
        attn_implementation=vlm.attn_implementation,
    )


def _row(task: Task, vlm, doc: Doc, prompt: str, reply: str, seconds: float) -> dict:
    return {
        "doc_id": doc.doc_id,
        "target": list(doc.targets),
        "resps": [[reply]],
        "filtered_resps": [reply],
        **task.score(doc, reply),
        "task": task.name,
        "model": vlm.name,
        "question": doc.question,
        "prompt": prompt,
        "seconds": round(seconds, 6),
    }


def evaluate(
    vlm,
    task: Task | str,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | str | None = None,
    prompt_suffix: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    temperature: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Answer every document of ``task`` (its first ``limit``; shard ``(i, n)`` of them) and score it.

    Returns one row per document, in the task's order. With ``out``, rows are appended
    to that JSONL file as they are produced and a rerun continues where it stopped.
    ``temperature`` samples instead of greedy decoding (transformers' sampler, its default
    top-k 50), each batch after ``torch.manual_seed`` of a number made from ``seed`` and
    the batch's first document index, so a resumed run draws as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    task = _as_task(task, vlm)
    if getattr(vlm, "remote", False):
        raise InterpError("evaluate generates with the local model; load it without remote=True")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InterpError(f"limit must be a positive integer, got {limit!r}")
    shard = parse_shard(shard)
    docs = list(task.docs[:limit] if limit else task.docs)
    mine = shard_docs(docs, shard)
    suffix = task.benchmark.prompt_suffix if prompt_suffix is None else prompt_suffix
    max_new_tokens = task.benchmark.max_new_tokens if max_new_tokens is None else max_new_tokens
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    batch = effective_batch_size(vlm, batch_size)
    if temperature is not None and not temperature > 0:
        raise InterpError(f"sampling needs a temperature > 0, got {temperature}")
    meta = {
        "model": vlm.name,
        "task": task.name,
        "split": task.split,
        "limit": limit,
        "shard": list(shard) if shard else None,
        "prompt_suffix": suffix,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy" if temperature is None else {"sample": True, "temperature": temperature, "seed": seed},
        "batch_size": batch,
        "source": task.source,
        "data_dir": str(task.data_dir) if task.data_dir else None,
        "n_docs": len(docs),
        "doc_ids": [doc.doc_id for doc in mine],
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    log = ResultsLog(Path(out)) if out is not None else None
    try:
        done = {row["doc_id"]: row for row in (log.resume(meta) if log else [])}
        label = f"{task.name}" + (f" {shard[0]}/{shard[1]}" if shard else "")
        with tqdm(total=len(mine), initial=len(done), desc=label, unit="q", disable=not progress) as bar:
            for start in range(0, len(mine), batch):
                chunk = mine[start : start + batch]
                if all(doc.doc_id in done for doc in chunk):
                    continue
                prompts = [task.prompt(doc, suffix) for doc in chunk]
                began = time.perf_counter()
                replies = generate_replies(
                    vlm,
                    [doc.load_image() for doc in chunk],
                    prompts,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    seed=None if temperature is None else seed * 1_000_003 + start,
                )
                seconds = (time.perf_counter() - began) / len(chunk)
                for doc, prompt, reply in zip(chunk, prompts, replies):
                    if doc.doc_id in done:  # written before an interruption mid-batch
                        continue
                    row = _row(task, vlm, doc, prompt, reply, seconds)
                    if log:
                        log.append(row)
                    done[doc.doc_id] = row
                    bar.update(1)
    finally:
        if log:
            log.close()
    return pd.DataFrame([done[doc.doc_id] for doc in mine])


def summarize(task: Task | Benchmark | str, rows: pd.DataFrame | Sequence[Mapping]) -> dict:
    """``{"n": ..., **aggregate metrics}`` of a run's rows (a DataFrame or a list of dicts)."""
    if isinstance(task, Task):
        benchmark = task.benchmark
    elif isinstance(task, Benchmark):
        benchmark = task
    else:
        benchmark = get_benchmark(task)
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    return {"n": len(records), **benchmark.aggregate(records)}


__all__ = ["can_batch", "effective_batch_size", "evaluate", "generate_replies", "summarize"]
