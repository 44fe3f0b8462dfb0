"""Performance benchmarks for issue 5: attention logging without eager attention, nnsight
overhead, fast layer sweeps.

Run from the repository root::

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--json-out FILE]

and it prints ONE JSON object (progress goes to stderr). Benchmarks (``--only``):

``attention``
    A random LLaVA-1.5-architecture model built offline from config objects (CLIP tower,
    Llama LM; default 8 layers x hidden 1024 x 16 heads, vocab 32000, a 24x24 patch grid
    = 576 image tokens plus ~470 text tokens: 1050 tokens). Three variants on the same
    inputs and weights:

    * ``plain_sdpa``: ``model(**inputs)`` under ``torch.no_grad()``, SDPA attention, on a
      model nnsight never touched;
    * ``record_attention``: ``vlm.run(prepared, RecordAttention(layers="all",
      query="last", heads="mean", keys=...))``: one nnsight trace over the SDPA model
      that recomputes only the last query row from each attention call's q/k inputs;
    * ``eager_output_attentions``: the usual way, the same weights with
      ``attn_implementation="eager"`` and ``output_attentions=True``, the last row's head
      mean taken from ``out.attentions``.

    ``record_attention_*_ratio`` and ``eager_output_attentions_*_ratio`` are each variant
    relative to ``plain_sdpa``. The run also checks that the two recorded attentions
    agree (``details.attention.record_vs_eager_max_abs_diff``).

``nnsight_overhead``
    The organism architecture (``build_organism(TowerSpec(), seed=0)``: the real
    SmolLM2-135M LM and a small CLIP tower, untrained vision weights: fine for timing) on
    a real organism prompt (``SyntheticVQA('test', seed=0)[0]`` through ``vlm.prepare``):
    a trace that saves ``blocks.{l}.hook_resid_post`` of every decoder layer and the
    logits, relative to the plain HF forward of an un-instrumented copy of the same model.
    Diagnostics beside it: an empty trace (logits only), the instrumented model called
    outside any trace, and ``RecordAttention(layers="all")`` on this short prompt.

``sweep_speedup``
    ``interp.analysis.sweep.masking_sweep`` with ``mode="naive"`` (one full pass per
    condition) over ``mode="fast"`` (prefix reuse) on the organism, a few samples, every
    layer; the per-layer results must be identical (``correct`` exactly, ``logprob`` to
    1e-4). If the sweep cannot be imported the result is ``null`` with the reason.

``--quick`` runs the same code on tiny configs in seconds (the smoke test
``tests/test_benchmarks.py`` uses it); its numbers say nothing about performance.

Timing
------
``torch.set_num_threads(--threads)`` (default 1: on a shared 2-core machine a second
OpenMP thread that the scheduler parks makes every small op wait a full time slice; we
measured the organism's forward at 2.8 s with 2 threads and 0.2 s with 1 while another
job used both cores). Every variant runs once as a warm-up, then ``--reps`` rounds; each
round runs every variant once, in an order rotated from round to round, with
``gc.collect()`` before each call. A ratio is the median over rounds of the within-round
ratio (variant time / baseline time of the same round), so slow drifts of the
background load cancel; the per-round ratios, the medians of the raw times and the same
median ratio of process CPU times (``cpu_time_ratio``: with one torch thread, what the
call itself computed, less disturbed by other jobs) are reported beside it.

Peak memory
-----------
torch's CPU allocator is invisible to ``tracemalloc``, so we read the kernel's view of
the process: ``VmHWM`` (peak resident set) from ``/proc/self/status``, reset to the
current RSS just before the measured call by writing ``5`` to ``/proc/self/clear_refs``.
For the reset to mean anything, freed memory must leave the process: we set glibc's
``M_MMAP_THRESHOLD`` to 64 KiB (``mallopt``, which also stops glibc from raising it
dynamically) so every tensor buffer of 64 KiB or more is its own ``mmap`` and is
returned on free, and call ``malloc_trim(0)`` before each measurement. With the default
``--memory subprocess`` every variant runs in a fresh Python process that imports the
same modules, builds the model (same seed) and prepares the inputs, runs the variant
once as a warm-up, and then measures ``--mem-reps`` calls; the median is reported. Per
variant we report

* ``peak_rss_mb``: the whole process's peak during the call (interpreter and libraries,
  model weights, inputs, activations, outputs): the issue's ``*_peak_mem_ratio`` is this
  peak relative to ``plain_sdpa``'s;
* ``baseline_rss_mb``: the resident set just before the call (after the warm-up);
* ``activation_peak_mb`` = peak - baseline: what the call itself needs at its peak;
  ``*_activation_mem_ratio`` is this relative to ``plain_sdpa``'s;
* ``weights_mb``: bytes of the model's parameters and buffers, and
  ``libraries_rss_mb``: the resident set before the model was built,

so the weights/activation split is in the output (``details.attention.memory_split``;
default config: ~250 MiB interpreter and libraries, ~650 MiB weights, ~200 MiB
activations of the plain forward, of which the 1051 x 32000 fp32 logits are 128 MiB).
The whole-process ratio is what a user's machine sees; the activation ratio isolates
what the variant adds and is the sharper of the two. ``calibration`` applies the same
method to a plain 64 MiB allocation in the same process (it reads 64.0).
``--memory inprocess`` (``--quick``'s default) measures the variants one after another in
the timing process with the same method; its whole-process ratios are diluted by the
other variants' model copies.
Without ``/proc/self/clear_refs`` the children fall back to ``ru_maxrss`` of a process
that runs the variant once without a warm-up (stated in ``memory_method``).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*requires torchvision.*")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402

BENCHMARKS = ("attention", "nnsight_overhead", "sweep_speedup")
TARGETS = {
    "record_attention_peak_mem_ratio": 1.25,
    "record_attention_time_ratio": 1.3,
    "nnsight_overhead": 1.1,
}
CHILD_MARKER = "BENCH_CHILD_RESULT "
MiB = 1024 * 1024


_T0 = time.perf_counter()


def log(*parts) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s]", *parts, file=sys.stderr, flush=True)


# -- configurations ------------------------------------------------------------------


@dataclass(frozen=True)
class WideSpec:
    """The random LLaVA-1.5-architecture model of the attention benchmark.

    ``text_chars`` question characters (the byte-level tokenizer makes one token of each)
    follow ``(image_size / patch_size)**2`` image tokens.
    """

    hidden: int = 1024
    layers: int = 8
    heads: int = 16
    kv_heads: int = 16
    intermediate: int = 2816
    vocab: int = 32000
    image_size: int = 96
    patch_size: int = 4
    vision_hidden: int = 128
    vision_layers: int = 1
    text_chars: int = 450
    seed: int = 0


FULL_WIDE = WideSpec()
QUICK_WIDE = WideSpec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, image_size=32,
                      patch_size=8, vision_hidden=32, text_chars=48)


@dataclass(frozen=True)
class Settings:
    quick: bool = False
    threads: int = 1
    reps: int = 5
    mem_reps: int = 2
    memory: str = "subprocess"  # or "inprocess"
    keys: str = "all"
    organism_reps: int = 20
    sweep_samples: int = 2
    sweep_variants: tuple = ("single", "window", "cumulative", "knockout_last", "knockout_question")

    @classmethod
    def for_mode(cls, quick: bool, **overrides) -> "Settings":
        base = cls(quick=True, reps=3, mem_reps=1, memory="inprocess", organism_reps=3, sweep_samples=1,
                   sweep_variants=("single", "knockout_last")) if quick else cls()
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# -- the wide random LLaVA -----------------------------------------------------------


def wide_processor(spec: WideSpec):
    from transformers import CLIPImageProcessor, LlavaProcessor

    from interp.models.tiny.tokenizer import byte_tokenizer, chat_template

    tokenizer = byte_tokenizer(image_token="<image>", template=chat_template("<image>\n"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tokenizer.chat_template)


def build_wide(spec: WideSpec, attn_implementation: str = "sdpa"):
    """``(model, processor)``: a seeded random LLaVA-1.5-architecture model of ``spec``'s size,
    built from config objects through the public HF classes (as ``interp.models.tiny`` does)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = wide_processor(spec)
    tokenizer = processor.tokenizer
    if len(tokenizer) > spec.vocab:
        raise ValueError(f"vocab {spec.vocab} is smaller than the tokenizer ({len(tokenizer)})")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                                       num_hidden_layers=spec.vision_layers, num_attention_heads=2,
                                       image_size=spec.image_size, patch_size=spec.patch_size),
        text_config=LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                                num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                                num_key_value_heads=spec.kv_heads, max_position_embeddings=4096,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model, processor


