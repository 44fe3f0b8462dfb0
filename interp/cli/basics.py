"""``interp families | hooks | quickstart``: what is supported, hook names, the first five minutes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cli_args import add_model_args, model_and_kwargs, non_empty, positive_int
from ..errors import InterpError
from ..options import PAPER_MASK_SCALE
from .common import _output_dir


def _families(args) -> int:
    from ..models.adapters import all_adapters

    for adapter in all_adapters():
        for model_type in adapter.model_types:
            print(f"{model_type:<18}{adapter.name:<14}{adapter.notes}")
    return 0


def _hooks(args) -> int:
    """The hook names from the model's config alone: no weights are read."""
    from ..hooks import all_hook_names
    from ..models.adapters import adapter_for
    from ..models.loading import load_config

    config = load_config(args.model)
    adapter = adapter_for(config)
    for name in all_hook_names(adapter.n_layers(config), adapter.n_vision_layers_in_config(config)):
        print(name)
    return 0


def _demo_sample(image: Any, question: str | None, image_size: int):
    """The user's image and question, or test sample 0 of the synthetic benchmark."""
    if image is not None:
        return image, question or "What is in the image?"
    from ..data.synthetic import SyntheticVQA

    sample = SyntheticVQA("test", seed=0, image_size=image_size)[0]
    return sample.image, question or sample.question


def quickstart(
    model: str, image: Any, question: str | None, out: Path | None, max_new_tokens: int = 8, **load_kwargs
) -> dict:
    """Load, answer, record last-token -> image attention at every layer, and mask the
    image tokens at each layer's input in turn (one pass per layer). ``load_kwargs`` go
    to :func:`interp.load` (dtype, device_map, attn_implementation)."""
    import torch
    from tqdm.auto import tqdm

    from .. import RecordAttention, ScaleImageTokens, load
    from ..validate import max_new_tokens as check_max_new_tokens

    check_max_new_tokens(max_new_tokens)
    if question is not None and not question.strip():
        raise InterpError("the question is empty; ask something, or leave it out for the benchmark scene's question")
    if image is not None:
        from ..inputs import load_image

        image = load_image(image)  # a missing or unreadable file is one line before the model loads
    vlm = load(model, **load_kwargs)
    image_size = vlm.scene_size
    picture, question = _demo_sample(image, question, image_size)
    sample = vlm.prepare(picture, question)
    clean = vlm.run(sample, RecordAttention("all"), generate=True, max_new_tokens=max_new_tokens)
    answer_token = int(clean.sequences[0, 0])
    clean_logprob = torch.log_softmax(clean.logits.float(), -1)[0, answer_token]
    rows = []
    for layer in tqdm(range(vlm.n_layers), desc="masking image tokens per layer", unit="layer"):
        masked = vlm.run(sample, ScaleImageTokens([layer], scale=PAPER_MASK_SCALE))
        logprob = torch.log_softmax(masked.logits.float(), -1)[0, answer_token]
        image_mass = float(clean.record("attention", layer)[0, -1].sum())
        rows.append(
            {
                "layer": layer,
                "image_attention_mass": round(image_mass, 6),
                "answer_logprob_masked": round(float(logprob), 6),
                "answer_logprob_drop": round(float(clean_logprob - logprob), 6),
            }
        )
    report = {
        "model": vlm.name,
        "family": vlm.adapter.name,
        "n_layers": vlm.n_layers,
        "question": question,
        "answer": clean.text[0],
        "image_tokens": sample.n_image_tokens,
        "grid": list(sample.grid.shape),
        "answer_logprob_clean": round(float(clean_logprob), 6),
        "layers": rows,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "quickstart.json").write_text(json.dumps(report, indent=2))
    return report


def _quickstart(args) -> int:
    out = _output_dir(args.out) if args.out else None
    model, load_kwargs = model_and_kwargs(args)
    report = quickstart(model, args.image, args.question, out, args.max_new_tokens, **load_kwargs)
    print(
        f"{report['model']} ({report['family']}, {report['n_layers']} layers, "
        f"{report['image_tokens']} image tokens on a {report['grid'][0]}x{report['grid'][1]} grid)"
    )
    print(f"Q: {report['question']}\nA: {report['answer']}")
    print(f"{'layer':>5}  {'attn->image':>11}  {'logp drop when masked':>21}")
    for row in report["layers"]:
        print(f"{row['layer']:>5}  {row['image_attention_mass']:>11.4f}  {row['answer_logprob_drop']:>21.4f}")
    if out is not None:
        print(f"wrote {out / 'quickstart.json'}")
    return 0


def add_parsers(sub) -> None:
    """Add this module's commands to the ``interp`` parser's subcommands."""
    sub.add_parser("families", help="list the supported model families").set_defaults(func=_families)

    hooks = sub.add_parser("hooks", help="list a model's TransformerLens-style hook names (reads its config only)")
    add_model_args(hooks, dtype=False)
    hooks.set_defaults(func=_hooks)

    quick = sub.add_parser("quickstart", help="load, answer, record attention and mask image tokens per layer")
    add_model_args(quick)
    quick.add_argument("--image", default=None, help="image file (default: a synthetic benchmark test scene)")
    quick.add_argument("--question", default=None, type=non_empty, help="default: the benchmark question of that scene")
    quick.add_argument("--max-new-tokens", type=positive_int, default=8)
    quick.add_argument("--out", default=None, help="directory for quickstart.json")
    quick.set_defaults(func=_quickstart)
