"""Command line: ``interp families | hooks | quickstart | reproduce | patch | organism ...``.

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


def _demo_sample(image: str | None, question: str | None, image_size: int):
    """The user's image and question, or test sample 0 of the synthetic benchmark."""
    if image is not None:
        return image, question or "What is in the image?"
    from .data.synthetic import SyntheticVQA

    sample = SyntheticVQA("test", seed=0, image_size=image_size)[0]
    return sample.image, question or sample.question


def quickstart(model: str, image: str | None, question: str | None, out: Path | None, max_new_tokens: int = 8) -> dict:
    """Load, answer, record last-token -> image attention at every layer, and mask the
    image tokens at each layer's input in turn (one pass per layer)."""
    import torch
    from tqdm.auto import tqdm

    from . import RecordAttention, ScaleImageTokens, load

    vlm = load(model)
    image_size = getattr(getattr(vlm.config, "vision_config", None), "image_size", 96)
    picture, question = _demo_sample(image, question, image_size)
    sample = vlm.prepare(picture, question)
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


def organism_train_config(args):
    """The :class:`TrainConfig` an ``interp organism train`` command line asks for."""
    from .models.organism.train import TrainConfig

    if not 0 <= args.focus_fraction < 1:
        raise InterpError(f"--focus-fraction {args.focus_fraction} must be in [0, 1).")
    return TrainConfig(seed=args.seed, tower_steps=args.tower_steps, align_steps=args.align_steps,
                       adapt_steps=args.adapt_steps, polish_steps=args.polish_steps, batch=args.batch,
                       centre_marker=not args.no_centre_marker, focus_fraction=args.focus_fraction)


def _organism_train(args) -> int:
    from .models.organism import WEIGHTS_DIR
    from .models.organism.train import train

    config = organism_train_config(args)
    summary = train(config, Path(args.out) if args.out else WEIGHTS_DIR)
    print(json.dumps(summary["seconds"]))
    return 0


def _organism_eval(args) -> int:
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism.evaluate import evaluate

    vlm = load(args.variant)
    dataset = SyntheticVQA(args.split, seed=args.seed, image_size=vlm.config.vision_config.image_size)
    result = evaluate(vlm.model, vlm.processor, dataset, limit=args.limit, blind=not args.no_blind, progress=True)
    result = {"model": args.variant, "split": args.split, "seed": args.seed, **result}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.variant} on {args.split} (n={result['n']}): accuracy {result['accuracy']:.3f}"
              + (f", blind {result['blind_accuracy']:.3f}" if "blind_accuracy" in result else ""))
        for kind, value in result["per_kind"].items():
            print(f"  {kind:<10} {value:.3f}")
    return 0


def _organism_card(args) -> int:
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism import VARIANTS, WEIGHTS_DIR
    from .models.organism.card import write_card
    from .models.organism.evaluate import evaluate

    results = {}
    for variant in VARIANTS:
        vlm = load(variant)
        dataset = SyntheticVQA("test", seed=0, image_size=vlm.config.vision_config.image_size)
        results[variant] = evaluate(vlm.model, vlm.processor, dataset, limit=args.limit, progress=True)
        print(f"{variant}: accuracy {results[variant]['accuracy']:.3f}, blind {results[variant]['blind_accuracy']:.3f}")
    print(f"wrote {write_card(WEIGHTS_DIR, results)}")
    return 0


def _load_samples(dataset: str, data_dir: str | None, split: str | None, image_size: int):
    """``(samples, label)`` for ``--dataset``: the synthetic benchmark or an evaluation task."""
    if dataset == "synthetic":
        from .data.synthetic import SyntheticVQA

        split = split or "test"
        return SyntheticVQA(split, seed=0, image_size=image_size), f"synthetic:{split}"
    from .data.tasks import load_task

    return load_task(dataset, data_dir, split=split), dataset


