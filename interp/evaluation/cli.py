"""``interp evaluate`` and ``interp merge``.

::

    interp evaluate --model llava-hf/llava-1.5-7b-hf --task textvqa --data-dir /data/textvqa \\
        --out runs/textvqa.jsonl [--limit N] [--shard i/n] [--batch-size B] \\
        [--prompt-suffix S] [--max-new-tokens K] [--split S] [--check-images] [--json]
    interp evaluate ... [--metric lmms|wcd|both] [--temperature T --seeds K]
    interp merge --out runs/textvqa.jsonl runs/textvqa.1of4.jsonl ... runs/textvqa.4of4.jsonl [--force]

``evaluate`` prints the task's aggregate metrics (``--json``: as one JSON object).
Run the same command again to resume a killed run. ``--task synthetic`` needs no
``--data-dir``. ``--metric`` adds the authors' lenient metric (``wcd_score``, 0-100,
:func:`interp.data.metrics.wcd_score`) beside lmms-eval's (both by default for TextVQA,
VizWiz, VQAv2, OK-VQA, GQA and DocVQA). ``--temperature T --seeds K`` samples K runs
(``OUT.seed0.jsonl`` ...), prints each run's summary under ``runs`` (``--json``) and the
mean, sd, min and max across seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def task_name(text: str) -> str:
    """An ``argparse`` type: one registered task (the registry loads only when parsing ``--task``)."""
    import argparse

    from ..data.tasks import TASKS

    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"one task at a time, got {text!r}")
    if names[0] not in TASKS:
        raise argparse.ArgumentTypeError(f"unknown task {names[0]!r}; choose from {', '.join(TASKS)}")
    return names[0]


def add_commands(subparsers) -> None:
    """Register ``evaluate`` and ``merge`` on the ``interp`` command's subparsers."""
    from ..cli_args import add_model_args, positive_int

    evaluate = subparsers.add_parser(
        "evaluate",
        help="run a model on a VQA benchmark (resumable, shardable)",
        description="Answer and score every question of a benchmark; with --out, rows are appended "
        "as they come and rerunning the command resumes.",
    )
    add_model_args(evaluate, default=None)  # --model (or --model_args pretrained=...), --dtype, --device-map, ...
    evaluate.add_argument(
        "--task",
        "--tasks",
        dest="task",
        required=True,
        type=task_name,
        help="the benchmark, e.g. textvqa or synthetic (a wrong name lists them all)",
    )
    evaluate.add_argument("--data-dir", default=None, help="the benchmark's files (official or a local HF copy)")
    evaluate.add_argument("--split", default=None, help="default: the task's (e.g. validation)")
    evaluate.add_argument("--limit", type=positive_int, default=None, help="only the first N questions")
    evaluate.add_argument(
        "--out",
        "--output_path",
        dest="out",
        default=None,
        help="per-sample results JSONL (resumed if it exists); a directory: <task>.jsonl in it",
    )
    evaluate.add_argument("--shard", default=None, help="i/n: run the i-th of n slices (1-based)")
    evaluate.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=positive_int,
        default=None,
        help="questions per generate call (llava family)",
    )
    evaluate.add_argument(
        "--prompt-suffix",
        default=None,
        help="text after the question, on a new line (default: the task's; '' for none)",
    )
    evaluate.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the task's")
    evaluate.add_argument("--check-images", action="store_true", help="check every image exists before starting")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")
    evaluate.add_argument(
        "--dry-run",
        action="store_true",
        help="print what one generate batch will hold in memory (from the config and the first question; "
        "no weights load), then exit",
    )
    evaluate.add_argument(
        "--metric",
        default=None,
        choices=["lmms", "wcd", "both"],
        help="lmms: lmms-eval's metric; wcd: the authors' lenient get_score.py metric (0-100); "
        "default both for the tasks the authors score, else lmms",
    )
    evaluate.add_argument(
        "--temperature", type=float, default=None, help="sample at this temperature instead of greedy decoding"
    )
    evaluate.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="with --temperature: K sampling runs (seeds 0..K-1, one results file each: "
        "OUT.seed<k>.jsonl); the summary gives each run and the mean and spread",
    )
    evaluate.set_defaults(func=_evaluate)

    merge = subparsers.add_parser(
        "merge",
        help="merge the results files of a sharded evaluation",
        description="Check that the files are shards 1..n of one run, complete and "
        "disjoint, and write them as one file in the task's order.",
    )
    merge.add_argument("--out", required=True, help="the merged JSONL")
    merge.add_argument("shards", nargs="+", help="the shards' JSONL files")
    merge.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    merge.add_argument("--json", action="store_true", help="print the summary as JSON")
    merge.set_defaults(func=_merge)


