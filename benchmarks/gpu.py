"""The real checkpoints' shapes on a GPU: time, peak memory and the planner's estimate, in one command.

Run on a machine with a CUDA GPU, from the repository root (about 10 minutes on one H100)::

    .venv/bin/python -m benchmarks.gpu --json-out benchmarks/results/gpu.json

For each of LLaVA-1.5-7B, LLaVA-NeXT-Mistral-7B, Qwen2-VL-7B and Qwen2.5-VL-7B at their real shapes
and full depth (:mod:`interp.models.tiny.real_shapes`; random weights, bfloat16, nothing downloaded),
one 640x480 question:

* ``forward_s`` and ``record_attention_ratio``: a plain forward, and ``RecordAttention`` over every
  layer (SDPA kept) relative to it (median of 3 after a warm-up);
* ``sweep_teacher`` / ``sweep_generate``: one question's masking sweep (5 variants x every layer),
  teacher-scored and generation-scored (decode slices ``auto``): seconds, peak GPU memory, and the
  planner's estimate of that peak (:mod:`interp.planner`) with their ratio;
* ``patching``: one counterfactual pair (two random images), every layer x position group;
* ``projected_1000_questions_h``: the clean pass and sweep of 1,000 questions at these rates (the
  TextVQA run of the README, one GPU).

``--quick`` runs the same code on the CPU with 2 decoder layers and 2 vision blocks of LLaVA-1.5 in
float32 (a smoke test; its times say nothing about a GPU); there the sweeps' peak is the process's
resident memory above what it held before the call, against the planner's estimate less the
weights. The device is named in the output.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch

from benchmarks.harness import emit

CHECKPOINTS = (
    "llava-hf/llava-1.5-7b-hf",
    "llava-hf/llava-v1.6-mistral-7b-hf",
    "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2.5-VL-7B-Instruct",
)
#: the real LM depths (the builder's ``text_layers``)
DEPTH = {CHECKPOINTS[0]: 32, CHECKPOINTS[1]: 32, CHECKPOINTS[2]: 28, CHECKPOINTS[3]: 28}


def _image(seed: int, size=(480, 640)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.uniform(0, 1, (*size, 3)) * 255).astype("uint8"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _measured(fn, device: torch.device) -> tuple[float, float]:
    """``(seconds, peak GiB)`` of one call: the GPU's allocated peak, or on the CPU the process's
    peak resident memory above its resident set just before the call (:mod:`benchmarks.memory`)."""
    if device.type == "cuda":
        _peak_reset(device)
        seconds, _ = _timed(fn, device)
        return seconds, _peak(device)
    from benchmarks.memory import measure_peak

    start = time.perf_counter()
    peak = measure_peak(fn, reps=1)
    return time.perf_counter() - start, peak["activation_peak_mb"] / 1024


def _timed(fn, device: torch.device, reps: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(checkpoint: str, device: torch.device, text_layers: int, vision_layers: int | None) -> dict:
    """One checkpoint's numbers (see the module docstring)."""
    import interp
    from interp import RecordAttention
    from interp.analysis import masking_sweep, patching_sweep
    from interp.analysis.patching import first_pair_plan
    from interp.analysis.items import Item
    from interp.models.tiny.real_shapes import build_real
    from interp.planner import plan_sample

    # bfloat16 on the GPU (the checkpoints' own precision); float32 for the CPU smoke run, where
    # bfloat16 matrix products are many times slower
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor = build_real(checkpoint, text_layers=text_layers, vision_layers=vision_layers, dtype=dtype)
    vlm = interp.load(model.to(device), processor)
    question = "What colour is the object in the middle of the picture?"
    item = Item(id="0", image=_image(0), question=question, answers=("red",), kind="attribute")
    prepared = vlm.prepare(item.image, question)
    out: dict = {
        "checkpoint": checkpoint,
        "text_layers": text_layers,
        "tokens": prepared.seq_len,
        "image_tokens": prepared.n_image_tokens,
    }

    def forward():
        with torch.no_grad():
            return vlm.model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in prepared.inputs.items()})

    _timed(forward, device)
    out["forward_s"], _ = _timed(forward, device, reps=3)
    _timed(lambda: vlm.run(prepared, RecordAttention(layers="all")), device)
    recorded, _ = _timed(lambda: vlm.run(prepared, RecordAttention(layers="all")), device, reps=3)
    out["record_attention_ratio"] = recorded / out["forward_s"]
    weights = sum(p.numel() * p.element_size() for p in vlm.model.parameters())
    for scoring in ("teacher", "generate"):
        gc.collect()
        seconds, peak = _measured(
            lambda scoring=scoring: masking_sweep(
                vlm,
                [item],
                variants=("single", "window", "cumulative", "knockout_last", "knockout_question"),
                scoring=scoring,
                progress=False,
            ),
            device,
        )
        plan = plan_sample(
            vlm.adapter,
            vlm.config,
            vlm.dtype,
            prepared,
            scoring=scoring,
            weights=weights,
            attn_implementation=vlm.attn_implementation,
        )
        # the GPU's peak counts the weights; on the CPU the peak above the resident set before the call does not
        planned = (plan.peak_bytes if device.type == "cuda" else plan.peak_bytes - weights) / 2**30
        out[f"sweep_{scoring}"] = {
            "seconds": seconds,
            "peak_gb": peak,
            "peak_counts_weights": device.type == "cuda",
            "planned_gb": planned,
            "planned_over_measured": planned / peak,
        }
    gc.collect()
    pair = [((_image(1), question), (_image(2), question))]
    groups = ["image", "question", "last"]
    seconds, peak = _measured(lambda: patching_sweep(vlm, pair, positions=groups, progress=False), device)
    plan = first_pair_plan(vlm, pair, positions=groups)
    planned = (plan.peak_bytes if device.type == "cuda" else plan.peak_bytes - plan.memory["weights"]) / 2**30
    out["patching"] = {
        "seconds": seconds,
        "peak_gb": peak,
        "planned_gb": planned,
        "planned_over_measured": planned / peak,
    }
    per_question = out["forward_s"] + out["sweep_teacher"]["seconds"]
    out["projected_1000_questions_h"] = {
        "teacher": per_question * 1000 / 3600,
        "generate": (out["forward_s"] + out["sweep_generate"]["seconds"]) * 1000 / 3600,
    }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 2 layers of LLaVA-1.5")
    parser.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS), choices=CHECKPOINTS)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        device, checkpoints = torch.device("cpu"), [CHECKPOINTS[0]]
    elif torch.cuda.is_available():
        device, checkpoints = torch.device("cuda"), args.checkpoints
    else:
        print("benchmarks/gpu.py needs a CUDA GPU (or --quick for the CPU smoke run)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (quick smoke run)"
    results = []
    for checkpoint in checkpoints:
        start = time.perf_counter()
        layers, vision = (2, 2) if args.quick else (DEPTH[checkpoint], None)
        print(f"[gpu] {checkpoint}: {layers} decoder layers", file=sys.stderr, flush=True)
        results.append({**measure(checkpoint, device, layers, vision), "wall_s": time.perf_counter() - start})
        gc.collect()  # the model goes with measure()'s frame
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[gpu] {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    emit(
        {
            "benchmark": "real checkpoint shapes on one device",
            "device": name,
            "torch": torch.__version__,
            "results": results,
        },
        args.json_out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
