"""``interp organism train | eval | card``: the embedded model organisms."""

from __future__ import annotations

import json
from pathlib import Path

from ..cli_args import add_model_args, positive_int
from ..cli_args import load_kwargs as loading_flags
from ..errors import InterpError
from .common import _output_dir


ORGANISM_ARCHS = ("llava", "qwen2_vl")
# train flags every architecture has (default: that architecture's config default)


_SHARED_TRAIN_FIELDS = ("seed", "tower_steps", "align_steps", "adapt_steps", "polish_steps", "batch", "focus_fraction")


def default_organism_dir(kind: str, arch: str) -> Path:
    """Where ``interp organism train``/``card`` write without ``--out``: a user directory
    (``~/.cache/interp/organism-<kind>/<arch>-<time>``), never the installed package."""
    import time

    from ..models.organism.smollm2 import cache_root

    return cache_root() / f"organism-{kind}" / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def _focus_kinds(text: str) -> tuple[str, ...]:
    """``--focus-kinds``: question kinds separated by commas (one line if any is unknown)."""
    from ..data.synthetic import QUESTION_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in QUESTION_KINDS]
    if unknown or not kinds:
        raise InterpError(
            f"--focus-kinds {text!r}: give question kinds separated by commas, from {', '.join(QUESTION_KINDS)}."
        )
    return kinds


def _qwen_train_fields(args) -> dict:
    """The ``--arch qwen2_vl`` recipe's own flags, checked, as :class:`QwenTrainConfig` fields."""
    given: dict = {}
    lora_alpha = getattr(args, "lora_alpha", None)
    if getattr(args, "full_attention", False):
        if args.lora_rank is not None or lora_alpha is not None:
            raise InterpError("--full-attention trains q/k/v/o in full: it takes no --lora-rank or --lora-alpha.")
        given["attention"] = "full"
    checks = (  # (flag, value, field, acceptable, what it must be)
        ("--lora-rank", args.lora_rank, "lora_rank", lambda v: v >= 1, "must be at least 1"),
        ("--lora-alpha", lora_alpha, "lora_alpha", lambda v: v > 0, "must be positive"),
        (
            "--position-weight",
            getattr(args, "position_weight", None),
            "position_weight",
            lambda v: v >= 0,
            "must be >= 0",
        ),
        ("--time-budget", args.time_budget, "time_budget_min", lambda v: v > 0, "must be a positive number of minutes"),
    )
    for flag, value, field_name, acceptable, what in checks:
        if value is not None:
            if not acceptable(value):
                raise InterpError(f"{flag} {value} {what}.")
            given[field_name] = value
    if getattr(args, "position_words", False):
        given["position_words"] = True
    if getattr(args, "checkpoint_dir", None):
        given["checkpoint_dir"] = args.checkpoint_dir
    return given


def organism_train_config(args):
    """The training config (:class:`TrainConfig`, or :class:`QwenTrainConfig` for
    ``--arch qwen2_vl``) an ``interp organism train`` command line asks for."""
    arch = getattr(args, "arch", "llava")
    if args.focus_fraction is not None and not 0 <= args.focus_fraction < 1:
        raise InterpError(f"--focus-fraction {args.focus_fraction} must be in [0, 1).")
    given = {f: getattr(args, f) for f in _SHARED_TRAIN_FIELDS if getattr(args, f) is not None}
    if getattr(args, "device", None):
        given["device"] = args.device
    if getattr(args, "focus_kinds", None) is not None:
        given["focus_kinds"] = _focus_kinds(args.focus_kinds)
    if arch == "qwen2_vl":
        from ..models.organism.train_qwen2vl import QwenTrainConfig

        if args.no_centre_marker:
            raise InterpError(
                "--no-centre-marker is a LLaVA-organism ablation; the qwen2_vl recipe always marks centres."
            )
        given.update(_qwen_train_fields(args))
        return QwenTrainConfig(**given)
    from ..models.organism.train import TrainConfig

    if (
        args.lora_rank is not None
        or getattr(args, "lora_alpha", None) is not None
        or getattr(args, "full_attention", False)
        or args.time_budget is not None
        or getattr(args, "tower_from", None)
        or getattr(args, "checkpoint_dir", None)
        or getattr(args, "resume_from", None)
        or getattr(args, "position_weight", None) is not None
        or getattr(args, "position_words", False)
    ):
        raise InterpError(
            "--lora-rank, --lora-alpha, --full-attention, --time-budget, --tower-from, --checkpoint-dir, --resume-from, "
            "--position-weight and --position-words belong to --arch qwen2_vl."
        )
    return TrainConfig(centre_marker=not args.no_centre_marker, **given)


