"""Benchmark ``attention``: last-token attention of every layer without eager attention.

Three variants on the same inputs and weights of the wide random LLaVA
(:func:`benchmarks.models.build_wide`):

* ``plain_sdpa``: ``model(**inputs)`` under ``torch.no_grad()``, SDPA attention, on a model
  nnsight never touched;
* ``record_attention``: ``vlm.run(prepared, RecordAttention(layers="all", query="last",
  heads="mean", keys=...))``: one nnsight trace over the SDPA model that recomputes only the
  last query row from each attention call's q/k inputs;
* ``eager_output_attentions``: the usual way, the same weights with
  ``attn_implementation="eager"`` and ``output_attentions=True``, the last row's head mean
  taken from ``out.attentions``.

``record_attention_*_ratio`` and ``eager_output_attentions_*_ratio`` are each variant relative
to ``plain_sdpa``. The run also checks that the two recorded attentions agree
(``details.attention.record_vs_eager_max_abs_diff``).

Peak memory (:mod:`benchmarks.memory`): with ``--memory subprocess`` (the default) every
variant runs in a fresh Python process that imports the same modules, builds the model (same
seed) and prepares the inputs, runs the variant once as a warm-up, and then measures
``--mem-reps`` calls; the median is reported. Per variant:

* ``peak_rss_mb``: the whole process's peak during the call (interpreter and libraries, model
  weights, inputs, activations, outputs): ``*_peak_mem_ratio`` is this peak relative to
  ``plain_sdpa``'s;
* ``baseline_rss_mb``: the resident set just before the call (after the warm-up);
* ``activation_peak_mb`` = peak - baseline: what the call itself needs at its peak;
  ``*_activation_mem_ratio`` is this relative to ``plain_sdpa``'s;
* ``weights_mb``: bytes of the model's parameters and buffers, and ``libraries_rss_mb``: the
  resident set before the model was built,

so the weights/activation split is in the output (``details.attention.memory_split``; default
config: ~250 MiB interpreter and libraries, ~650 MiB weights, ~200 MiB activations of the plain
forward, of which the 1051 x 32000 fp32 logits are 128 MiB). The whole-process ratio is what a
user's machine sees; the activation ratio isolates what the variant adds and is the sharper of
the two. ``--memory inprocess`` (``--quick``'s default) measures the variants one after another
in the timing process with the same method; its whole-process ratios are diluted by the other
variants' model copies.
"""

from __future__ import annotations

import copy
import gc
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from .harness import Settings, interleaved_times, log, ratio_summary
from .memory import MiB, calibrate_memory, fresh_process_peak, measure_peak, model_bytes, run_child
from .models import WideSpec, build_wide, wide_prepared

VARIANTS = ("plain_sdpa", "record_attention", "eager_output_attentions")
#: the script whose ``--_memory-child VARIANT`` runs :func:`memory_child`
CHILD_SCRIPT = Path(__file__).resolve().with_name("run.py")


def record_attention_values(vlm, prepared, keys: str = "all") -> torch.Tensor:
    """The benchmark's measured call: last-token attention of every layer, head mean,
    via ``RecordAttention`` in one trace. ``(layers, batch, keys)``."""
    from interp import RecordAttention

    result = vlm.run(prepared, RecordAttention(layers="all", query="last", heads="mean", keys=keys))
    return result.stack("attention")[:, :, -1]


def eager_attention_values(eager_model, prepared, keys: str = "all") -> torch.Tensor:
    """The usual way: ``output_attentions=True`` on an eager model, last row, head mean.
    ``(layers, batch, keys)``."""
    with torch.no_grad():
        out = eager_model(**prepared.inputs, output_attentions=True)
        values = torch.stack([a[:, :, -1].mean(dim=1) for a in out.attentions])
    if keys == "image":
        values = values[..., prepared.image_positions]
    return values


def plain_forward(model, prepared) -> torch.Tensor:
    with torch.no_grad():
        return model(**prepared.inputs).logits[:, -1]


def wide_variants(spec: WideSpec, keys: str, which=VARIANTS):
    """``{variant: callable}`` over one shared set of weights (deep copies of one seeded build):
    an untouched SDPA model, an eager twin, and an nnsight-wrapped twin."""
    import interp

    base, processor = build_wide(spec, "sdpa")
    prepared = wide_prepared(base, processor, spec)
    out: dict[str, Callable] = {}
    keep: dict[str, Any] = {"prepared": prepared, "processor": processor}
    if "eager_output_attentions" in which:
        eager = copy.deepcopy(base)
        eager.set_attn_implementation("eager")
        keep["eager"] = eager
        out["eager_output_attentions"] = lambda: eager_attention_values(eager, prepared, keys)
    if "record_attention" in which:
        wrapped = copy.deepcopy(base) if "plain_sdpa" in which else base
        vlm = interp.load(wrapped, processor)
        keep["vlm"] = vlm
        out["record_attention"] = lambda: record_attention_values(vlm, prepared, keys)
    if "plain_sdpa" in which:
        keep["plain"] = base
        out["plain_sdpa"] = lambda: plain_forward(base, prepared)
    else:
        keep.setdefault("plain", base)
    return {name: out[name] for name in which}, keep


