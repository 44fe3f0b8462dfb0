"""``interp ablate-method | compare | explore``: the authors' method, runs side by side, the explorer page."""

from __future__ import annotations

import json

from ..cli_args import add_model_args, model_and_kwargs, positive_int
from ..errors import InterpError
from .common import _load_samples, _output_dir


def _explore(args) -> int:
    _output_dir(args.out)
    from .. import load
    from ..explore import explore, read_run

    if args.run is not None:
        read_run(args.run)  # a bad run directory fails before the model loads
    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, **load_kwargs)
    image_size = vlm.scene_size
    samples, _ = _load_samples(args.dataset, args.data_dir, args.split, image_size)
    page = explore(vlm, samples, args.out, run_dir=args.run, patching=args.patching, limit=args.limit)
    print(f"wrote {page.path} ({len(page.html) / 1e6:.1f} MB, self-contained: open it in a browser)")
    return 0


def _ablate_method(args) -> int:
    out = _output_dir(args.out)
    from .. import load
    from ..analysis.method_ablation import AblationConfig, run_method_ablation, write_outputs
    from ..data.tasks import get_benchmark, wcd_tasks

    scored = wcd_tasks()
    wcd_task = args.wcd_task or ("textvqa" if args.dataset == "synthetic" else args.dataset)
    if wcd_task not in scored:
        raise InterpError(
            f"no WCD metric for task {wcd_task!r}; the authors score {', '.join(scored)} "
            "(pass --wcd-task to score with one of their rules)"
        )
    if args.limit is not None and args.limit < 1:
        raise InterpError(f"--limit must be a positive integer, got {args.limit}")
    layers = args.dola_layers if args.dola_layers in ("low", "high") else [int(x) for x in args.dola_layers.split(",")]
    model, load_kwargs = model_and_kwargs(args)
    vlm = load(model, remote=bool(args.remote), **load_kwargs)
    image_size = vlm.scene_size
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


def _compare(args) -> int:
    from ..analysis.compare import compare_json, compare_markdown, compare_runs
    from ..plotting.compare import compare_curves

    labels = args.labels.split(",") if args.labels else None
    comparison = compare_runs(args.runs, labels, variant=args.variant)  # reads the runs: bad ones fail first
    out = _output_dir(args.out)
    (out / "compare.md").write_text(compare_markdown(comparison, variant=args.variant))
    (out / "compare.json").write_text(json.dumps(compare_json(comparison), indent=1))
    compare_curves(comparison, variant=args.variant, out_dir=out)
    print(f"compared {len(args.runs)} runs: wrote {out / 'compare.md'}, compare.json and compare_curves.png/.pdf")
    return 0


def add_parsers(sub) -> None:
    """Add this module's commands to the ``interp`` parser's subcommands."""
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

    comp = sub.add_parser("compare", help="several reproduce runs side by side on relative depth")
    comp.add_argument("runs", nargs="+", help="run directories written by `interp reproduce --out`")
    comp.add_argument("--out", required=True, help="directory for compare.md, compare.json and the figures")
    comp.add_argument("--labels", default=None, help="comma-separated names of the runs (default: their models)")
    comp.add_argument("--variant", default="single", help="masking variant for the curves and findings")
    comp.set_defaults(func=_compare)

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