def _stage0_log(weights: Path) -> list:
    """Stage 0's log entries of the run that wrote ``weights``: its ``training_log.json``
    beside it (a run directory) or in ``qwen2vl/`` beside it (the shipped weights)."""
    for log in (weights.parent / "training_log.json", weights.parent / "qwen2vl" / "training_log.json"):
        if log.is_file():
            return [e for e in json.loads(log.read_text())["log"] if e["stage"] == 0]
    return []


def planted_train_config(args):
    """The :class:`PlantedConfig` an ``interp organism train --planted NAME`` command line asks for."""
    from ..models.organism.planted import PlantedConfig, check_layers, organism_layers, planted_layers

    if args.arch != "llava":
        raise InterpError("--planted variants are built on the LLaVA organism (--arch llava).")
    planted_layers(args.planted)
    given: dict = {"variant": args.planted}
    if args.planted_layers:
        try:
            given["layers"] = tuple(int(x) for x in args.planted_layers.split(","))
        except ValueError:
            raise InterpError(f"--planted-layers {args.planted_layers!r}: comma-separated layer indices") from None
    for field in ("seed", "batch", "block_steps", "release_steps", "device"):
        if getattr(args, field, None) is not None:
            given[field] = getattr(args, field)
    if args.lora_rank is not None:
        given["rank"] = args.lora_rank
    config = PlantedConfig(**given)
    config.layers = check_layers(config.layers, organism_layers())
    return config


def _planted_train(args) -> int:
    from ..models.organism.planted import train_planted

    config = planted_train_config(args)
    out = _output_dir(args.out) if args.out else default_organism_dir("runs", config.variant)
    print(f"writing the run into {out} (rerun the same command with --out {out} to resume)")
    summary = train_planted(config, out)
    print(json.dumps({"seconds": summary["seconds"], "planted_layers": summary["planted_layers"]}))
    print(f"wrote {out}")
    return 0


def _organism_train(args) -> int:
    if args.planted:
        return _planted_train(args)
    out = _output_dir(args.out) if args.out else default_organism_dir("runs", args.arch)
    if getattr(args, "checkpoint_dir", None):
        _output_dir(args.checkpoint_dir)
    config = organism_train_config(args)
    print(f"writing the run into {out}")
    if args.arch == "qwen2_vl":
        from ..models.organism.train_qwen2vl import train_qwen2vl

        tower_from = getattr(args, "tower_from", None)
        if tower_from is not None and not Path(tower_from).is_file():
            raise InterpError(f"--tower-from {tower_from}: no such file (a .safetensors written by this recipe).")
        resume_from = getattr(args, "resume_from", None)
        if resume_from is not None and not Path(resume_from).is_file():
            raise InterpError(
                f"--resume-from {resume_from}: no such file (stage2-resume.pt or stage3-resume.pt of a --checkpoint-dir)"
            )
        summary = train_qwen2vl(
            config,
            out,
            tower_from=tower_from,
            resume_from=resume_from,
            tower_log=None if tower_from is None else _stage0_log(Path(tower_from)),
        )
    else:
        from ..models.organism.train import train

        summary = train(config, out)
    print(json.dumps(summary["seconds"]))
    print(f"wrote {out}")
    return 0


def _organism_eval(args) -> int:
    from .. import load
    from ..data.synthetic import SyntheticVQA
    from ..models.organism.evaluate import evaluate

    if args.weights:  # a file of the variant's recipe (a run's checkpoint), not the shipped one
        from ..models.organism import organism_dir

        vlm = load(str(organism_dir(args.variant, weights=args.weights)), **loading_flags(args))
    else:
        vlm = load(args.variant, **loading_flags(args))
    dataset = SyntheticVQA(args.split, seed=args.seed, image_size=vlm.scene_size)
    result = evaluate(vlm.model, vlm.processor, dataset, limit=args.limit, blind=not args.no_blind, progress=True)
    result = {
        "model": args.variant,
        **({"weights": str(args.weights)} if args.weights else {}),
        "split": args.split,
        "seed": args.seed,
        **result,
    }
    from ..models.organism import planted_layers_of

    layers = planted_layers_of(vlm.config)
    if layers is not None:  # a planted organism: its ground truth, verified on the same samples
        from ..models.organism.planted import verify_planted

        result.update(verify_planted(vlm.model, vlm.processor, dataset, layers, limit=result["n"]))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"{args.variant} on {args.split} (n={result['n']}): accuracy {result['accuracy']:.3f}"
            + (f", blind {result['blind_accuracy']:.3f}" if "blind_accuracy" in result else "")
        )
        for kind, value in result["per_kind"].items():
            print(f"  {kind:<10} {value:.3f}")
        if layers is not None:
            print(
                f"  planted layers {layers}: outside-S text->image mass at most {result['outside_mass_max']:.2e}; "
                f"accuracy with text->image cut outside S {result['knockout_outside_accuracy']:.3f}, "
                f"inside S {result['knockout_inside_accuracy']:.3f}"
            )
    return 0


