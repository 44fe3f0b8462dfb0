"""Benchmark ``nnsight_overhead``: what a trace that reads every layer costs over a plain forward.

On the organism architecture (:func:`benchmarks.models.organism_vlm`) and a real organism
prompt: a trace that saves ``blocks.{l}.hook_resid_post`` of every decoder layer and the
logits, relative to the plain HF forward of an un-instrumented copy of the same model.
Diagnostics beside it: an empty trace (logits only), the instrumented model called outside any
trace, and ``RecordAttention(layers="all")`` on this short prompt.
"""

from __future__ import annotations

import torch

from .attention import record_attention_values
from .harness import Settings, interleaved_times, log, ratio_summary
from .models import organism_prompt


def trace_all_layers(vlm, prepared):
    """One nnsight trace saving every decoder layer's output and the logits."""
    import nnsight

    with torch.no_grad(), vlm.trace(prepared):
        saved = nnsight.save([])
        for layer in range(vlm.n_layers):
            saved.append(vlm.read(f"blocks.{layer}.hook_resid_post"))
        logits = vlm.nnsight.output.logits.save()
    return logits, saved


def trace_logits_only(vlm, prepared):
    with torch.no_grad(), vlm.trace(prepared):
        logits = vlm.nnsight.output.logits.save()
    return logits


def measure_nnsight_overhead(vlm, pristine, label: str, settings: Settings) -> dict:
    sample, prepared = organism_prompt(vlm)
    inputs = dict(prepared.inputs)

    def plain():
        with torch.no_grad():
            return pristine(**inputs).logits

    def instrumented_no_trace():
        with torch.no_grad():
            return vlm.model(**inputs).logits

    variants = {
        "plain_hf": plain,
        "trace_all_layers": lambda: trace_all_layers(vlm, prepared),
        "trace_logits_only": lambda: trace_logits_only(vlm, prepared),
        "instrumented_no_trace": instrumented_no_trace,
        "record_attention_all_layers": lambda: record_attention_values(vlm, prepared, keys="image"),
    }
    reference = plain()
    logits, saved = trace_all_layers(vlm, prepared)
    logits_diff = float((logits - reference).abs().max())
    log(
        f"nnsight_overhead: {label}, seq_len={prepared.seq_len}, {len(saved)} layers saved, "
        f"logits diff {logits_diff:.1e}; timing {settings.organism_reps} rounds"
    )
    times, cpu = interleaved_times(variants, settings.organism_reps)
    summary = ratio_summary(times, "trace_all_layers", "plain_hf", cpu)
    return {
        "nnsight_overhead": summary["ratio"],
        "details": {
            "model": label,
            "n_layers": vlm.n_layers,
            "prompt": {
                "question": sample.question,
                "seq_len": prepared.seq_len,
                "n_image_tokens": prepared.n_image_tokens,
            },
            "saved": f"blocks.{{0..{vlm.n_layers - 1}}}.hook_resid_post and the logits, one trace",
            "logits_max_abs_diff_vs_plain": logits_diff,
            "layers_saved": len(saved),
            "times_s": {k: [round(t, 5) for t in v] for k, v in times.items()},
            "trace_all_layers": summary,
            "trace_logits_only": ratio_summary(times, "trace_logits_only", "plain_hf", cpu),
            "instrumented_no_trace": ratio_summary(times, "instrumented_no_trace", "plain_hf", cpu),
            "record_attention_all_layers": ratio_summary(times, "record_attention_all_layers", "plain_hf", cpu),
        },
    }
