"""Benchmark ``clean_pass_batching``: cross-question batching of the clean passes.

``interp.analysis.clean.sample_passes`` on ``n`` questions of the organism's test set (the
organism architecture; ``--quick``: a tiny LLaVA), run as it is in ``interp reproduce``
(restartable: every layer's inputs and keys/values kept for the sweep's restarts) at batch 1
(one forward per question) and at batch ``B`` (one right-padded forward per ``B`` questions,
cut back into one pass per question). Reported:

* the forwards per question of each, counted two ways: the engine's ``clean_forward`` count
  and a forward hook on the last decoder layer (:class:`benchmarks.sweep.LayerWork`), beside
  the decoder-layer token rows each ran (padding included: what batching costs);
* the wall-clock ratio batch-1 time / batch-``B`` time (``clean_pass_batch_speedup``, > 1:
  batching is faster), measured in this one run by :func:`benchmarks.harness.interleaved_times`
  (a warm-up, then rounds alternating both), with the CPU-time ratio beside it;
* the largest difference between the two passes' logits and records. The result is ``null``
  with the reason if they differ by more than the tolerance (per tensor 1e-5 times its largest
  magnitude, absolute below 1, as in ``tests/engine/test_batching.py``): never a number for passes that
  are not the same.

On a CPU batching saves little (the forward is compute-bound at batch 1 already); it is made
for accelerators, where one forward of ``B`` questions costs about as much as one.
"""

from __future__ import annotations

import math

from .harness import interleaved_times, log, ratio_summary
from .sweep import LayerWork


def _chunks(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


def measure_batching(
    vlm, samples, *, batch: int, reps: int = 3, tolerance: float = 1e-5, key: str = "clean_pass_batch_speedup"
) -> dict:
    """Batch-1 over batch-``batch`` clean passes of ``samples`` (see the module docstring); the
    passes must agree per tensor within ``tolerance * max(1, max|value|)`` (tests/engine/test_batching.py's
    float32 tolerance).
    Returns ``{key: float | None, key + "_reason": str | None, "details": ...}``."""
    try:
        from interp.analysis.clean import sample_passes
        from interp.analysis.items import as_items
        from interp.engine.batched import batch_reason
        from interp.engine.clean_pass import supports_prefix_reuse
    except Exception as error:  # noqa: BLE001 - report why, do not fake a number
        return {key: None, f"{key}_reason": f"interp's batched clean pass is not importable: {error}", "details": {}}
    reason = batch_reason(vlm)
    if reason:
        return {key: None, f"{key}_reason": f"this model does not batch: {reason}", "details": {}}
    items = as_items(samples, None)
    restartable = supports_prefix_reuse(vlm) is None

    def run(size):
        return [sp for chunk in _chunks(items, size) for sp in sample_passes(vlm, chunk, restartable=restartable)]

    counted = {}
    passes = {}
    for name, size in (("batch_1", 1), (f"batch_{batch}", batch)):
        before = vlm.counts["clean_forward"]
        with LayerWork(vlm) as work:
            passes[name] = run(size)
        counted[name] = {
            "batch_size": size,
            "clean_forwards_per_question": (vlm.counts["clean_forward"] - before) / len(items),
            "observed_forwards_per_question": work.counts["forwards"] / len(items),
            "layer_token_rows_per_question": work.counts["layer_token_rows"] / len(items),
        }
    one, many = passes["batch_1"], passes[f"batch_{batch}"]
    diff, worst = 0.0, 0.0  # the largest difference, and the largest as a share of its tensor's tolerance
    for a, b in zip(one, many, strict=True):
        pairs = [(a.clean.logits, b.clean.logits)] + [(v, b.clean.records[k]) for k, v in a.clean.records.items()]
        for x, y in pairs:
            d, scale = float((x.float() - y.float()).abs().max()), float(x.float().abs().max())
            diff, worst = max(diff, d), max(worst, d / (tolerance * max(1.0, scale)))
    del passes, one, many
    wall, cpu = interleaved_times({"batch_1": lambda: run(1), f"batch_{batch}": lambda: run(batch)}, reps)
    timing = ratio_summary(wall, "batch_1", f"batch_{batch}", cpu)
    lengths = [sp.tf.prepared.seq_len for sp in run(1)]
    details = {
        "n_questions": len(items),
        "batch_size": batch,
        "restartable": restartable,
        "seq_len_min_max": [min(lengths), max(lengths)],
        "forwards": counted,
        "timing": timing,
        "max_abs_diff": diff,
        "tolerance": f"per tensor max|batch 1 - batch B| <= {tolerance} * max(1, max|batch 1|)",
        "worst_share_of_tolerance": worst,
    }
    log(
        f"{key}: {len(items)} questions; forwards per question batch 1: "
        f"{counted['batch_1']['observed_forwards_per_question']:.3f}, batch {batch}: "
        f"{counted[f'batch_{batch}']['observed_forwards_per_question']:.3f}; wall ratio (batch 1 / batch {batch}) "
        f"{timing['ratio']:.2f}, cpu {timing['cpu_time_ratio']:.2f}; max diff {diff:.1e}"
    )
    if not math.isfinite(worst) or worst > 1:
        return {
            key: None,
            f"{key}_reason": f"batched and one-at-a-time clean passes differ by {diff:.2e} "
            f"({worst:.1f}x the tolerance)",
            "details": details,
        }
    return {key: timing["ratio"], f"{key}_reason": None, "details": details}
