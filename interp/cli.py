"""Command line: ``interp families | hooks | quickstart | reproduce | patch | ablate-method | explore | compare | organism ...``.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .cli_args import Parser, add_model_args, decode_batch, model_and_kwargs, non_empty, non_negative_int, positive_int
from .cli_args import load_kwargs as loading_flags
from .errors import InterpError
from .options import GPU_BATCH_SIZE, MODES, PAPER_MASK_SCALE, SCORINGS


def _families(args) -> int:
    from .models.adapters import all_adapters

    for adapter in all_adapters():
        for model_type in adapter.model_types:
            print(f"{model_type:<18}{adapter.name:<14}{adapter.notes}")
    return 0


def _hooks(args) -> int:
    """The hook names from the model's config alone: no weights are read."""
    from .hooks import all_hook_names
    from .models.adapters import adapter_for
    from .models.loading import load_config

    config = load_config(args.model)
    adapter = adapter_for(config)
    for name in all_hook_names(adapter.n_layers(config), adapter.n_vision_layers_in_config(config)):
        print(name)
    return 0


def _demo_sample(image: Any, question: str | None, image_size: int):
    """The user's image and question, or test sample 0 of the synthetic benchmark."""
    if image is not None:
        return image, question or "What is in the image?"
    from .data.synthetic import SyntheticVQA

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

    from . import RecordAttention, ScaleImageTokens, load
    from .validate import max_new_tokens as check_max_new_tokens

    check_max_new_tokens(max_new_tokens)
    if question is not None and not question.strip():
        raise InterpError("the question is empty; ask something, or leave it out for the benchmark scene's question")
    if image is not None:
        from .inputs import load_image

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


def _output_dir(path: str | Path) -> Path:
    """``path`` checked writable as a directory (created if missing): one line if not, before
    any model loads or anything is computed (:func:`interp.outputs.check_output`)."""
    from .outputs import check_output

    return check_output(Path(path), "dir", lock=False)


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


ORGANISM_ARCHS = ("llava", "qwen2_vl")
# train flags every architecture has (default: that architecture's config default)
_SHARED_TRAIN_FIELDS = ("seed", "tower_steps", "align_steps", "adapt_steps", "polish_steps", "batch", "focus_fraction")


def default_organism_dir(kind: str, arch: str) -> Path:
    """Where ``interp organism train``/``card`` write without ``--out``: a user directory
    (``~/.cache/interp/organism-<kind>/<arch>-<time>``), never the installed package."""
    import time

    from .models.organism.smollm2 import cache_root

    return cache_root() / f"organism-{kind}" / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def _focus_kinds(text: str) -> tuple[str, ...]:
    """``--focus-kinds``: question kinds separated by commas (one line if any is unknown)."""
    from .data.synthetic import QUESTION_KINDS

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
        from .models.organism.train_qwen2vl import QwenTrainConfig

        if args.no_centre_marker:
            raise InterpError(
                "--no-centre-marker is a LLaVA-organism ablation; the qwen2_vl recipe always marks centres."
            )
        given.update(_qwen_train_fields(args))
        return QwenTrainConfig(**given)
    from .models.organism.train import TrainConfig

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
    from .models.organism.planted import PlantedConfig, check_layers, organism_layers, planted_layers

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
    from .models.organism.planted import train_planted

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
        from .models.organism.train_qwen2vl import train_qwen2vl

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
        from .models.organism.train import train

        summary = train(config, out)
    print(json.dumps(summary["seconds"]))
    print(f"wrote {out}")
    return 0


def _scene_size(vlm) -> int:
    """The synthetic scenes' side for a model (:attr:`interp.models.vlm.VLM.scene_size`)."""
    return vlm.scene_size


