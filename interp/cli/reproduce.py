"""``interp reproduce`` and ``interp faithfulness``: the paper's analyses, and the localisation benchmark."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..cli_args import add_model_args, decode_batch, model_and_kwargs, non_negative_int, positive_int
from ..errors import InterpError
from ..options import GPU_BATCH_SIZE, MODES, PAPER_MASK_SCALE, SCORINGS
from .common import _load_samples, _output_dir


def _sample_plan(vlm, samples, config, dtype_name: str | None):
    """What the first sample of a reproduce run will hold and run (:mod:`interp.planner`)."""
    import torch

    from ..analysis.items import as_items
    from ..engine.memory import conditions_within, free_bytes, kv_bytes
    from ..planner import plan_sample

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
    from ..evaluation.shards import parse_shard

    shard = parse_shard(args.shard)
    if args.remote:
        from ..validate import ndif_api_key

        ndif_api_key()  # before anything loads
    _output_dir(args.out)  # so is the output (before torch is even imported)
    model, load_kwargs = model_and_kwargs(args)

    from .. import load
    from ..analysis.reproduce import ReproduceConfig, launched_by_torchrun, reproduce
    from ..runfiles import FILES

    if launched_by_torchrun() and load_kwargs.get("device_map") is None:
        import torch

        if torch.cuda.is_available():  # one GPU per rank
            load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if args.dry_run:  # the config and processor only: the weights stay where they are
        vlm = load(model, remote=True, **{k: v for k, v in load_kwargs.items() if k == "attn_implementation"})
    else:
        vlm = load(model, remote=bool(args.remote), **load_kwargs)
    image_size = vlm.scene_size
    samples, label = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    given = {
        "window": args.window,
        "scale": args.scale,
        "seed": args.seed,
        "n_boot": args.n_boot,
        "keep_prefix_mb": args.keep_prefix_mb,
        "patching_pairs": args.patching,
        "patching_exact": args.patching_exact,
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
    print(f"wrote {Path(args.out) / FILES.report_md}, {FILES.report_json} and figures")
    return 0


def _faithfulness(args) -> int:
    """``interp faithfulness``: reproduce's analyses and the localisation benchmark on a planted organism."""
    from .. import load
    from ..analysis.faithfulness import check_truth
    from ..analysis.reproduce import ReproduceConfig, reproduce
    from ..runfiles import FILES
    from ..data.synthetic import SyntheticVQA

    if args.table:
        return _faithfulness_table(args)
    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, **load_kwargs)
    truth = check_truth(vlm)  # before anything is written
    out = _output_dir(args.out)
    config = ReproduceConfig(
        patching_pairs=0, lens_samples=0, **({"n_boot": args.n_boot} if args.n_boot else {}), seed=args.seed
    )
    data = SyntheticVQA(args.split, seed=0, image_size=vlm.scene_size)
    report = reproduce(vlm, data, out, dataset=f"synthetic:{args.split}", limit=args.limit, config=config)
    if report is None:
        return 0
    print(f"{vlm.name}: planted layers {truth}, {report['localisation']['n']} questions")
    for row in report["localisation"]["methods"]:
        print(
            f"  {row['method']:<26} reports {row['reported']}  F1 {row['f1']:.2f} [{row['f1_low']:.2f}, {row['f1_high']:.2f}]"
        )
    print(f"wrote {out / FILES.report_md}, localisation.csv and figures")
    return 0


def _faithfulness_table(args) -> int:
    """``interp faithfulness --table NAME=DIR ...``: the finished runs' scores side by side."""
    from ..analysis.faithfulness import benchmark_table
    from ..plotting.localisation import localisation_matrix

    runs = {}
    for entry in args.table:
        name, sep, run = entry.partition("=")
        if not sep or not name or not run:
            raise InterpError(f"--table {entry!r}: give NAME=DIR (an organism's name and its faithfulness run)")
        runs[name] = run
    table = benchmark_table(runs)
    out = _output_dir(args.out)
    table.to_csv(out / "localisation_benchmark.csv", index=False)
    localisation_matrix(table, out_dir=out)
    pivot = table.pivot_table(index="method", columns="organism", values="f1", sort=False)
    print(pivot.round(2).to_string())
    print(f"wrote {out / 'localisation_benchmark.csv'} and localisation_matrix.png / .pdf")
    return 0


def add_parsers(sub) -> None:
    """Add this module's commands to the ``interp`` parser's subcommands."""
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
        help="synthetic data: counterfactual pairs for attribution patching, every one (default 60; 0: skip "
        "patching; see interp patch)",
    )
    rep.add_argument(
        "--patching-exact",
        type=non_negative_int,
        default=None,
        metavar="PAIRS",
        help="of those pairs, the first PAIRS are also patched exactly, to validate the attribution estimate "
        "that covers them all (default 15; 0: estimate only; PAIRS >= --patching: every pair exactly)",
    )
    rep.add_argument(
        "--patching-cell-pairs",
        type=non_negative_int,
        default=None,
        metavar="PAIRS",
        help="of the exactly patched pairs, how many also get per-cell maps (default 2; 0: none; a restart per image "
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

    faith = sub.add_parser(
        "faithfulness",
        help="on a planted organism: score every localisation method against its known reading layers",
        description="The masking sweep, knockouts, attention mass and edge attribution on a model whose text reads the image only at "
        "known layers (interp organism train --planted), each method's layers scored by precision, recall and F1.",
    )
    faith.add_argument("--out", required=True, help="output directory (report.md, localisation.csv, figures)")
    faith.add_argument(
        "--table",
        nargs="+",
        default=None,
        metavar="NAME=DIR",
        help="instead of running: the finished runs' scores side by side (localisation_benchmark.csv and the "
        "methods x organisms figure)",
    )
    faith.add_argument("--split", default="test", choices=["train", "val", "test"])
    faith.add_argument("--limit", type=positive_int, default=200, help="questions (default 200)")
    faith.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    faith.add_argument("--n-boot", type=positive_int, default=None, help="bootstrap resamples (default 2000)")
    add_model_args(faith, default="organism-planted-late")
    faith.set_defaults(func=_faithfulness)