def _test_results(variant: str, limit: int | None, flags: dict | None = None) -> dict:
    """The test split's accuracy and blind accuracy of ``variant``; a planted variant's verification
    too (:func:`interp.models.organism.planted.verify_planted`, as ``interp organism eval`` gives it)."""
    from .. import load
    from ..data.synthetic import SyntheticVQA
    from ..models.organism import planted_layers_of
    from ..models.organism.evaluate import evaluate

    vlm = load(variant, **(flags or {}))
    dataset = SyntheticVQA("test", seed=0, image_size=vlm.scene_size)
    result = evaluate(vlm.model, vlm.processor, dataset, limit=limit, progress=True)
    print(f"{variant}: accuracy {result['accuracy']:.3f}, blind {result['blind_accuracy']:.3f}")
    layers = planted_layers_of(vlm.config)
    if layers is not None:
        from ..models.organism.planted import verify_planted

        result = {"model": variant, "split": "test", "seed": 0, **result}
        result.update(verify_planted(vlm.model, vlm.processor, dataset, layers, limit=result["n"]))
        print(f"{variant}: outside-S text->image mass at most {result['outside_mass_max']:.2e}")
    return result


def _planted_card(args) -> int:
    from ..models.organism import PLANTED_VARIANTS, WEIGHTS_DIR, weights_path
    from ..models.organism.card_planted import write_planted_card

    weights = {variant: weights_path(variant) for variant in PLANTED_VARIANTS}  # every one shipped: one line if not
    out = _output_dir(args.out) if args.out else default_organism_dir("cards", "planted")
    run = Path(args.run) if args.run else WEIGHTS_DIR / "planted"
    logs = {}
    for variant in PLANTED_VARIANTS:
        log = run / f"{variant}.training_log.json"
        logs[variant] = json.loads(log.read_text()) if log.is_file() else None
    results = {variant: _test_results(variant, args.limit, loading_flags(args)) for variant in PLANTED_VARIANTS}
    print(f"wrote {write_planted_card(results, logs, weights, out)}")
    return 0


def _organism_card(args) -> int:
    from ..models.organism import LLAVA_VARIANTS, QWEN_VARIANTS, WEIGHTS_DIR, weights_path

    if args.planted:
        return _planted_card(args)
    out = _output_dir(args.out) if args.out else default_organism_dir("cards", args.arch)
    if args.arch == "qwen2_vl":
        from ..models.organism.card_qwen2vl import write_qwen_card

        (variant,) = QWEN_VARIANTS
        run = Path(args.run) if args.run else WEIGHTS_DIR / "qwen2vl"
        if args.results:
            result = json.loads(Path(args.results).read_text())
            if result.get("model") != variant or result.get("split") != "test" or "blind_accuracy" not in result:
                raise InterpError(f"{args.results} is not a test-split evaluation of {variant} with the blind run.")
        else:
            result = _test_results(variant, args.limit, loading_flags(args))
        print(f"wrote {write_qwen_card(run, result, out, weights_path(variant))}")
        return 0
    from ..models.organism.card import write_card

    if args.results:
        raise InterpError("--results belongs to --arch qwen2_vl (the LLaVA card evaluates both variants).")
    run = Path(args.run) if args.run else WEIGHTS_DIR
    results = {variant: _test_results(variant, args.limit, loading_flags(args)) for variant in LLAVA_VARIANTS}
    print(f"wrote {write_card(run, results, out)}")
    return 0