def _organism_eval(args) -> int:
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism.evaluate import evaluate

    if args.weights:  # a file of the variant's recipe (a run's checkpoint), not the shipped one
        from .models.organism import organism_dir

        vlm = load(str(organism_dir(args.variant, weights=args.weights)), **loading_flags(args))
    else:
        vlm = load(args.variant, **loading_flags(args))
    dataset = SyntheticVQA(args.split, seed=args.seed, image_size=_scene_size(vlm))
    result = evaluate(vlm.model, vlm.processor, dataset, limit=args.limit, blind=not args.no_blind, progress=True)
    result = {
        "model": args.variant,
        **({"weights": str(args.weights)} if args.weights else {}),
        "split": args.split,
        "seed": args.seed,
        **result,
    }
    from .models.organism import planted_layers_of

    layers = planted_layers_of(vlm.config)
    if layers is not None:  # a planted organism: its ground truth, verified on the same samples
        from .models.organism.planted import verify_planted

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
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism.evaluate import evaluate

    vlm = load(variant, **(flags or {}))
    dataset = SyntheticVQA("test", seed=0, image_size=_scene_size(vlm))
    result = evaluate(vlm.model, vlm.processor, dataset, limit=limit, progress=True)
    print(f"{variant}: accuracy {result['accuracy']:.3f}, blind {result['blind_accuracy']:.3f}")
    return result


def _planted_results(variant: str, limit: int | None, flags: dict) -> dict:
    """``interp organism eval --variant VARIANT --json`` on the test split: accuracy, blind, verification."""
    from . import load
    from .data.synthetic import SyntheticVQA
    from .models.organism import planted_layers_of
    from .models.organism.evaluate import evaluate
    from .models.organism.planted import verify_planted

    vlm = load(variant, **flags)
    dataset = SyntheticVQA("test", seed=0, image_size=_scene_size(vlm))
    result = {"model": variant, "split": "test", "seed": 0}
    result.update(evaluate(vlm.model, vlm.processor, dataset, limit=limit, progress=True))
    result.update(verify_planted(vlm.model, vlm.processor, dataset, planted_layers_of(vlm.config), limit=result["n"]))
    print(f"{variant}: accuracy {result['accuracy']:.3f}, outside-S mass at most {result['outside_mass_max']:.2e}")
    return result


def _planted_card(args) -> int:
    from .models.organism import PLANTED_VARIANTS, WEIGHTS_DIR, weights_path
    from .models.organism.card_planted import write_planted_card

    weights = {variant: weights_path(variant) for variant in PLANTED_VARIANTS}  # every one shipped: one line if not
    out = _output_dir(args.out) if args.out else default_organism_dir("cards", "planted")
    run = Path(args.run) if args.run else WEIGHTS_DIR / "planted"
    logs = {}
    for variant in PLANTED_VARIANTS:
        log = run / f"{variant}.training_log.json"
        logs[variant] = json.loads(log.read_text()) if log.is_file() else None
    results = {variant: _planted_results(variant, args.limit, loading_flags(args)) for variant in PLANTED_VARIANTS}
    print(f"wrote {write_planted_card(results, logs, weights, out)}")
    return 0


def _organism_card(args) -> int:
    from .models.organism import LLAVA_VARIANTS, QWEN_VARIANTS, WEIGHTS_DIR, weights_path

    if args.planted:
        return _planted_card(args)
    out = _output_dir(args.out) if args.out else default_organism_dir("cards", args.arch)
    if args.arch == "qwen2_vl":
        from .models.organism.card_qwen2vl import write_qwen_card

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
    from .models.organism.card import write_card

    if args.results:
        raise InterpError("--results belongs to --arch qwen2_vl (the LLaVA card evaluates both variants).")
    run = Path(args.run) if args.run else WEIGHTS_DIR
    results = {variant: _test_results(variant, args.limit, loading_flags(args)) for variant in LLAVA_VARIANTS}
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


