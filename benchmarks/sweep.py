"""Benchmark ``sweep_speedup``: the fast layer sweep (prefix reuse) against full re-runs.

``interp.analysis.sweep.masking_sweep`` with ``mode="naive"`` (one full pass per condition)
over ``mode="fast"`` (the clean pass once, each condition restarted at its first edited layer on
the rows it can change, the restarts of every layer in one layer-major pass of batched forwards) on
the organism, a few samples, every layer;
the per-layer results must be identical (``correct`` exactly, ``logprob`` to 1e-4). If the
sweep cannot be imported or the two modes disagree the result is ``null`` with the reason:
never a number for results that differ.

``scoring="generate"`` (benchmark ``generate_sweep_speedup``) times the generation-scored sweep
the same way: naive = one teacher-forced pass plus one ``generate`` per condition; fast = the
restarts (keeping the prompt rows' keys and values) and ONE batched greedy decode per question.

What each mode ran is also counted by a forward hook on every decoder layer
(``details.observed``, per question: forwards, decode steps, layer calls and layer x rows),
which includes the row-level restart (each condition recomputes only the rows it can change)
and the shared layer forwards. Beside that, :func:`layer_work` counts from the conditions the
decoder-layer work the naive and the every-row fast schedule do per question:
``layer_row_forwards`` = the sum over forwards of (decoder layers run x batch rows), and
``layer_token_rows`` = that times the sequence length (``details.sweep_speedup.layer_work``, and on
stderr beside the speedup). Counts do not wobble with the machine's load. The time ratio differs
from the count ratio by the work the count
leaves out: the naive mode also runs the vision tower, the embedding and an nnsight trace per
condition where the fast mode runs them once per question (so on small models the time ratio
is the larger), and both modes unembed and score every condition.
"""

from __future__ import annotations

import gc
import inspect
import math
import time

from .harness import log

#: what a mode does for one question: a ``(decoder layers run, batch rows)`` pair per forward
Schedule = list[tuple[int, int]]


def sweep_conditions(layers: list[int], variants) -> list[tuple[str, int]]:
    """The sweep's conditions of one question, in ``masking_sweep``'s order."""
    return [(variant, layer) for layer in layers for variant in variants]


def naive_schedule(n_layers: int, conditions) -> Schedule:
    """The baseline and every condition as its own full pass of one row."""
    return [(n_layers, 1)] * (1 + len(conditions))


def fast_schedule(n_layers: int, conditions, batch: int) -> Schedule:
    """The clean pass of every layer, then per restart layer ``l`` (a condition's layer) its
    conditions in chunks of ``batch`` rows through layers ``l .. n_layers-1``."""
    by_start: dict[int, int] = {}
    for _, layer in conditions:
        by_start[layer] = by_start.get(layer, 0) + 1
    schedule = [(n_layers, 1)]
    for start, count in by_start.items():
        schedule += [(n_layers - start, min(batch, count - i)) for i in range(0, count, batch)]
    return schedule


def schedule_work(schedule: Schedule, seq_len: int) -> dict:
    rows = sum(layers * batch for layers, batch in schedule)
    return {
        "forwards": len(schedule),
        "layer_forwards": sum(layers for layers, _ in schedule),
        "layer_row_forwards": rows,
        "layer_token_rows": rows * seq_len,
    }


def layer_work(n_layers: int, layers: list[int], variants, seq_lens: dict, batch: int) -> dict:
    """Decoder-layer work per question (``seq_lens``: item id -> teacher-forced sequence length)
    of the naive and the fast sweep, counted from the conditions, and the totals' ratios."""
    conditions = sweep_conditions(layers, variants)
    schedules = {"naive": naive_schedule(n_layers, conditions), "fast": fast_schedule(n_layers, conditions, batch)}
    per_question = [
        {
            "item": item,
            "seq_len": seq_len,
            **{mode: schedule_work(schedule, seq_len) for mode, schedule in schedules.items()},
        }
        for item, seq_len in seq_lens.items()
    ]
    totals = (
        {mode: {key: sum(q[mode][key] for q in per_question) for key in per_question[0][mode]} for mode in schedules}
        if per_question
        else {}
    )
    out = {
        "what": "decoder-layer forwards counted from the conditions: layer_row_forwards = sum over forwards of "
        "(layers run x batch rows); layer_token_rows = that x sequence length",
        "batch": batch,
        "conditions_per_question": len(conditions),
        "per_question": per_question,
        "total": totals,
    }
    for key in ("layer_row_forwards", "layer_token_rows"):
        out[f"{key}_ratio"] = totals["naive"][key] / totals["fast"][key] if totals else None
    return out


