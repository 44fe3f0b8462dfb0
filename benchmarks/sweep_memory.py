"""Peak memory of the generation-scored masking sweep against depth: bounded slices vs all at once.

Run from the repository root::

    .venv/bin/python benchmarks/sweep_memory.py [--layers 8 16 32] [--all-up-to 16] [--decode-batch 16]
        [--json-out benchmarks/results/sweep_memory.json]

On LLaVA-1.5-7B's geometry narrowed (a 336 px CLIP grid of 24 x 24 = 576 image tokens, the LM's
head dimension 128 with its 32 heads divided by 8, vocab 32000, random weights, float32), one
question's generation-scored fast sweep (every variant at every layer: 5L + 1 conditions, 4 new
tokens) runs in a fresh process per (depth, decode batch) and reports the process's peak resident
memory above what it held just before the sweep (:mod:`benchmarks.memory`). Beside it: the
keys/values one condition holds (:func:`interp.engine.memory.kv_bytes`) and the peak in units of
it, so the growth is readable as a count: bounded slices hold a constant number of conditions
(peak linear in depth), all at once holds every condition (quadratic).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == HERE:
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

from benchmarks.harness import emit, loadavg, log  # noqa: E402
from benchmarks.memory import MiB, measure_peak, report_child_result, run_child  # noqa: E402
from benchmarks.models import WideSpec, build_wide, wide_image, wide_question  # noqa: E402

#: LLaVA-1.5-7B's geometry with its LM narrowed 8x (32 heads of 128 -> 4 heads of 128)
NARROW = WideSpec(
    hidden=512,
    heads=4,
    kv_heads=4,
    intermediate=1376,
    vocab=32000,
    image_size=336,
    patch_size=14,
    vision_hidden=64,
    vision_layers=1,
    text_chars=40,
)
NEW_TOKENS = 4


def child(layers: int, decode_batch: str) -> dict:
    """One sweep in this process: its peak above the pre-sweep resident set, and the counts."""
    import torch

    import interp
    from interp.analysis.items import Item
    from interp.analysis.sweep import VARIANTS, masking_sweep
    from interp.engine.memory import kv_bytes

    torch.set_num_threads(1)
    spec = NARROW.__class__(**{**NARROW.__dict__, "layers": layers})
    vlm = interp.load(*build_wide(spec))
    item = Item(id="0", image=wide_image(spec), question=wide_question(spec), answers=("red",), kind="attribute")
    tokens = vlm.prepare(item.image, item.question).seq_len + NEW_TOKENS
    batch = None if decode_batch == "all" else int(decode_batch)
    start = time.perf_counter()
    peak = measure_peak(
        lambda: masking_sweep(
            vlm,
            [item],
            variants=VARIANTS,
            scoring="generate",
            mode="fast",
            max_new_tokens=NEW_TOKENS,
            decode_batch=batch,
            progress=False,
        ),
        reps=1,
    )
    per_condition = kv_bytes(vlm, tokens)
    return {
        "layers": layers,
        "decode_batch": decode_batch,
        "conditions": 1 + len(VARIANTS) * layers,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - start, 1),
        "kv_mb_per_condition": round(per_condition / MiB, 2),
        "sweep_peak_mb": round(peak["activation_peak_mb"], 1),
        "peak_in_conditions": round(peak["activation_peak_mb"] * MiB / per_condition, 2),
    }


#: (label, family config factory, image tokens of a 640x480 picture (the HF processor's count), text tokens)
GPU_SHAPES = (
    ("llava-hf/llava-1.5-7b-hf", "llava", 576, 60),
    ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", 2340, 60),
)


def _gpu_config(family: str):
    """The published 7B shapes from the HF config classes' defaults (Llama-2-7B / Mistral-7B LMs)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    if family == "llava":
        return LlavaConfig(vision_config=vision, text_config=LlamaConfig(vocab_size=32064))
    return LlavaNextConfig(vision_config=vision, text_config=MistralConfig(vocab_size=32064))


def projection(gpu_bytes: float = 80e9, new_tokens: int = 8) -> list[dict]:
    """Projected peak of one question's generation-scored sweep on a GPU of ``gpu_bytes``: weights
    (counted on the meta device) + the auto decode slice's keys/values held KV_COPIES times."""
    import torch
    from transformers import AutoModelForImageTextToText

    from interp.engine.memory import DECODE_MEMORY_SHARE, KV_COPIES
    from interp.models.adapters import adapter_for

    out = []
    for label, family, image_tokens, text_tokens in GPU_SHAPES:
        config = _gpu_config(family)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        weights = sum(p.numel() for p in model.parameters()) * 2  # float16
        adapter = adapter_for(config)
        layers = adapter.n_layers(config)
        tokens = image_tokens + text_tokens + new_tokens
        per_condition = adapter.kv_bytes_per_token(config, torch.float16) * tokens * layers
        free = gpu_bytes - weights
        batch = max(1, int(DECODE_MEMORY_SHARE * free) // (KV_COPIES * per_condition))
        conditions = 1 + 5 * layers
        out.append(
            {
                "model": label,
                "tokens": tokens,
                "weights_gb": round(weights / 1e9, 1),
                "kv_gb_per_condition": round(per_condition / 1e9, 3),
                "auto_decode_batch": batch,
                "projected_peak_gb": round((weights + KV_COPIES * min(batch, conditions) * per_condition) / 1e9, 1),
                "all_at_once_gb": round((weights + KV_COPIES * conditions * per_condition) / 1e9, 1),
            }
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--decode-batch", default="16", help="the bounded runs' slice (conditions)")
    parser.add_argument("--all-up-to", type=int, default=16, help="run 'all at once' up to this depth (memory)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--projection-only", action="store_true", help="print the 7B projection and exit")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.projection_only:
        emit({"projection_80gb_float16": projection()}, args.json_out)
        return 0
    if args._child:
        report_child_result(child(int(args._child[0]), args._child[1]))
        return 0
    runs = []
    for layers in args.layers:
        for batch in [args.decode_batch] + (["all"] if layers <= args.all_up_to else []):
            log(f"sweep_memory: {layers} layers, decode batch {batch}")
            runs.append(run_child(Path(__file__), ["--_child", str(layers), batch], 1, f"{layers}/{batch}"))
            log(json.dumps(runs[-1]))
    bounded = [r for r in runs if r["decode_batch"] != "all"]
    growth = {
        f"{a['layers']}->{b['layers']}": round(b["sweep_peak_mb"] / a["sweep_peak_mb"], 2)
        for a, b in zip(bounded, bounded[1:])
    }
    result = {
        "benchmark": "generation-scored sweep peak memory against depth",
        "model": "LLaVA-1.5-7B geometry, LM narrowed 8x (hidden 512, 4 heads of 128), random weights, float32",
        "load_average": loadavg(),
        "runs": runs,
        "bounded_peak_growth": growth,
        "projection_80gb_float16": projection(),
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
