"""Command line: ``interp families | hooks | quickstart | reproduce | compare | organism ...``.

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


ORGANISM_ARCHS = ("llava", "qwen2_vl")
# train flags every architecture has (default: that architecture's config default)
_SHARED_TRAIN_FIELDS = ("seed", "tower_steps", "align_steps", "adapt_steps", "polish_steps", "batch", "focus_fraction")


def default_organism_dir(kind: str, arch: str) -> Path:
    """Where ``interp organism train``/``card`` write without ``--out``: a user directory
    (``~/.cache/interp/organism-<kind>/<arch>-<time>``), never the installed package."""
    import time

    from .models.organism.smollm2 import cache_root

    return cache_root() / f"organism-{kind}" / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def organism_train_config(args):
    """The training config (:class:`TrainConfig`, or :class:`QwenTrainConfig` for
    ``--arch qwen2_vl``) an ``interp organism train`` command line asks for."""
    arch = getattr(args, "arch", "llava")
    if args.focus_fraction is not None and not 0 <= args.focus_fraction < 1:
        raise InterpError(f"--focus-fraction {args.focus_fraction} must be in [0, 1).")
    given = {f: getattr(args, f) for f in _SHARED_TRAIN_FIELDS if getattr(args, f) is not None}
    if arch == "qwen2_vl":
        from .models.organism.train_qwen2vl import QwenTrainConfig

        if args.no_centre_marker:
            raise InterpError("--no-centre-marker is a LLaVA-organism ablation; the qwen2_vl recipe always marks centres.")
        if args.lora_rank is not None:
            if args.lora_rank < 1:
                raise InterpError(f"--lora-rank {args.lora_rank} must be at least 1.")
            given["lora_rank"] = args.lora_rank
        if args.time_budget is not None:
            if args.time_budget <= 0:
                raise InterpError(f"--time-budget {args.time_budget} must be a positive number of minutes.")
            given["time_budget_min"] = args.time_budget
        return QwenTrainConfig(**given)
    from .models.organism.train import TrainConfig

    if args.lora_rank is not None or args.time_budget is not None:
        raise InterpError("--lora-rank and --time-budget belong to --arch qwen2_vl.")
    return TrainConfig(centre_marker=not args.no_centre_marker, **given)


def _organism_train(args) -> int:
    config = organism_train_config(args)
    out = Path(args.out) if args.out else default_organism_dir("runs", args.arch)
    print(f"writing the run into {out}")
    if args.arch == "qwen2_vl":
        from .models.organism.train_qwen2vl import train_qwen2vl

        summary = train_qwen2vl(config, out)
    else:
        from .models.organism.train import train

        summary = train(config, out)
    print(json.dumps(summary["seconds"]))
    print(f"wrote {out}")
    return 0


def _scene_size(vlm) -> int:
    """The synthetic scenes' side for a model: its tower's input size (96 px for a
    dynamic-resolution tower, the size the organisms were trained on)."""
    return getattr(getattr(vlm.config, "vision_config", None), "image_size", None) or 96


def _organism_eval(args) -> int:
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism.evaluate import evaluate

    if args.limit is not None and args.limit < 1:
        raise InterpError(f"--limit {args.limit} must be at least 1.")
    vlm = load(args.variant)
    dataset = SyntheticVQA(args.split, seed=args.seed, image_size=_scene_size(vlm))
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


def _test_results(variant: str, limit: int | None) -> dict:
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism.evaluate import evaluate

    vlm = load(variant)
    dataset = SyntheticVQA("test", seed=0, image_size=_scene_size(vlm))
    result = evaluate(vlm.model, vlm.processor, dataset, limit=limit, progress=True)
    print(f"{variant}: accuracy {result['accuracy']:.3f}, blind {result['blind_accuracy']:.3f}")
    return result


def _organism_card(args) -> int:
    from .models.organism import LLAVA_VARIANTS, QWEN_VARIANTS, WEIGHTS_DIR, weights_path

    out = Path(args.out) if args.out else default_organism_dir("cards", args.arch)
    if args.arch == "qwen2_vl":
        from .models.organism.card_qwen2vl import write_qwen_card

        (variant,) = QWEN_VARIANTS
        run = Path(args.run) if args.run else WEIGHTS_DIR / "qwen2vl"
        if args.results:
            result = json.loads(Path(args.results).read_text())
            if result.get("model") != variant or result.get("split") != "test" or "blind_accuracy" not in result:
                raise InterpError(f"{args.results} is not a test-split evaluation of {variant} with the blind run.")
        else:
            result = _test_results(variant, args.limit)
        print(f"wrote {write_qwen_card(run, result, out, weights_path(variant))}")
        return 0
    from .models.organism.card import write_card

    if args.results:
        raise InterpError("--results belongs to --arch qwen2_vl (the LLaVA card evaluates both variants).")
    run = Path(args.run) if args.run else WEIGHTS_DIR
    results = {variant: _test_results(variant, args.limit) for variant in LLAVA_VARIANTS}
    print(f"wrote {write_card(run, results, out)}")
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


def _compare(args) -> int:
    from .analysis.compare import compare_json, compare_markdown, compare_runs
    from .plotting.compare import compare_curves

    labels = args.labels.split(",") if args.labels else None
    comparison = compare_runs(args.runs, labels, variant=args.variant)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(compare_markdown(comparison, variant=args.variant))
    (out / "compare.json").write_text(json.dumps(compare_json(comparison), indent=1))
    compare_curves(comparison, variant=args.variant, out_dir=out)
    print(f"compared {len(args.runs)} runs: wrote {out / 'compare.md'}, compare.json and compare_curves.png/.pdf")
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

    comp = sub.add_parser("compare", help="several reproduce runs side by side on relative depth")
    comp.add_argument("runs", nargs="+", help="run directories written by `interp reproduce --out`")
    comp.add_argument("--out", required=True, help="directory for compare.md, compare.json and the figures")
    comp.add_argument("--labels", default=None, help="comma-separated names of the runs (default: their models)")
    comp.add_argument("--variant", default="single", help="masking variant for the curves and findings")
    comp.set_defaults(func=_compare)

    organism = sub.add_parser("organism", help="the embedded model organism: train or evaluate it")
    org_sub = organism.add_subparsers(dest="organism_command", required=True)
    from .models.organism import VARIANTS as organism_variants

    org_train = org_sub.add_parser("train", help="train an organism (seeded); writes a run directory")
    org_train.add_argument("--arch", default="llava", choices=ORGANISM_ARCHS,
                           help="llava (default: the organism) or qwen2_vl (organism-qwen2vl)")
    org_train.add_argument("--seed", type=int, default=None)
    org_train.add_argument("--tower-steps", type=int, default=None)
    org_train.add_argument("--align-steps", type=int, default=None)
    org_train.add_argument("--adapt-steps", type=int, default=None)
    org_train.add_argument("--polish-steps", type=int, default=None)
    org_train.add_argument("--batch", type=int, default=None)
    org_train.add_argument("--focus-fraction", type=float, default=None,
                           help="share of each answer batch drawn from counting/spatial questions (0: none)")
    org_train.add_argument("--no-centre-marker", action="store_true",
                           help="ablation (llava): no object-centre head in tower pre-training, no ' object' mark")
    org_train.add_argument("--lora-rank", type=int, default=None, help="qwen2_vl: LoRA rank on the LM's q/k/v/o")
    org_train.add_argument("--time-budget", type=float, default=None,
                           help="qwen2_vl: minutes for the whole run; stage 2's steps shrink to fit")
    org_train.add_argument("--out", default=None,
                           help="run directory (default: ~/.cache/interp/organism-runs/<arch>-<time>)")
    org_train.set_defaults(func=_organism_train)
    org_eval = org_sub.add_parser("eval", help="accuracy on the synthetic benchmark, with and without the image")
    org_eval.add_argument("--variant", default="organism", choices=list(organism_variants))
    org_eval.add_argument("--split", default="test", choices=["train", "val", "test"])
    org_eval.add_argument("--limit", type=int, default=None)
    org_eval.add_argument("--seed", type=int, default=0)
    org_eval.add_argument("--no-blind", action="store_true", help="skip the blank-image run")
    org_eval.add_argument("--json", action="store_true")
    org_eval.set_defaults(func=_organism_eval)
    org_card = org_sub.add_parser("card", help="evaluate the shipped weights on the test split and write a model card")
    org_card.add_argument("--arch", default="llava", choices=ORGANISM_ARCHS)
    org_card.add_argument("--run", default=None,
                          help="directory with the run's training_log.json (default: the shipped one)")
    org_card.add_argument("--results", default=None,
                          help="qwen2_vl: an `organism eval --json` output to use instead of evaluating again")
    org_card.add_argument("--limit", type=int, default=None)
    org_card.add_argument("--out", default=None,
                          help="directory for the card (default: ~/.cache/interp/organism-cards/<arch>-<time>)")
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