def _flatten(summary: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in summary.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _print_summary(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=1))
        return
    where = f", {report['source']}" if report.get("source") else ""
    print(f"{report['task']} ({report['split']}{where}) on {report['model']}: {report['summary']['n']} questions")
    metrics = _flatten({k: v for k, v in report["summary"].items() if k != "n"})
    width = max((len(key) for key, _ in metrics), default=0)
    for key, value in metrics:
        print(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    if report.get("out"):
        print(f"wrote {report['out']}")


def _metric_choice(task_name: str, metric: str | None) -> tuple[bool, bool]:
    """``(lmms, wcd)``: which metrics ``--metric`` asks for on ``task_name``."""
    from ..data.tasks import wcd_tasks
    from ..errors import InterpError

    scored = wcd_tasks()
    if metric in ("wcd", "both") and task_name not in scored:
        raise InterpError(
            f"--metric {metric}: the authors' get_score.py has no metric for task {task_name!r} "
            f"(it scores {', '.join(scored)}); use --metric lmms"
        )
    if metric is None:
        metric = "both" if task_name in scored else "lmms"
    return metric in ("lmms", "both"), metric in ("wcd", "both")


def _seed_runs(args) -> list[int | None]:
    """The runs ``--temperature/--seeds`` ask for: ``[None]`` (greedy) or seeds ``0..K-1``."""
    from ..errors import InterpError

    if args.temperature is None:
        if args.seeds not in (None, 1):
            raise InterpError("--seeds needs --temperature: greedy decoding gives the same answers every run")
        return [None]
    if not args.temperature > 0:
        raise InterpError(f"--temperature must be > 0, got {args.temperature}")
    seeds = 1 if args.seeds is None else args.seeds
    if seeds < 1:
        raise InterpError(f"--seeds must be a positive integer, got {seeds}")
    return list(range(seeds))


def _seed_out(out: str | None, seed: int | None, n_runs: int) -> str | None:
    """``OUT.seed<k>.jsonl`` for sampling run k (greedy: ``OUT`` itself)."""
    if out is None or seed is None:
        return out
    path = Path(out)
    return str(path.with_name(f"{path.stem}.seed{seed}{path.suffix or '.jsonl'}"))


def _spread(summaries: list[dict]) -> dict:
    """Mean, sample sd, min and max across runs of every numeric summary field."""
    import statistics

    out = {}
    for key, value in summaries[0].items():
        if key == "n":
            continue
        if isinstance(value, dict):
            out[key] = _spread([s[key] for s in summaries])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [float(s[key]) for s in summaries]
            out[key] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
                "min": min(values),
                "max": max(values),
            }
    return out