def add_parsers(sub) -> None:
    """Add this module's commands to the ``interp`` parser's subcommands."""
    organism = sub.add_parser("organism", help="the embedded model organism: train or evaluate it")
    org_sub = organism.add_subparsers(dest="organism_command", required=True)
    from ..models.organism import VARIANTS as organism_variants

    org_train = org_sub.add_parser("train", help="train an organism (seeded); writes a run directory")
    org_train.add_argument(
        "--arch",
        default="llava",
        choices=ORGANISM_ARCHS,
        help="llava (default: the organism) or qwen2_vl (organism-qwen2vl)",
    )
    org_train.add_argument("--seed", type=int, default=None)
    org_train.add_argument("--tower-steps", type=int, default=None)
    org_train.add_argument("--align-steps", type=int, default=None)
    org_train.add_argument("--adapt-steps", type=int, default=None)
    org_train.add_argument("--polish-steps", type=int, default=None)
    org_train.add_argument("--batch", type=int, default=None)
    org_train.add_argument(
        "--focus-fraction",
        type=float,
        default=None,
        help="share of each answer batch drawn from the --focus-kinds questions (0: none)",
    )
    org_train.add_argument(
        "--focus-kinds",
        default=None,
        help="comma-separated question kinds the focus share draws from (default: counting,spatial)",
    )
    org_train.add_argument(
        "--no-centre-marker",
        action="store_true",
        help="ablation (llava): no object-centre head in tower pre-training, no ' object' mark",
    )
    org_train.add_argument("--lora-rank", type=int, default=None, help="qwen2_vl: LoRA rank on the LM's q/k/v/o")
    org_train.add_argument(
        "--full-attention",
        action="store_true",
        help="qwen2_vl: train the LM's q/k/v/o in full (as the LLaVA organism does; lr 3e-4) "
        "instead of LoRA; their change ships as int8 codes",
    )
    org_train.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help="qwen2_vl: LoRA alpha (the update is scaled by alpha / rank; default 64). With a "
        "larger --lora-rank, alpha x sqrt(rank / 32) keeps the rank-32 run's step size",
    )
    org_train.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="qwen2_vl: minutes for the whole run; stage 2's steps shrink to fit",
    )
    org_train.add_argument(
        "--device",
        default=None,
        help="train on this device (default cpu; e.g. cuda: the recipes' CPU-hours become minutes)",
    )
    org_train.add_argument(
        "--position-weight",
        type=float,
        default=None,
        help="qwen2_vl: stage 0 also learns each token's absolute (row, column) with this loss "
        "weight (default 0: off; the tower has only relative positions)",
    )
    org_train.add_argument(
        "--position-words",
        action="store_true",
        help="qwen2_vl: stage 0b writes where each token is into its word target (left/right, above/below)",
    )
    org_train.add_argument(
        "--checkpoint-dir",
        default=None,
        help="qwen2_vl: write the trained weights here at every validation (not for shipping)",
    )
    org_train.add_argument(
        "--resume-from",
        default=None,
        help="qwen2_vl: continue a run from the stage2-resume.pt or stage3-resume.pt its "
        "--checkpoint-dir holds (same settings and --tower-from; a stage-2 state may add "
        "--polish-steps; the result equals the uninterrupted run's)",
    )
    org_train.add_argument(
        "--tower-from",
        default=None,
        help="qwen2_vl: skip stage 0 and take the tower from this file (written by the same "
        "recipe and seed, e.g. the shipped organism-qwen2vl.safetensors)",
    )
    from ..models.organism import PLANTED_LAYERS

    org_train.add_argument(
        "--planted",
        default=None,
        choices=list(PLANTED_LAYERS),
        help="train a planted-fusion variant from the shipped organism: text reads the image only at its layers",
    )
    org_train.add_argument(
        "--planted-layers", default=None, help="planted: the reading layers S, comma-separated (default: the variant's)"
    )
    org_train.add_argument(
        "--block-steps", type=int, default=None, help="planted: steps with text->image cut outside S"
    )
    org_train.add_argument(
        "--release-steps", type=int, default=None, help="planted: steps with the cut lifted and the mass penalty on"
    )
    org_train.add_argument(
        "--out", default=None, help="run directory (default: ~/.cache/interp/organism-runs/<arch>-<time>)"
    )
    org_train.set_defaults(func=_organism_train)
    org_eval = org_sub.add_parser("eval", help="accuracy on the synthetic benchmark, with and without the image")
    org_eval.add_argument("--variant", default="organism", choices=list(organism_variants))
    org_eval.add_argument("--split", default="test", choices=["train", "val", "test"])
    org_eval.add_argument("--limit", type=positive_int, default=None)
    org_eval.add_argument("--seed", type=int, default=0)
    org_eval.add_argument("--no-blind", action="store_true", help="skip the blank-image run")
    org_eval.add_argument(
        "--weights",
        default=None,
        help="evaluate this weights file of the variant's recipe (e.g. a training run's "
        "organism-qwen2vl-stage2.safetensors or a checkpoint) instead of the shipped one",
    )
    org_eval.add_argument("--json", action="store_true")
    add_model_args(org_eval, model=False)
    org_eval.set_defaults(func=_organism_eval)
    org_card = org_sub.add_parser("card", help="evaluate the shipped weights on the test split and write a model card")
    org_card.add_argument("--arch", default="llava", choices=ORGANISM_ARCHS)
    org_card.add_argument(
        "--run", default=None, help="directory with the run's training_log.json (default: the shipped one)"
    )
    org_card.add_argument(
        "--results", default=None, help="qwen2_vl: an `organism eval --json` output to use instead of evaluating again"
    )
    org_card.add_argument(
        "--planted",
        action="store_true",
        help="the planted-fusion variants' card (their training logs: --run DIR, default weights/planted)",
    )
    org_card.add_argument("--limit", type=positive_int, default=None)
    org_card.add_argument(
        "--out", default=None, help="directory for the card (default: ~/.cache/interp/organism-cards/<arch>-<time>)"
    )
    add_model_args(org_card, model=False)
    org_card.set_defaults(func=_organism_card)