def _reproduce(args) -> int:
    from . import load
    from .analysis.reproduce import ReproduceConfig, reproduce

    vlm = load(args.model, dtype=args.dtype, device_map=args.device_map, remote=bool(args.remote))
    image_size = getattr(getattr(vlm.config, "vision_config", None), "image_size", 96) or 96
    samples, label = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    config = ReproduceConfig(scoring=args.scoring, mode=args.mode, window=args.window, seed=args.seed,
                             remote=True if args.remote else None, n_boot=args.n_boot)
    report = reproduce(vlm, samples, args.out, dataset=label, limit=args.limit, config=config)
    single = report["masking"]["findings"].get("single", {})
    print(f"{report['model']} on {label}: {report['n_samples']} samples, baseline accuracy "
          f"{report['baseline_accuracy']['mean']:.3f}")
    if single:
        print(single["statement"])
    print(f"wrote {Path(args.out) / 'report.md'}, report.json and figures")
    return 0


def _int_list(text: str | None):
    """``"all"``/None as given, else a comma-separated list of integers (one clear error otherwise)."""
    if text is None or text == "all":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterpError(f"{text!r} is not 'all' or a comma-separated list of layer numbers") from None


def _patch(args) -> int:
    """``interp patch``: counterfactual patching and the image-token lens on the synthetic benchmark."""
    from . import load
    from .analysis.image_lens import lens_section
    from .analysis.patching import patching_section
    from .data.synthetic import CHANGES, SyntheticVQA

    changes = tuple(c.strip() for c in args.changes.split(",") if c.strip())
    unknown = [c for c in changes if c not in CHANGES]
    if not changes or unknown:
        raise InterpError(f"--changes {args.changes!r}: use a comma-separated subset of {', '.join(CHANGES)}")
    if args.pairs < 1:
        raise InterpError(f"--pairs {args.pairs} must be at least 1")
    vlm = load(args.model)
    image_size = getattr(getattr(vlm.config, "vision_config", None), "image_size", 96) or 96
    data = SyntheticVQA(args.split, seed=0, image_size=image_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, lines = patching_section(vlm, data, out, n_pairs=args.pairs, changes=changes, n_boot=args.n_boot,
                                     cell_pairs=args.cell_pairs, seed=args.seed, layers=_int_list(args.layers),
                                     cell_layers=_int_list(args.cell_layers),
                                     resume=out / "patching_sweep.partial.csv" if args.resume else None,
                                     positions=tuple(g.strip() for g in args.groups.split(",") if g.strip()))
    result = {"model": vlm.name, "dataset": f"synthetic:{args.split}", "patching": report}
    if args.lens > 0:
        lens, lens_lines = lens_section(vlm, data, out, n=args.lens, n_boot=args.n_boot, seed=args.seed)
        result["image_lens"] = lens
        lines += lens_lines
    (out / "patching.json").write_text(json.dumps(result, indent=1))
    (out / "patching.md").write_text("\n".join([f"# interp patch: {vlm.name} on synthetic:{args.split}", ""] + lines))
    for line in lines[:12]:
        if line.startswith("- "):
            print(line[2:])
    print(f"wrote {out / 'patching.md'}, patching.json and figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Where does vision meet language inside a VLM?")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("families", help="list the supported model families").set_defaults(func=_families)

    hooks = sub.add_parser("hooks", help="list a model's TransformerLens-style hook names")
    hooks.add_argument("--model", default="organism")
    hooks.set_defaults(func=_hooks)

    quick = sub.add_parser("quickstart", help="load, answer, record attention and mask image tokens per layer")
    quick.add_argument("--model", default="organism",
                       help="a HF id, a local dir, tiny:<model_type>, or organism (default)")
    quick.add_argument("--image", default=None, help="image file (default: a synthetic benchmark test scene)")
    quick.add_argument("--question", default=None, help="default: the benchmark question of that scene")
    quick.add_argument("--max-new-tokens", type=int, default=8)
    quick.add_argument("--out", default=None, help="directory for quickstart.json")
    quick.set_defaults(func=_quickstart)

    rep = sub.add_parser("reproduce", help="run the paper's analyses and write figures and a report")
    rep.add_argument("--out", required=True, help="output directory (figures, report.md, report.json, CSVs)")
    rep.add_argument("--model", default="organism", help="HF id, local dir, tiny:<model_type>, organism (default)")
    rep.add_argument("--dataset", default="synthetic", help="synthetic (default) or an evaluation task name")
    rep.add_argument("--data-dir", default=None, help="where an evaluation task's files are")
    rep.add_argument("--split", default=None, help="dataset split (synthetic: test by default)")
    rep.add_argument("--limit", type=int, default=60, help="number of samples (default 60)")
    rep.add_argument("--scoring", default="teacher", choices=["teacher", "generate"],
                     help="teacher: exact greedy match by teacher forcing (fast); generate: greedy generation, VQA-scored")
    rep.add_argument("--mode", default="auto", choices=["auto", "fast", "naive"])
    rep.add_argument("--window", type=int, default=3, help="layers per window / knockout span")
    rep.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    rep.add_argument("--n-boot", type=int, default=2000)
    rep.add_argument("--dtype", default=None, help="e.g. float16 or bfloat16 for a large model on a GPU")
    rep.add_argument("--device-map", default=None, help="e.g. auto (HF accelerate device placement)")
    rep.add_argument("--remote", action="store_true", help="run on NDIF (needs NDIF_API_KEY)")
    rep.set_defaults(func=_reproduce)

    patch = sub.add_parser("patch", help="counterfactual activation patching and the image-token lens (synthetic)")
    patch.add_argument("--out", required=True, help="output directory (patching.md, patching.json, CSVs, figures)")
    patch.add_argument("--model", default="organism", help="HF id, local dir, tiny:<model_type>, organism (default)")
    patch.add_argument("--split", default="test", choices=["train", "val", "test"])
    patch.add_argument("--pairs", type=int, default=60, help="counterfactual pairs (default 60)")
    patch.add_argument("--changes", default="colour,shape,distractor",
                       help="comma-separated changes taking turns (colour, shape, position, remove, distractor)")
    patch.add_argument("--layers", default="all", help="layers to patch: all (default) or a comma-separated list")
    patch.add_argument("--cell-layers", default=None, help="comma-separated layers of the per-cell maps (default: 4 spread out)")
    patch.add_argument("--cell-pairs", type=int, default=2, help="pairs also patched cell by cell (default 2)")
    patch.add_argument("--groups", default="changed,other_image,question,last",
                       help="position groups (changed, other_image, image, question, other_text, last)")
    patch.add_argument("--lens", type=int, default=60, help="samples for the image-token lens (0: skip)")
    patch.add_argument("--seed", type=int, default=0)
    patch.add_argument("--n-boot", type=int, default=2000)
    patch.add_argument("--resume", action="store_true",
                       help="append each pair's rows to OUT/patching_sweep.partial.csv and skip pairs already there")
    patch.set_defaults(func=_patch)

    organism = sub.add_parser("organism", help="the embedded model organism: train or evaluate it")
    org_sub = organism.add_subparsers(dest="organism_command", required=True)
    org_train = org_sub.add_parser("train", help="train the organism (seeded; writes its shipped weights)")
    org_train.add_argument("--seed", type=int, default=0)
    org_train.add_argument("--tower-steps", type=int, default=1200)
    org_train.add_argument("--align-steps", type=int, default=150)
    org_train.add_argument("--adapt-steps", type=int, default=1000)
    org_train.add_argument("--polish-steps", type=int, default=400)
    org_train.add_argument("--batch", type=int, default=16)
    org_train.add_argument("--focus-fraction", type=float, default=0.25,
                           help="share of each answer batch drawn from counting/spatial questions (0: none)")
    org_train.add_argument("--no-centre-marker", action="store_true",
                           help="ablation: no object-centre head in tower pre-training, no ' object' mark")
    org_train.add_argument("--out", default=None, help="directory for the weights (default: the package's)")
    org_train.set_defaults(func=_organism_train)
    org_eval = org_sub.add_parser("eval", help="accuracy on the synthetic benchmark, with and without the image")
    org_eval.add_argument("--variant", default="organism", choices=["organism", "organism-frozen"])
    org_eval.add_argument("--split", default="test", choices=["train", "val", "test"])
    org_eval.add_argument("--limit", type=int, default=None)
    org_eval.add_argument("--seed", type=int, default=0)
    org_eval.add_argument("--no-blind", action="store_true", help="skip the blank-image run")
    org_eval.add_argument("--json", action="store_true")
    org_eval.set_defaults(func=_organism_eval)
    org_card = org_sub.add_parser("card", help="evaluate both variants on the test split and write MODEL_CARD.md")
    org_card.add_argument("--limit", type=int, default=None)
    org_card.set_defaults(func=_organism_card)
    from .evaluation.cli import add_commands as add_evaluation_commands  # interp evaluate | merge

    add_evaluation_commands(sub)
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