def wide_image(spec: WideSpec):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    return Image.fromarray((rng.uniform(0, 1, (spec.image_size, spec.image_size, 3)) * 255).astype("uint8"))


def wide_question(spec: WideSpec) -> str:
    text = "Describe every object in the picture, its colour, its shape and where it is. "
    return (text * (spec.text_chars // len(text) + 1))[: spec.text_chars].strip() + "?"


def wide_prepared(model, processor, spec: WideSpec):
    """The benchmark prompt through interp's own input path (image positions, grid)."""
    from interp.inputs import prepare
    from interp.models.adapters import adapter_for

    return prepare(processor, adapter_for(model.config), model.config, wide_image(spec), wide_question(spec),
                   dtype=next(model.parameters()).dtype)


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


def wide_variants(spec: WideSpec, keys: str, which=("plain_sdpa", "record_attention", "eager_output_attentions")):
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


# -- timing --------------------------------------------------------------------------


def interleaved_times(variants: dict[str, Callable], reps: int, warmup: int = 1):
    """``(wall, cpu)``: seconds per call, wall-clock and this process's CPU time, after
    ``warmup`` untimed calls each, over ``reps`` rounds of one call per variant, the order
    rotated every round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            cpu_start, start = time.process_time(), time.perf_counter()
            result = variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            del result
    return wall, cpu


def ratio_summary(times: dict[str, list[float]], num: str, den: str, cpu: dict | None = None) -> dict:
    """The median over rounds of the within-round wall-clock ratio, and beside it the ratio of
    the medians and (with ``cpu``) the same median ratio of process CPU times, which the
    background load disturbs less when torch runs one thread."""
    per_round = [a / b for a, b in zip(times[num], times[den])]
    out = {
        "ratio": statistics.median(per_round),
        "per_round": [round(x, 4) for x in per_round],
        "ratio_of_medians": statistics.median(times[num]) / statistics.median(times[den]),
        f"{num}_median_s": statistics.median(times[num]),
        f"{den}_median_s": statistics.median(times[den]),
    }
    if cpu is not None:
        out["cpu_time_ratio"] = statistics.median(a / b for a, b in zip(cpu[num], cpu[den]))
        out[f"{num}_median_cpu_s"] = statistics.median(cpu[num])
        out[f"{den}_median_cpu_s"] = statistics.median(cpu[den])
    return out


# -- peak memory ---------------------------------------------------------------------

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def release_freed_memory_to_os() -> bool:
    """glibc: buffers >= 64 KiB get their own mmap (returned on free); trim the heap now."""
    libc = _libc()
    if not libc:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)
    return True


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def can_reset_peak() -> bool:
    return os.path.exists("/proc/self/status") and reset_peak()


def model_bytes(model) -> int:
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def measure_peak(fn: Callable, reps: int) -> dict:
    """Peak RSS during ``fn()`` (VmHWM after a reset), ``reps`` times; call after a warm-up."""
    peaks, baselines = [], []
    for _ in range(reps):
        gc.collect()
        release_freed_memory_to_os()
        baseline = rss_bytes()
        if not reset_peak():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        result = fn()
        peaks.append(_status_kb("VmHWM") * 1024)
        baselines.append(baseline)
        del result
    peak, baseline = statistics.median(peaks), statistics.median(baselines)
    return {
        "peak_rss_mb": peak / MiB,
        "baseline_rss_mb": baseline / MiB,
        "activation_peak_mb": (peak - baseline) / MiB,
        "peaks_mb": [round(p / MiB, 1) for p in peaks],
        "activation_peaks_mb": [round((p - b) / MiB, 1) for p, b in zip(peaks, baselines)],
    }


def calibrate_memory() -> dict:
    """The method on a known size: the measured peak of allocating 64 MiB (should read ~64)."""
    measured = measure_peak(lambda: torch.ones(16 * MiB), 1)["activation_peak_mb"]
    return {"allocated_mb": 64.0, "measured_mb": measured}


def memory_child(variant: str, spec: WideSpec, keys: str, threads: int, reps: int) -> dict:
    """In a fresh process: build, warm up, measure one variant (``--_memory-child``)."""
    torch.set_num_threads(threads)
    import nnsight  # noqa: F401 - every child imports the same modules
    import transformers  # noqa: F401

    import interp  # noqa: F401
    from interp.interventions import RecordAttention  # noqa: F401

    use_hwm = can_reset_peak()
    release_freed_memory_to_os()
    gc.collect()
    libraries = rss_bytes() if os.path.exists("/proc/self/status") else 0
    attn = "eager" if variant == "eager_output_attentions" else "sdpa"
    model, processor = build_wide(spec, attn)
    prepared = wide_prepared(model, processor, spec)
    if variant == "plain_sdpa":
        fn = lambda: plain_forward(model, prepared)  # noqa: E731
    elif variant == "eager_output_attentions":
        fn = lambda: eager_attention_values(model, prepared, keys)  # noqa: E731
    elif variant == "record_attention":
        vlm = interp.load(model, processor)
        fn = lambda: record_attention_values(vlm, prepared, keys)  # noqa: E731
    else:
        raise ValueError(variant)
    result = {"variant": variant, "weights_mb": model_bytes(model) / MiB, "libraries_rss_mb": libraries / MiB}
    if use_hwm:
        fn()  # warm-up: lazy initialisation, nnsight's source instrumentation
        result["calibration"] = calibrate_memory()
        result.update(measure_peak(fn, reps))
        result["memory_method"] = "VmHWM after clear_refs reset, fresh process, after one warm-up call"
    else:  # no reset: one call in a process that has not run it before
        import resource

        gc.collect()
        release_freed_memory_to_os()
        baseline = rss_bytes() if os.path.exists("/proc/self/status") else 0
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update({"peak_rss_mb": peak / MiB, "baseline_rss_mb": baseline / MiB,
                       "activation_peak_mb": (peak - baseline) / MiB,
                       "memory_method": "ru_maxrss of a fresh process, one call, no warm-up"})
    return result


def run_memory_child(variant: str, spec: WideSpec, settings: Settings) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024), OMP_NUM_THREADS=str(settings.threads),
               MKL_NUM_THREADS=str(settings.threads))
    command = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", variant,
               "--_spec", json.dumps(asdict(spec)), "--keys", settings.keys, "--threads", str(settings.threads),
               "--mem-reps", str(settings.mem_reps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(REPO))
    lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


# -- benchmark: attention ------------------------------------------------------------


def measure_attention(spec: WideSpec, settings: Settings) -> dict:
    """Times (one process, interleaved) and peak memories of the three attention variants."""
    log(f"attention: building the wide model {asdict(spec)}")
    variants, keep = wide_variants(spec, settings.keys)
    prepared = keep["prepared"]
    plain = keep["plain"]
    # correctness of what is measured: RecordAttention against eager output_attentions
    recorded, eager = variants["record_attention"](), variants["eager_output_attentions"]()
    diff = float((recorded.float() - eager.float()).abs().max())
    log(f"attention: seq_len={prepared.seq_len}, record vs eager max abs diff {diff:.2e}; timing {settings.reps} rounds")
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
        "eager_attention_weights_mb_all_layers": text.num_hidden_layers * text.num_attention_heads
        * prepared.seq_len ** 2 * 4 / MiB,
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
            memory[name] = {"variant": name, "weights_mb": weights, "calibration": calibration,
                            **measure_peak(fn, settings.mem_reps),
                            "memory_method": "VmHWM after clear_refs reset, in the timing process "
                                             "(whole-process ratios diluted by the other variants' model copies)"}
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


# -- benchmark: nnsight overhead on the organism -------------------------------------


def organism_vlm(quick: bool):
    """``(vlm, pristine_model, label)``: the organism architecture (quick: a tiny LLaVA), wrapped
    for interp, and an un-instrumented deep copy of the same weights for plain forwards."""
    import interp

    if quick:
        from interp.models.tiny import build_tiny

        model, processor = build_tiny("llava", attn_implementation="sdpa")
        label = "tiny:llava (quick stand-in for the organism)"
    else:
        from interp.models.organism.build import TowerSpec, build_organism

        model, processor = build_organism(TowerSpec(), seed=0)
        label = "organism architecture: build_organism(TowerSpec(), seed=0) (SmolLM2-135M LM, untrained tower)"
    pristine = copy.deepcopy(model)
    return interp.load(model, processor), pristine, label


def organism_prompt(vlm, index: int = 0):
    from interp.data.synthetic import SyntheticVQA

    sample = SyntheticVQA("test", seed=0)[index]
    return sample, vlm.prepare(sample.image, sample.question)


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
    log(f"nnsight_overhead: {label}, seq_len={prepared.seq_len}, {len(saved)} layers saved, "
        f"logits diff {logits_diff:.1e}; timing {settings.organism_reps} rounds")
    times, cpu = interleaved_times(variants, settings.organism_reps)
    summary = ratio_summary(times, "trace_all_layers", "plain_hf", cpu)
    return {
        "nnsight_overhead": summary["ratio"],
        "details": {
            "model": label,
            "n_layers": vlm.n_layers,
            "prompt": {"question": sample.question, "seq_len": prepared.seq_len,
                       "n_image_tokens": prepared.n_image_tokens},
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


# -- benchmark: sweep speedup --------------------------------------------------------
# ======================= HOOK: sweep_speedup ========================================
# The slot for interp.analysis.sweep (owned by whoever writes the sweep). It times
# masking_sweep(mode="naive") against masking_sweep(mode="fast") on the same samples and
# checks the per-layer results agree; it never reports a number for results that differ
# or for a sweep it could not import.


def measure_sweep_speedup(vlm, samples, *, variants=("single",), layers="all", tolerance: float = 1e-4) -> dict:
    """Naive per-layer re-run time / fast sweep time on ``samples`` (same outputs required).

    Returns ``{"sweep_speedup": float | None, "sweep_speedup_reason": str | None, "details": ...}``.
    """
    try:
        from interp.analysis.sweep import masking_sweep
    except Exception as error:  # noqa: BLE001 - report why, do not fake a number
        return {"sweep_speedup": None,
                "sweep_speedup_reason": f"interp.analysis.sweep.masking_sweep not importable: "
                                        f"{type(error).__name__}: {error}",
                "details": {}}

    def sweep(items, mode, which_layers=layers):
        return masking_sweep(vlm, items, variants=variants, layers=which_layers, mode=mode, progress=False)

    try:
        # warm-up: both paths once on one layer (nnsight source instrumentation, first-call costs)
        for mode in ("fast", "naive"):
            sweep(samples[:1], mode, [0])
        seconds = {"naive": [], "fast": []}
        cpu_seconds = {"naive": [], "fast": []}
        frames = {"naive": [], "fast": []}
        for i, sample in enumerate(samples):
            for mode in (("naive", "fast") if i % 2 == 0 else ("fast", "naive")):
                gc.collect()
                cpu_start, start = time.process_time(), time.perf_counter()
                frames[mode].append(sweep([sample], mode))
                seconds[mode].append(time.perf_counter() - start)
                cpu_seconds[mode].append(time.process_time() - cpu_start)
    except Exception as error:  # noqa: BLE001
        return {"sweep_speedup": None,
                "sweep_speedup_reason": f"masking_sweep(mode='naive'/'fast') failed: {type(error).__name__}: {error}",
                "details": {}}

    import pandas as pd

    naive, fast = pd.concat(frames["naive"]), pd.concat(frames["fast"])
    keys = ["item", "variant", "layer"]
    merged = naive.merge(fast, on=keys, suffixes=("_naive", "_fast"), how="outer", indicator=True)
    same_rows = bool((merged["_merge"] == "both").all())
    correct_same = same_rows and bool((merged["correct_naive"] == merged["correct_fast"]).all())
    logprob_diff = float((merged["logprob_naive"] - merged["logprob_fast"]).abs().max()) if same_rows else math.inf
    details = {
        "n_samples": len(samples),
        "variants": list(variants),
        "n_layers": vlm.n_layers,
        "conditions_per_sample": int(len(naive) / max(1, len(samples))),
        "naive_s": seconds["naive"],
        "fast_s": seconds["fast"],
        "cpu_time_speedup": sum(cpu_seconds["naive"]) / sum(cpu_seconds["fast"]),
        "same_rows": same_rows,
        "correct_identical": correct_same,
        "logprob_max_abs_diff": logprob_diff,
        "tolerance": tolerance,
    }
    if not (correct_same and logprob_diff <= tolerance):
        return {"sweep_speedup": None,
                "sweep_speedup_reason": f"fast and naive sweeps disagree (rows identical: {same_rows}, "
                                        f"correct identical: {correct_same}, max logprob diff {logprob_diff:.2e})",
                "details": details}
    return {"sweep_speedup": sum(seconds["naive"]) / sum(seconds["fast"]), "sweep_speedup_reason": None,
            "details": details}

# ===================== end HOOK: sweep_speedup ======================================


# -- the run -------------------------------------------------------------------------


def machine_info(settings: Settings) -> dict:
    import nnsight
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                             None)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "git_commit": commit,
        "torch_threads": settings.threads,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def run_benchmarks(settings: Settings, only=BENCHMARKS) -> dict:
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "interp issue 5: fast layer sweeps and attention logging without eager attention",
        "quick": settings.quick,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "machine": machine_info(settings),
        "targets": {k: f"<= {v}" for k, v in TARGETS.items()},
        "method": {
            "time": "median over rounds of the within-round ratio; rounds interleave all variants in rotated "
                    "order after one warm-up call each; torch.set_num_threads fixed",
            "peak_mem_ratio": "whole-process peak RSS during the call (VmHWM reset via /proc/self/clear_refs; glibc "
                              "mmap threshold 64 KiB so freed buffers leave the process) relative to the plain SDPA "
                              "forward's",
            "activation_mem_ratio": "(peak RSS - RSS just before the call) relative to the plain SDPA forward's",
        },
    }
    details: dict[str, Any] = {}

    if "attention" in only:
        start = time.perf_counter()
        attention = measure_attention(QUICK_WIDE if settings.quick else FULL_WIDE, settings)
        details["attention"] = {"seconds": time.perf_counter() - start, **attention.pop("details")}
        result.update(attention)

    if "nnsight_overhead" in only or "sweep_speedup" in only:
        log("organism: building")
        vlm, pristine, label = organism_vlm(settings.quick)
        if "nnsight_overhead" in only:
            start = time.perf_counter()
            overhead = measure_nnsight_overhead(vlm, pristine, label, settings)
            details["nnsight_overhead"] = {"seconds": time.perf_counter() - start, **overhead.pop("details")}
            result.update(overhead)
        del pristine
        gc.collect()
        if "sweep_speedup" in only:
            from interp.data.synthetic import SyntheticVQA

            data = SyntheticVQA("test", seed=0)
            samples = [data[i] for i in range(settings.sweep_samples)]
            log(f"sweep_speedup: {len(samples)} samples x {len(settings.sweep_variants)} variants x "
                f"{vlm.n_layers} layers, naive vs fast")
            start = time.perf_counter()
            sweep = measure_sweep_speedup(vlm, samples, variants=settings.sweep_variants)
            details["sweep_speedup"] = {"seconds": time.perf_counter() - start, "model": label, **sweep.pop("details")}
            result.update(sweep)

    result["meets_targets"] = {k: (result[k] <= v if _finite(result.get(k)) else None)
                               for k, v in TARGETS.items() if k in result}
    result["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["total_seconds"] = time.perf_counter() - started
    result["details"] = details
    return result


def _clean(value):
    """JSON-ready: non-finite floats become null, tuples lists, tensors lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        return _clean(float(value))
    except (TypeError, ValueError):
        return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs, seconds; a smoke test, not a measurement")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None, metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds of the attention benchmark")
    parser.add_argument("--organism-reps", type=int, default=None, help="timed rounds of the nnsight benchmark")
    parser.add_argument("--mem-reps", type=int, default=None, help="measured calls per memory process")
    parser.add_argument("--memory", choices=("subprocess", "inprocess"), default=None,
                        help="fresh process per variant (default) or in the timing process (--quick's default)")
    parser.add_argument("--keys", choices=("all", "image"), default=None, help="RecordAttention keys (default all)")
    parser.add_argument("--sweep-samples", type=int, default=None)
    parser.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", dest="spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        spec = WideSpec(**{k: v for k, v in json.loads(args.spec).items() if k in {f.name for f in fields(WideSpec)}})
        out = memory_child(args.memory_child, spec, args.keys or "all", args.threads or 1, args.mem_reps or 2)
        print(CHILD_MARKER + json.dumps(out), flush=True)
        return 0

    settings = Settings.for_mode(args.quick, threads=args.threads, reps=args.reps, mem_reps=args.mem_reps,
                                 memory=args.memory, keys=args.keys, organism_reps=args.organism_reps,
                                 sweep_samples=args.sweep_samples)
    if settings.memory == "inprocess" and not can_reset_peak():
        settings = replace(settings, memory="subprocess")  # its children fall back to ru_maxrss
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = " ".join([python, "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, **run_benchmarks(settings, tuple(args.only or BENCHMARKS))}
    text = json.dumps(_clean(result), indent=2, allow_nan=False)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