class LayerWork:
    """Counts every decoder-layer call while active (a plain PyTorch forward hook on each layer):
    ``layer_calls``, ``layer_token_rows`` (batch x rows of each call), ``forwards`` (calls of the
    last layer: one per model forward or restart), ``decode_forwards`` (of those, one-row steps)
    and ``decode_token_rows``. Independent of the engine's own ``vlm.counts``."""

    def __init__(self, vlm):
        self.layers = vlm.adapter.resolve(vlm.model, "layers")
        self.counts: dict = {}
        self.handles: list = []

    def __enter__(self):
        self.counts = {
            "forwards": 0,
            "decode_forwards": 0,
            "layer_calls": 0,
            "layer_token_rows": 0,
            "decode_token_rows": 0,
        }
        last = len(self.layers) - 1

        def hook(index):
            def record(module, args, kwargs, output):
                hidden = args[0] if args else kwargs["hidden_states"]
                batch, rows = int(hidden.shape[0]), int(hidden.shape[1])
                self.counts["layer_calls"] += 1
                self.counts["layer_token_rows"] += batch * rows
                if index == last:
                    self.counts["forwards"] += 1
                    if rows == 1:
                        self.counts["decode_forwards"] += 1
                if rows == 1:
                    self.counts["decode_token_rows"] += batch

            return record

        self.handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def measure_sweep_speedup(
    vlm,
    samples,
    *,
    variants=("single",),
    layers="all",
    tolerance: float = 1e-4,
    batch: int | None = None,
    scoring: str = "teacher",
    max_new_tokens: int = 8,
    key: str = "sweep_speedup",
) -> dict:
    """Naive per-layer re-run time / fast sweep time on ``samples`` (same outputs required),
    with the counted layer work of both modes (``details.layer_work``: from the conditions, the
    naive and the every-row fast schedules; ``details.observed``: what a forward hook on every
    decoder layer saw per question in each mode, row-level restart and decoding included).

    ``scoring="generate"`` times the generation-scored sweep (identical predictions required).
    Returns ``{key: float | None, key + "_reason": str | None, "details": ...}``.
    """
    try:
        from interp.analysis.sweep import masking_sweep
    except Exception as error:  # noqa: BLE001 - report why, do not fake a number
        return {
            key: None,
            f"{key}_reason": f"interp.analysis.sweep.masking_sweep not importable: {type(error).__name__}: {error}",
            "details": {},
        }
    if batch is None:  # the sweep's own default: the count and the run use the same value
        batch = inspect.signature(masking_sweep).parameters["batch"].default

    def sweep(items, mode, which_layers=layers):
        return masking_sweep(
            vlm,
            items,
            variants=variants,
            layers=which_layers,
            mode=mode,
            batch=batch,
            scoring=scoring,
            max_new_tokens=max_new_tokens,
            progress=False,
        )

    try:
        # warm-up: both paths once on one layer (nnsight source instrumentation, first-call costs)
        for mode in ("fast", "naive"):
            sweep(samples[:1], mode, [0])
        seconds = {"naive": [], "fast": []}
        cpu_seconds = {"naive": [], "fast": []}
        frames = {"naive": [], "fast": []}
        observed = {"naive": [], "fast": []}
        engine = {"naive": [], "fast": []}
        for i, sample in enumerate(samples):
            for mode in ("naive", "fast") if i % 2 == 0 else ("fast", "naive"):
                gc.collect()
                before = dict(vlm.counts)
                with LayerWork(vlm) as work:
                    cpu_start, start = time.process_time(), time.perf_counter()
                    frames[mode].append(sweep([sample], mode))
                    seconds[mode].append(time.perf_counter() - start)
                    cpu_seconds[mode].append(time.process_time() - cpu_start)
                observed[mode].append(dict(work.counts))
                engine[mode].append(
                    {
                        name: vlm.counts[name] - before.get(name, 0)
                        for name in vlm.counts
                        if vlm.counts[name] != before.get(name, 0)
                    }
                )
    except Exception as error:  # noqa: BLE001
        return {
            key: None,
            f"{key}_reason": f"masking_sweep(mode='naive'/'fast', scoring={scoring!r}) failed: "
            f"{type(error).__name__}: {error}",
            "details": {},
        }

    import pandas as pd

    naive, fast = pd.concat(frames["naive"]), pd.concat(frames["fast"])
    keys = ["item", "variant", "layer"]
    merged = naive.merge(fast, on=keys, suffixes=("_naive", "_fast"), how="outer", indicator=True)
    same_rows = bool((merged["_merge"] == "both").all())
    correct_same = same_rows and bool((merged["correct_naive"] == merged["correct_fast"]).all())
    logprob_diff = float((merged["logprob_naive"] - merged["logprob_fast"]).abs().max()) if same_rows else math.inf
    predictions_same = None
    if scoring == "generate":
        predictions_same = same_rows and bool((merged["prediction_naive"] == merged["prediction_fast"]).all())
    work = layer_work(
        vlm.n_layers, _layer_list(layers, vlm.n_layers), variants, teacher_forced_lengths(vlm, samples), batch
    )
    per_question = {
        mode: {name: sum(q[name] for q in observed[mode]) / max(1, len(samples)) for name in observed[mode][0]}
        for mode in observed
    }
    details = {
        "scoring": scoring,
        "n_samples": len(samples),
        "variants": list(variants),
        "n_layers": vlm.n_layers,
        "conditions_per_sample": int(len(naive) / max(1, len(samples))),
        "naive_s": seconds["naive"],
        "fast_s": seconds["fast"],
        "cpu_time_speedup": sum(cpu_seconds["naive"]) / sum(cpu_seconds["fast"]),
        "same_rows": same_rows,
        "correct_identical": correct_same,
        "predictions_identical": predictions_same,
        "logprob_max_abs_diff": logprob_diff,
        "tolerance": tolerance,
        "layer_work": work,
        "observed": {
            "what": "per question, counted by a forward hook on every decoder layer: forwards (last-layer calls), "
            "decode_forwards (one-row steps), layer_calls, layer_token_rows (batch x rows per call)",
            "per_question": per_question,
            "per_sample": observed,
            "layer_token_rows_ratio": per_question["naive"]["layer_token_rows"]
            / max(1, per_question["fast"]["layer_token_rows"]),
        },
        "engine_counts": engine,
    }
    if scoring == "generate":
        details["max_new_tokens"] = max_new_tokens
    speedup = sum(seconds["naive"]) / sum(seconds["fast"])
    total = work["total"]
    n = max(1, len(samples))
    fast_rows = per_question["fast"]["layer_token_rows"]
    log(
        f"{key} ({scoring}): measured {speedup:.2f}x wall, {details['cpu_time_speedup']:.2f}x cpu; per question "
        f"layer x rows: naive {per_question['naive']['layer_token_rows']:.0f}, fast every-row schedule "
        f"{total['fast']['layer_token_rows'] / n:.0f}, fast as run {fast_rows:.0f} "
        f"({details['observed']['layer_token_rows_ratio']:.2f}x); forwards naive "
        f"{per_question['naive']['forwards']:.0f} (decode steps {per_question['naive']['decode_forwards']:.0f}), "
        f"fast {per_question['fast']['forwards']:.0f} (decode steps {per_question['fast']['decode_forwards']:.0f})"
    )
    agree = correct_same and logprob_diff <= tolerance and predictions_same is not False
    if not agree:
        return {
            key: None,
            f"{key}_reason": f"fast and naive sweeps disagree (rows identical: {same_rows}, correct identical: "
            f"{correct_same}, predictions identical: {predictions_same}, max logprob diff "
            f"{logprob_diff:.2e})",
            "details": details,
        }
    return {key: speedup, f"{key}_reason": None, "details": details}


def _layer_list(layers, n_layers: int) -> list[int]:
    return list(range(n_layers)) if layers == "all" else list(layers)


def teacher_forced_lengths(vlm, samples) -> dict:
    """Item id -> sequence length of its teacher-forced pass (prompt, answer, end of turn):
    the rows every decoder layer sees in both modes. Tokenisation only, no forward."""
    from interp.analysis.items import as_items
    from interp.analysis.teacher import teacher_force

    lengths = {}
    for item in as_items(samples, None):
        prepared = vlm.prepare(item.image, item.question)
        lengths[item.id] = teacher_force(vlm, prepared, item.answers[0]).prepared.seq_len
    return lengths
