"""Command line: ``interp families | hooks | quickstart``.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InterpError


def _families(args) -> int:
    from .models.adapters import all_adapters

    for adapter in all_adapters():
        for model_type in adapter.model_types:
            print(f"{model_type:<18}{adapter.name}")
    return 0


def _hooks(args) -> int:
    from . import load

    vlm = load(args.model)
    for name in vlm.hook_names():
        print(name)
    return 0


def _demo_image(path: str | None):
    """The user's image, or a drawn scene (a red square and a blue disc on grey)."""
    if path:
        return path
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 64), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 36, 36], fill=(220, 30, 30))
    draw.ellipse([56, 24, 88, 56], fill=(30, 60, 220))
    return image


def quickstart(model: str, image: str | None, question: str, out: Path | None, max_new_tokens: int = 8) -> dict:
    """Load, answer, record last-token -> image attention at every layer, and mask the
    image tokens at each layer's input in turn (one pass per layer)."""
    import torch
    from tqdm.auto import tqdm

    from . import RecordAttention, ScaleImageTokens, load

    vlm = load(model)
    sample = vlm.prepare(_demo_image(image), question)
    clean = vlm.run(sample, RecordAttention("all"), generate=True, max_new_tokens=max_new_tokens)
    answer_token = int(clean.sequences[0, 0])
    clean_logprob = torch.log_softmax(clean.logits.float(), -1)[0, answer_token]
    rows = []
    for layer in tqdm(range(vlm.n_layers), desc="masking image tokens per layer", unit="layer"):
        masked = vlm.run(sample, ScaleImageTokens([layer], scale=1e-9))
        logprob = torch.log_softmax(masked.logits.float(), -1)[0, answer_token]
        image_mass = float(clean.record("attention", layer)[0, -1].sum())
        rows.append({
            "layer": layer,
            "image_attention_mass": round(image_mass, 6),
            "answer_logprob_masked": round(float(logprob), 6),
            "answer_logprob_drop": round(float(clean_logprob - logprob), 6),
        })
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
    report = quickstart(args.model, args.image, args.question, Path(args.out) if args.out else None,
                        args.max_new_tokens)
    print(f"{report['model']} ({report['family']}, {report['n_layers']} layers, "
          f"{report['image_tokens']} image tokens on a {report['grid'][0]}x{report['grid'][1]} grid)")
    print(f"Q: {report['question']}\nA: {report['answer']}")
    print(f"{'layer':>5}  {'attn->image':>11}  {'logp drop when masked':>21}")
    for row in report["layers"]:
        print(f"{row['layer']:>5}  {row['image_attention_mass']:>11.4f}  {row['answer_logprob_drop']:>21.4f}")
    if args.out:
        print(f"wrote {Path(args.out) / 'quickstart.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Where does vision meet language inside a VLM?")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("families", help="list the supported model families").set_defaults(func=_families)

    hooks = sub.add_parser("hooks", help="list a model's TransformerLens-style hook names")
    hooks.add_argument("--model", default="tiny:llava")
    hooks.set_defaults(func=_hooks)

    quick = sub.add_parser("quickstart", help="load, answer, record attention and mask image tokens per layer")
    quick.add_argument("--model", default="tiny:llava", help="HF id, local dir or tiny:<model_type>")
    quick.add_argument("--image", default=None, help="image file (default: a drawn scene)")
    quick.add_argument("--question", default="What colour is the square?")
    quick.add_argument("--max-new-tokens", type=int, default=8)
    quick.add_argument("--out", default=None, help="directory for quickstart.json")
    quick.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