def memory_child(variant: str, spec: WideSpec, keys: str, threads: int, reps: int) -> dict:
    """In a fresh process: build, warm up, measure one variant (``run.py --_memory-child``)."""
    torch.set_num_threads(threads)
    import nnsight  # noqa: F401 - every child imports the same modules
    import transformers  # noqa: F401

    import interp
    from interp.interventions import RecordAttention  # noqa: F401

    if variant not in VARIANTS:
        raise ValueError(variant)

    def build():
        attn = "eager" if variant == "eager_output_attentions" else "sdpa"
        model, processor = build_wide(spec, attn)
        prepared = wide_prepared(model, processor, spec)
        if variant == "plain_sdpa":
            fn = lambda: plain_forward(model, prepared)  # noqa: E731
        elif variant == "eager_output_attentions":
            fn = lambda: eager_attention_values(model, prepared, keys)  # noqa: E731
        else:
            vlm = interp.load(model, processor)
            fn = lambda: record_attention_values(vlm, prepared, keys)  # noqa: E731
        return fn, model_bytes(model)

    return {"variant": variant, **fresh_process_peak(build, reps)}


def run_memory_child(variant: str, spec: WideSpec, settings: Settings) -> dict:
    args = [
        "--_memory-child",
        variant,
        "--_spec",
        json.dumps(asdict(spec)),
        "--keys",
        settings.keys,
        "--threads",
        str(settings.threads),
        "--mem-reps",
        str(settings.mem_reps),
    ]
    return run_child(CHILD_SCRIPT, args, settings.threads, variant)


def measure_attention(spec: WideSpec, settings: Settings) -> dict:
    """Times (one process, interleaved) and peak memories of the three attention variants."""
    log(f"attention: building the wide model {asdict(spec)}")
    variants, keep = wide_variants(spec, settings.keys)
    prepared = keep["prepared"]
    plain = keep["plain"]
    # correctness of what is measured: RecordAttention against eager output_attentions
    recorded, eager = variants["record_attention"](), variants["eager_output_attentions"]()
    diff = float((recorded.float() - eager.float()).abs().max())
    log(
        f"attention: seq_len={prepared.seq_len}, record vs eager max abs diff {diff:.2e}; timing {settings.reps} rounds"
    )
    times, cpu = interleaved_times(variants, settings.reps)
    record_time = ratio_summary(times, "record_attention", "plain_sdpa", cpu)
    eager_time = ratio_summary(times, "eager_output_attentions", "plain_sdpa", cpu)
    text = plain.config.text_config
    config = {
        **asdict(spec),
        "seq_len": prepared.seq_len,
        "n_image_tokens": prepared.n_image_tokens,
        "n_text_tokens": prepared.seq_len - prepared.n_image_tokens,
        "record_attention_call": f"RecordAttention(layers='all', query='last', heads='mean', keys='{settings.keys}')",
        "n_params_m": round(sum(p.numel() for p in plain.parameters()) / 1e6, 2),
        "dtype": str(next(plain.parameters()).dtype),
        "eager_attention_weights_mb_all_layers": text.num_hidden_layers
        * text.num_attention_heads
        * prepared.seq_len**2
        * 4
        / MiB,
    }

    memory: dict[str, dict] = {}
    if settings.memory == "subprocess":
        for name in variants:
            log(f"attention: peak memory of {name} in a fresh process")
            memory[name] = run_memory_child(name, spec, settings)
    else:
        weights = model_bytes(plain) / MiB
        calibration = calibrate_memory()
        for name, fn in variants.items():
            log(f"attention: peak memory of {name} in this process")
            memory[name] = {
                "variant": name,
                "weights_mb": weights,
                "calibration": calibration,
                **measure_peak(fn, settings.mem_reps),
                "memory_method": "VmHWM after clear_refs reset, in the timing process "
                "(whole-process ratios diluted by the other variants' model copies)",
            }
    del variants, keep
    gc.collect()

    base = memory["plain_sdpa"]

    def mem_ratios(name):
        m = memory[name]
        act = m["activation_peak_mb"] / base["activation_peak_mb"] if base["activation_peak_mb"] > 0 else None
        return m["peak_rss_mb"] / base["peak_rss_mb"], act

    record_peak, record_act = mem_ratios("record_attention")
    eager_peak, eager_act = mem_ratios("eager_output_attentions")
    split = {
        "weights_mb": base["weights_mb"],
        "libraries_rss_mb": base.get("libraries_rss_mb"),
        "plain_activation_peak_mb": base["activation_peak_mb"],
        "plain_peak_rss_mb": base["peak_rss_mb"],
        "activation_share_of_plain_peak": base["activation_peak_mb"] / base["peak_rss_mb"],
        "weights_share_of_plain_peak": base["weights_mb"] / base["peak_rss_mb"],
    }
    return {
        "record_attention_time_ratio": record_time["ratio"],
        "record_attention_peak_mem_ratio": record_peak,
        "record_attention_activation_mem_ratio": record_act,
        "eager_output_attentions_time_ratio": eager_time["ratio"],
        "eager_output_attentions_peak_mem_ratio": eager_peak,
        "eager_output_attentions_activation_mem_ratio": eager_act,
        "details": {
            "config": config,
            "record_vs_eager_max_abs_diff": diff,
            "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "time_record_attention": record_time,
            "time_eager_output_attentions": eager_time,
            "memory": memory,
            "memory_split": split,
        },
    }