def _evaluate(args) -> int:
    from .. import load
    from ..cli_args import model_and_kwargs
    from ..data.metrics import wcd_aggregate
    from ..data.tasks import load_task
    from .runner import can_batch, evaluate, summarize
    from .shards import parse_shard

    parse_shard(args.shard)  # a bad --shard fails before anything loads
    use_lmms, use_wcd = _metric_choice(args.task, args.metric)
    runs = _seed_runs(args)
    model, load_kwargs = model_and_kwargs(args)
    if args.out and (Path(args.out).is_dir() or args.out.endswith(("/", "\\"))):  # lmms-eval's --output_path DIR
        args.out = str(Path(args.out) / f"{args.task}.jsonl")
    if args.out is not None:  # so does an --out that cannot be written, is in use or is not a results file
        from .results import check_results_out

        for seed in runs:
            check_results_out(Path(_seed_out(args.out, seed, len(runs))))
    from ..data.tasks import get_benchmark
    from .runner import first_batch_plan

    if args.dry_run:  # the config and processor only: the weights stay where they are
        load_kwargs = {"remote": True, **{k: v for k, v in load_kwargs.items() if k == "attn_implementation"}}
    if get_benchmark(args.task).draws_images:  # its images are drawn at the model's scene size: the model first
        vlm = load(model, **load_kwargs)
        task = load_task(args.task, args.data_dir, split=args.split, limit=args.limit, image_size=vlm.scene_size)
    else:  # a missing data directory or image is one line before the model loads
        task = load_task(args.task, args.data_dir, split=args.split, limit=args.limit, check_images=args.check_images)
        vlm = load(model, **load_kwargs)
    plan = first_batch_plan(
        vlm, task, batch_size=args.batch_size, prompt_suffix=args.prompt_suffix, max_new_tokens=args.max_new_tokens
    )
    if args.dry_run:
        print("\n".join(plan.lines()))
        return 0
    print(plan.summary("evaluate"), file=sys.stderr)
    if args.batch_size not in (None, 1) and not can_batch(vlm):
        print(
            f"note: {vlm.config.model_type} cannot be batched here; answering one question at a time", file=sys.stderr
        )
    per_run = []
    for seed in runs:
        out = _seed_out(args.out, seed, len(runs))
        rows = evaluate(
            vlm,
            task,
            out=out,
            limit=args.limit,
            shard=args.shard,
            prompt_suffix=args.prompt_suffix,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            temperature=args.temperature,
            seed=seed or 0,
        )
        summary = summarize(task, rows) if use_lmms else {"n": len(rows)}
        if use_wcd:
            summary.update(wcd_aggregate(task.name, rows.to_dict("records")))
        per_run.append({"seed": seed, "out": out, "summary": summary})
    report = {
        "task": task.name,
        "split": task.split,
        "source": task.source,
        "model": vlm.name,
        "shard": args.shard,
        "out": per_run[0]["out"],
        "summary": per_run[0]["summary"],
    }
    if args.temperature is not None:
        report["decoding"] = {"temperature": args.temperature, "seeds": len(runs)}
        report["runs"] = per_run
        report["across_seeds"] = _spread([run["summary"] for run in per_run])
        report["summary"] = {"n": per_run[0]["summary"]["n"], **_means(report["across_seeds"])}
    _print_summary(report, args.json)
    if args.temperature is not None and not args.json and len(runs) > 1:
        print(f"mean over {len(runs)} seeds above; spread across seeds (sd, min..max):")
        for key, stats in _flat_stats(report["across_seeds"]):
            print(f"  {key}  sd {stats['sd']:.4f}  {stats['min']:.4f}..{stats['max']:.4f}")
    return 0


def _means(spread: dict) -> dict:
    return {k: v["mean"] if "mean" in v and not isinstance(v["mean"], dict) else _means(v) for k, v in spread.items()}


def _flat_stats(spread: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, value in spread.items():
        if "mean" in value and not isinstance(value["mean"], dict):
            out.append((f"{prefix}{key}", value))
        else:
            out += _flat_stats(value, f"{prefix}{key}.")
    return out


def _merge(args) -> int:
    from .results import read_meta
    from .runner import summarize
    from .shards import merge_shards

    rows = merge_shards(args.shards, args.out, force=args.force)
    meta = read_meta(Path(args.out))
    report = {
        "task": meta["task"],
        "split": meta["split"],
        "model": meta["model"],
        "out": args.out,
        "shards": len(args.shards),
        "summary": summarize(meta["task"], rows),
    }
    _print_summary(report, args.json)
    return 0


__all__ = ["add_commands"]