def _sample_plan(vlm, samples, config, dtype_name: str | None):
    """What the first sample of a reproduce run will hold and run (:mod:`interp.planner`)."""
    import torch

    from .analysis.items import as_items
    from .engine.memory import conditions_within, free_bytes, kv_bytes
    from .planner import plan_sample

    item = as_items(samples, 1)[0]
    prepared = vlm.prepare(item.image, item.question)
    dtype = getattr(torch, dtype_name) if dtype_name not in (None, "auto") else vlm.dtype
    decode = config.decode_batch
    if config.scoring == "generate" and decode == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tokens = prepared.seq_len + 8
        decode = conditions_within(free_bytes(device), kv_bytes(vlm, tokens) * dtype.itemsize // vlm.dtype.itemsize)
    weights = sum(p.numel() for p in vlm.model.parameters()) * dtype.itemsize
    return plan_sample(
        vlm.adapter,
        vlm.config,
        dtype,
        prepared,
        variants=tuple(config.variants),
        restart_batch=config.restart_batch,
        scoring=config.scoring,
        decode_batch=None if decode in (None, "all", "auto") else int(decode),
        attn_implementation=vlm.attn_implementation,
        weights=weights,
    )


def _reproduce(args) -> int:
    from .evaluation.shards import parse_shard

    shard = parse_shard(args.shard)
    if args.remote:
        from .validate import ndif_api_key

        ndif_api_key()  # before anything loads
    _output_dir(args.out)  # so is the output (before torch is even imported)
    model, load_kwargs = model_and_kwargs(args)

    from . import load
    from .analysis.reproduce import ReproduceConfig, launched_by_torchrun, reproduce

    if launched_by_torchrun() and load_kwargs.get("device_map") is None:
        import torch

        if torch.cuda.is_available():  # one GPU per rank
            load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if args.dry_run:  # the config and processor only: the weights stay where they are
        vlm = load(model, remote=True, **{k: v for k, v in load_kwargs.items() if k == "attn_implementation"})
    else:
        vlm = load(model, remote=bool(args.remote), **load_kwargs)
    image_size = _scene_size(vlm)
    samples, label = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    given = {
        "window": args.window,
        "scale": args.scale,
        "seed": args.seed,
        "n_boot": args.n_boot,
        "keep_prefix_mb": args.keep_prefix_mb,
        "patching_pairs": args.patching,
        "patching_cell_pairs": args.patching_cell_pairs,
        "lens_samples": args.lens,
        "ablation_seeds": args.method_ablation,
        "batch_size": args.batch_size,
        "restart_batch": args.restart_batch,
        "decode_batch": args.decode_batch,
    }
    config = ReproduceConfig(
        scoring=args.scoring,
        mode=args.mode,
        remote=True if args.remote else None,
        **{key: value for key, value in given.items() if value is not None},
    )
    plan = _sample_plan(vlm, samples, config, load_kwargs.get("dtype"))
    if args.dry_run:
        print("\n".join(plan.lines()))
        return 0
    print(plan.summary("reproduce"), file=sys.stderr)
    report = reproduce(vlm, samples, args.out, dataset=label, limit=args.limit, config=config, shard=shard)
    if report is None:
        if not launched_by_torchrun() or os.environ.get("RANK", "0") == "0":
            print(
                "this shard's samples are done; the report is written by the last shard to finish its second "
                "phase: rerun the shards whose first phase finished before the others' (or run the same "
                f"command without --shard to finish everything into {args.out})"
            )
        return 0
    single = report["masking"]["findings"].get("single", {})
    print(
        f"{report['model']} on {label}: {report['n_samples']} samples, baseline accuracy "
        f"{report['baseline_accuracy']['mean']:.3f}"
    )
    if single:
        print(single["statement"])
    print(f"wrote {Path(args.out) / 'report.md'}, report.json and figures")
    return 0


def _faithfulness(args) -> int:
    """``interp faithfulness``: reproduce's analyses and the localisation benchmark on a planted organism."""
    from . import load
    from .analysis.faithfulness import check_truth
    from .analysis.reproduce import ReproduceConfig, reproduce
    from .data.synthetic import SyntheticVQA

    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, **load_kwargs)
    truth = check_truth(vlm)  # before anything is written
    out = _output_dir(args.out)
    config = ReproduceConfig(
        patching_pairs=0, lens_samples=0, **({"n_boot": args.n_boot} if args.n_boot else {}), seed=args.seed
    )
    data = SyntheticVQA(args.split, seed=0, image_size=_scene_size(vlm))
    report = reproduce(vlm, data, out, dataset=f"synthetic:{args.split}", limit=args.limit, config=config)
    if report is None:
        return 0
    print(f"{vlm.name}: planted layers {truth}, {report['localisation']['n']} questions")
    for row in report["localisation"]["methods"]:
        print(
            f"  {row['method']:<26} reports {row['reported']}  F1 {row['f1']:.2f} [{row['f1_low']:.2f}, {row['f1_high']:.2f}]"
        )
    print(f"wrote {out / 'report.md'}, localisation.csv and figures")
    return 0


