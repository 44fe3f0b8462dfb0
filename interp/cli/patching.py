"""``interp patch``: counterfactual activation patching and the image-token lens."""

from __future__ import annotations

import json
import sys

from ..cli_args import add_model_args, model_and_kwargs, positive_int
from ..errors import InterpError
from .common import _int_list, _output_dir


def _patch(args) -> int:
    """``interp patch``: counterfactual patching and the image-token lens on the synthetic benchmark."""
    out = _output_dir(args.out)
    from .. import load
    from ..analysis.image_lens import lens_section
    from ..analysis.patching import default_cell_layers, first_pair_plan, patching_section, section_pairs
    from ..outputs import write_atomic
    from ..runfiles import FILES
    from ..data.synthetic import CHANGES, SyntheticVQA

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
    image_size = vlm.scene_size
    data = SyntheticVQA(args.split, seed=0, image_size=image_size)
    options = {
        "cell_pairs": args.cell_pairs if args.cell_pairs is not None or args.method != "exact" else 2,
        "layers": _int_list(args.layers),
        "cell_layers": _int_list(args.cell_layers),
        "positions": tuple(g.strip() for g in args.groups.split(",") if g.strip()),
        "sites": tuple(s.strip() for s in args.sites.split(",") if s.strip()),
        "heads": _int_list(args.heads),
    }
    cell_layers = options["cell_layers"]
    first = section_pairs(data, 1, changes, args.seed)
    planned = {**options, "cell_layers": default_cell_layers(vlm.n_layers) if cell_layers is None else cell_layers}
    plans = (
        [("exact patching", first_pair_plan(vlm, first, **planned))] if args.method == "exact" or args.validate else []
    )
    if args.method != "exact":
        steps = args.ig_steps if args.method == "ig" else 1
        plans.append(
            (f"attribution ({args.method})", first_pair_plan(vlm, first, **planned, method=args.method, steps=steps))
        )
    if args.dry_run:
        for name, plan in plans:
            print("\n".join([f"{name}:"] + plan.lines()))
        return 0
    for name, plan in plans:
        print(f"{name}: {plan.summary('patch')}", file=sys.stderr)
    if args.method != "exact":
        return _attribution(args, vlm, data, changes, options, out)
    report, lines = patching_section(
        vlm,
        data,
        out,
        n_pairs=args.pairs,
        changes=changes,
        n_boot=args.n_boot,
        seed=args.seed,
        resume=out / FILES.patching_partial if args.resume else None,
        **options,
    )
    result = {"model": vlm.name, "dataset": f"synthetic:{args.split}", "patching": report}
    if args.lens > 0:
        lens, lens_lines = lens_section(vlm, data, out, n=args.lens, n_boot=args.n_boot, seed=args.seed)
        result["image_lens"] = lens
        lines += lens_lines
    write_atomic(out / FILES.patching_json, json.dumps(result, indent=1))
    write_atomic(
        out / FILES.patching_md, "\n".join([f"# interp patch: {vlm.name} on synthetic:{args.split}", ""] + lines)
    )
    for line in lines[:12]:
        if line.startswith("- "):
            print(line[2:])
    print(f"wrote {out / FILES.patching_md}, {FILES.patching_json} and figures")
    return 0


def _attribution(args, vlm, data, changes, options: dict, out) -> int:
    """``interp patch --method atp|atp*|ig``: every pair estimated, ``--validate`` pairs also patched exactly."""
    from ..analysis.attribution_report import attribution_section
    from ..analysis.patching import patching_sweep, section_pairs
    from ..outputs import write_atomic
    from ..runfiles import FILES

    exact = None
    if args.validate:
        pairs = section_pairs(data, min(args.validate, args.pairs), changes, args.seed)
        exact = patching_sweep(
            vlm,
            pairs,
            **{k: v for k, v in options.items() if k not in ("cell_layers", "cell_pairs")},
            resume=out / FILES.patching_partial if args.resume else None,
        )
    report, lines = attribution_section(
        vlm,
        data,
        out,
        n_pairs=args.pairs,
        changes=changes,
        method=args.method,
        steps=args.ig_steps,
        exact=exact,
        n_boot=args.n_boot,
        seed=args.seed,
        resume=out / FILES.attribution_partial if args.resume else None,
        **options,
    )
    result = {"model": vlm.name, "dataset": f"synthetic:{args.split}", "attribution": report}
    write_atomic(out / FILES.attribution_json, json.dumps(result, indent=1))
    write_atomic(
        out / FILES.attribution_md, "\n".join([f"# interp patch --method {args.method}: {vlm.name}", ""] + lines)
    )
    for line in lines:
        if line.startswith("| ") and not line.startswith("| change"):
            print(line)
    print(f"wrote {out / FILES.attribution_md}, {FILES.attribution_json} and figures")
    return 0


def add_parsers(sub) -> None:
    """Add this module's commands to the ``interp`` parser's subcommands."""
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
    patch.add_argument(
        "--cell-pairs",
        type=int,
        default=None,
        help="pairs also patched cell by cell (default: 2 exactly; every pair with --method atp|atp*|ig)",
    )
    patch.add_argument(
        "--groups",
        default="changed,other_image,question,last",
        help="position groups (changed, other_image, image, question, other_text, last)",
    )
    patch.add_argument(
        "--sites",
        default="resid_pre",
        help="comma-separated sites: resid_pre (default), q, k, v, attn_out, mlp_out, resid_post, and z "
        "(each attention head alone, blocks.{l}.attn.hook_z); the summary reads the first whole site",
    )
    patch.add_argument("--heads", default="all", help="with --sites z: all (default) or a comma-separated head list")
    patch.add_argument(
        "--method",
        default="exact",
        choices=["exact", "atp", "atp*", "ig"],
        help="exact: activation patching (default); atp: attribution patching (one forward + backward per "
        "pair, per-cell grids for every pair); atp*: AtP* (the attention softmax recomputed at q and k, and "
        "GradDrop: one more backward per layer); ig: integrated gradients along the interpolated LM input",
    )
    patch.add_argument("--ig-steps", type=positive_int, default=8, help="--method ig: interpolation steps (default 8)")
    patch.add_argument(
        "--validate",
        type=int,
        default=10,
        help="--method atp|atp*|ig: also patch this many pairs exactly and report the agreement (default 10; 0: none)",
    )
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