def _explore(args) -> int:
    _output_dir(args.out)
    from . import load
    from .explore import explore, read_run

    if args.run is not None:
        read_run(args.run)  # a bad run directory fails before the model loads
    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, **load_kwargs)
    image_size = _scene_size(vlm)
    samples, _ = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    page = explore(vlm, samples, args.out, run_dir=args.run, patching=args.patching, limit=args.limit)
    print(f"wrote {page.path} ({len(page.html) / 1e6:.1f} MB, self-contained: open it in a browser)")
    return 0


def _ablate_method(args) -> int:
    out = _output_dir(args.out)
    from . import load
    from .analysis.method_ablation import AblationConfig, run_method_ablation, write_outputs
    from .data.metrics import WCD_TASKS
    from .data.tasks import get_benchmark

    wcd_task = args.wcd_task or ("textvqa" if args.dataset == "synthetic" else args.dataset)
    if wcd_task not in WCD_TASKS:
        raise InterpError(
            f"no WCD metric for task {wcd_task!r}; the authors score {', '.join(WCD_TASKS)} "
            "(pass --wcd-task to score with one of their rules)"
        )
    if args.limit is not None and args.limit < 1:
        raise InterpError(f"--limit must be a positive integer, got {args.limit}")
    layers = args.dola_layers if args.dola_layers in ("low", "high") else [int(x) for x in args.dola_layers.split(",")]
    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, remote=bool(args.remote), **load_kwargs)
    image_size = _scene_size(vlm)
    samples, label = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    max_new_tokens = args.max_new_tokens or get_benchmark(args.dataset).max_new_tokens
    config = AblationConfig(
        temperature=args.temperature,
        seeds=args.seeds,
        review_layer=args.review_layer,
        ratio=args.ratio,
        dola_layers=layers,
        static_layer=args.static_layer,
        max_new_tokens=max_new_tokens,
        wcd_task=wcd_task,
        n_boot=args.n_boot,
        progress=not args.no_progress,
        remote=True if args.remote else None,
    )
    rows = run_method_ablation(vlm, samples, config=config, limit=args.limit, out=out / "method_ablation_rows.jsonl")
    settings = {**config.resolved(vlm), "model": vlm.name, "dataset": label}
    report = write_outputs(rows, settings, out, n_boot=args.n_boot)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(report["paragraph"])
        print(f"wrote {out / 'method_ablation.md'}, .json, .csv and the figure")
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
    out = _output_dir(args.out)
    from . import load
    from .analysis.image_lens import lens_section
    from .analysis.patching import default_cell_layers, first_pair_plan, patching_section, section_pairs
    from .data.synthetic import CHANGES, SyntheticVQA

    changes = tuple(c.strip() for c in args.changes.split(",") if c.strip())
    unknown = [c for c in changes if c not in CHANGES]
    if not changes or unknown:
        raise InterpError(f"--changes {args.changes!r}: use a comma-separated subset of {', '.join(CHANGES)}")
    if args.pairs < 1:
        raise InterpError(f"--pairs {args.pairs} must be at least 1")
    model, load_kwargs = model_and_kwargs(args)
    if args.dry_run:  # the config and processor only: the weights stay where they are
        vlm = load(model, remote=True, **{k: v for k, v in load_kwargs.items() if k == "attn_implementation"})
    else:
        vlm = load(model, **load_kwargs)
    image_size = _scene_size(vlm)
    data = SyntheticVQA(args.split, seed=0, image_size=image_size)
    options = {
        "cell_pairs": args.cell_pairs,
        "layers": _int_list(args.layers),
        "cell_layers": _int_list(args.cell_layers),
        "positions": tuple(g.strip() for g in args.groups.split(",") if g.strip()),
        "sites": tuple(s.strip() for s in args.sites.split(",") if s.strip()),
        "heads": _int_list(args.heads),
    }
    cell_layers = options["cell_layers"]
    plan = first_pair_plan(
        vlm,
        section_pairs(data, 1, changes, args.seed),
        **{**options, "cell_layers": default_cell_layers(vlm.n_layers) if cell_layers is None else cell_layers},
    )
    if args.dry_run:
        print("\n".join(plan.lines()))
        return 0
    print(plan.summary("patch"), file=sys.stderr)
    report, lines = patching_section(
        vlm,
        data,
        out,
        n_pairs=args.pairs,
        changes=changes,
        n_boot=args.n_boot,
        seed=args.seed,
        resume=out / "patching_sweep.partial.jsonl" if args.resume else None,
        **options,
    )
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


def _compare(args) -> int:
    from .analysis.compare import compare_json, compare_markdown, compare_runs
    from .plotting.compare import compare_curves

    labels = args.labels.split(",") if args.labels else None
    comparison = compare_runs(args.runs, labels, variant=args.variant)  # reads the runs: bad ones fail first
    out = _output_dir(args.out)
    (out / "compare.md").write_text(compare_markdown(comparison, variant=args.variant))
    (out / "compare.json").write_text(json.dumps(compare_json(comparison), indent=1))
    compare_curves(comparison, variant=args.variant, out_dir=out)
    print(f"compared {len(args.runs)} runs: wrote {out / 'compare.md'}, compare.json and compare_curves.png/.pdf")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="interp",
        description="Where does vision meet language inside a VLM?",
        epilog="First five minutes: interp quickstart (14 s on a laptop CPU, no download).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    rep = sub.add_parser("reproduce", help="run the paper's analyses and write figures and a report")
    rep.add_argument(
        "--out",
        "--output_path",
        dest="out",
        required=True,
        help="output directory (figures, report.md, report.json, CSVs)",
    )
    add_model_args(rep)
    rep.add_argument("--dataset", default="synthetic", help="synthetic (default) or an evaluation task name")
    rep.add_argument("--data-dir", default=None, help="where an evaluation task's files are")
    rep.add_argument("--split", default=None, help="dataset split (synthetic: test by default)")
    rep.add_argument("--limit", type=positive_int, default=60, help="number of samples (default 60)")
    rep.add_argument(
        "--scoring",
        default=SCORINGS[0],
        choices=SCORINGS,
        help="teacher: exact greedy match by teacher forcing (fast); generate: greedy generation, VQA-scored",
    )
    rep.add_argument(
        "--mode",
        default=MODES[0],
        choices=MODES,
        help="fast: restart from one clean pass per sample where it applies; naive: full passes",
    )
    # defaults: interp.analysis.reproduce.ReproduceConfig (one place)
    rep.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="layers per window / knockout span (default 3; at most the model's layers)",
    )
    rep.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"factor on the image-token hidden states where masked (default {PAPER_MASK_SCALE:g}, the paper's; "
        "in float16 it is exactly 0, which the report states: pass 0 to ask for that)",
    )
    rep.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    rep.add_argument("--n-boot", type=positive_int, default=None, help="bootstrap resamples (default 2000)")
    rep.add_argument(
        "--remote",
        action="store_true",
        help="run on NDIF (needs NDIF_API_KEY and a model NDIF hosts; checked before loading)",
    )
    rep.add_argument(
        "--patching",
        type=non_negative_int,
        default=None,
        metavar="PAIRS",
        help="synthetic data: counterfactual activation patching on PAIRS pairs (default 60; 0: skip; "
        "see interp patch)",
    )
    rep.add_argument(
        "--patching-cell-pairs",
        type=non_negative_int,
        default=None,
        metavar="PAIRS",
        help="of the patched pairs, how many also get per-cell maps (default 2; 0: none; a restart per image "
        "cell and cell layer: 2,304 for 576 tokens)",
    )
    rep.add_argument(
        "--lens",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="synthetic data: the image-token lens on N samples (default 60; 0: skip)",
    )
    rep.add_argument(
        "--method-ablation",
        type=int,
        default=None,
        metavar="SEEDS",
        help="add the authors'-method ablation (greedy + SEEDS sampling runs; see interp ablate-method)",
    )
    rep.add_argument(
        "--keep-prefix-mb",
        type=float,
        default=None,
        help="memory for clean prefixes kept between the two phases (default 2048)",
    )
    rep.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=positive_int,
        default=None,
        help="samples whose clean passes run as one padded forward; results equal batch 1, so a run "
        f"may resume with another (default: 1 on the CPU, {GPU_BATCH_SIZE} on a GPU; 1 for families "
        "that cannot batch)",
    )
    rep.add_argument(
        "--restart-batch",
        type=positive_int,
        default=None,
        help="a question's sweep conditions per restart forward (default 8); results equal at any "
        "value, so a run may resume with another; more uses more memory and suits a GPU",
    )
    rep.add_argument(
        "--decode-batch",
        type=decode_batch,
        default=None,
        metavar="N|auto|all",
        help="--scoring generate: a question's sweep conditions decoded together, their prompt "
        "keys/values held until then (default auto: sized from the model's keys/values and the "
        "free memory; all: every condition at once); results equal at any value",
    )
    rep.add_argument(
        "--dry-run",
        action="store_true",
        help="print what one sample will hold in memory and the layer work it runs (from the config and one "
        "prepared prompt; no weights load), then exit",
    )
    rep.add_argument(
        "--shard",
        default=None,
        help="i/n: run the i-th of n shards into the same --out (under "
        "torchrun each rank is a shard); the last shard to finish writes the report",
    )
    rep.set_defaults(func=_reproduce)

    abl = sub.add_parser(
        "ablate-method",
        help="which part of the authors' method moves accuracy (factorial ablation)",
        description="On the same questions: {greedy, sampling x seeds} x {no mask, the authors' "
        "review-layer mask} x {no DoLa, DoLa by logits JSD, DoLa by attention JSD, a "
        "static premature layer}, scored by the items' metric and the authors' lenient "
        "one. Resumable (rerun the same command).",
    )
    abl.add_argument("--out", required=True, help="output directory (rows JSONL, table CSV, report JSON/MD, figure)")
    abl.add_argument("--dataset", default="synthetic", help="synthetic (default) or an evaluation task name")
    abl.add_argument("--data-dir", default=None, help="where an evaluation task's files are")
    abl.add_argument("--split", default=None, help="dataset split (synthetic: test by default)")
    abl.add_argument("--limit", type=positive_int, default=60, help="number of questions (default 60)")
    abl.add_argument("--seeds", type=int, default=3, help="sampling runs per question (default 3)")
    abl.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default 0.2, the authors')")
    abl.add_argument(
        "--review-layer",
        type=int,
        default=None,
        help="where the authors' mask acts (default: their layer 29 of 32, scaled to the model)",
    )
    abl.add_argument("--ratio", type=float, default=0.2, help="fraction of image tokens masked (default 0.2)")
    abl.add_argument(
        "--dola-layers", default="low", help="low (default), high, or comma-separated hidden-state indices"
    )
    abl.add_argument("--static-layer", type=int, default=None, help="default: the middle candidate")
    abl.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    abl.add_argument(
        "--wcd-task",
        default=None,
        help="which authors' rule scores the answers (default: the task's; textvqa for synthetic)",
    )
    abl.add_argument("--n-boot", type=positive_int, default=2000)
    abl.add_argument("--remote", action="store_true", help="run on NDIF (needs NDIF_API_KEY)")
    abl.add_argument("--no-progress", action="store_true")
    abl.add_argument("--json", action="store_true", help="print the report as JSON")
    add_model_args(abl)
    abl.set_defaults(func=_ablate_method)

    faith = sub.add_parser(
        "faithfulness",
        help="on a planted organism: score every localisation method against its known reading layers",
        description="The masking sweep, knockouts and attention mass on a model whose text reads the image only at "
        "known layers (interp organism train --planted), each method's layers scored by precision, recall and F1.",
    )
    faith.add_argument("--out", required=True, help="output directory (report.md, localisation.csv, figures)")
    faith.add_argument("--split", default="test", choices=["train", "val", "test"])
    faith.add_argument("--limit", type=positive_int, default=200, help="questions (default 200)")
    faith.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    faith.add_argument("--n-boot", type=positive_int, default=None, help="bootstrap resamples (default 2000)")
    add_model_args(faith, default="organism-planted-late")
    faith.set_defaults(func=_faithfulness)

    patch = sub.add_parser("patch", help="counterfactual activation patching and the image-token lens (synthetic)")
    patch.add_argument("--out", required=True, help="output directory (patching.md, patching.json, CSVs, figures)")
    patch.add_argument("--split", default="test", choices=["train", "val", "test"])
    patch.add_argument("--pairs", type=int, default=60, help="counterfactual pairs (default 60)")
    patch.add_argument(
        "--changes",
        default="colour,shape,distractor",
        help="comma-separated changes taking turns (colour, shape, position, remove, distractor)",
    )
    patch.add_argument("--layers", default="all", help="layers to patch: all (default) or a comma-separated list")
    patch.add_argument(
        "--cell-layers", default=None, help="comma-separated layers of the per-cell maps (default: 4 spread out)"
    )
    patch.add_argument("--cell-pairs", type=int, default=2, help="pairs also patched cell by cell (default 2)")
    patch.add_argument(
        "--groups",
        default="changed,other_image,question,last",
        help="position groups (changed, other_image, image, question, other_text, last)",
    )
    patch.add_argument(
        "--sites",
        default="resid_pre",
        help="comma-separated sites: resid_pre (default), attn_out, mlp_out, resid_post, and z (each "
        "attention head alone, blocks.{l}.attn.hook_z); the summary reads the first whole site",
    )
    patch.add_argument("--heads", default="all", help="with --sites z: all (default) or a comma-separated head list")
    patch.add_argument("--lens", type=int, default=60, help="samples for the image-token lens (0: skip)")
    patch.add_argument("--seed", type=int, default=0)
    patch.add_argument("--n-boot", type=positive_int, default=2000)
    patch.add_argument(
        "--resume",
        action="store_true",
        help="append each pair's rows to OUT/patching_sweep.partial.jsonl (fsynced) and skip pairs already there",
    )
    patch.add_argument(
        "--dry-run",
        action="store_true",
        help="print what one pair will hold in memory and the layer work it runs (no weights load), then exit",
    )
    add_model_args(patch)
    patch.set_defaults(func=_patch)

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
    from .models.organism import PLANTED_LAYERS

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

    explore = sub.add_parser(
        "explore",
        help="write a self-contained HTML page: attention per layer and head, a run's masking curve and patching map",
        description="One index.html with everything inline (open it from disk, no server).",
    )
    explore.add_argument("--out", "--output_path", dest="out", required=True, help="directory for index.html")
    add_model_args(explore)
    explore.add_argument(
        "--run",
        default=None,
        help="an `interp reproduce` or `interp patch` output directory (report.json; its patching outputs when present)",
    )
    explore.add_argument(
        "--patching",
        default=None,
        help="a patching output: patching_sweep.csv, its row log, report.json / patching.json, or a directory holding one",
    )
    explore.add_argument("--dataset", default="synthetic", help="synthetic (default) or an evaluation task name")
    explore.add_argument("--data-dir", default=None, help="where an evaluation task's files are")
    explore.add_argument("--split", default=None)
    explore.add_argument("--limit", type=positive_int, default=4, help="samples on the page (default 4)")
    explore.set_defaults(func=_explore)

    from .evaluation.cli import add_commands as add_evaluation_commands  # interp evaluate | merge

    add_evaluation_commands(sub)
    return parser


#: commands that only read configs or files: no torch threads to size
_LIGHT_COMMANDS = ("families", "hooks", "merge", "compare")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in _LIGHT_COMMANDS:
        from .threads import set_default_threads

        set_default_threads()  # a busy machine's cores are not oversubscribed (OMP_NUM_THREADS overrides)
    try:
        return args.func(args)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
