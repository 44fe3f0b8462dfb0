"""Benchmark ``attribution``: attribution patching against exact activation patching on the organism.

For counterfactual pairs of the synthetic benchmark (the colour, shape and distractor changes taking
turns), every (site, layer, position group) condition is patched exactly
(:func:`interp.analysis.patching.patching_sweep`, fast mode) and estimated
(:func:`interp.analysis.attribution.attribution_sweep`, ``atp``; ``ig`` at ``resid_pre``; every
head alone at :data:`HEAD_GROUPS`; ``atp*`` with its QK fix at ``q`` / ``k`` and GradDrop). Reported,
from one run:

* **agreement** per (change, site, method): Spearman's rho of the conditions' mean effects with a
  95% bootstrap CI over pairs, top-10 overlap, sign agreement where ``|exact| > 0.1``
  (:func:`interp.analysis.attribution.agreement`);
* **counts** per pair, by a forward hook on every decoder layer: layer x row forwards of each
  method for the layer x group grid and for the per-cell grid at one layer (cells are free for
  attribution: the same two forwards and one backward); backward passes;
* **wall ratio** exact / attribution for the layer x group grid (one run, the same pairs);
* **peak memory** of one attribution pair over one plain forward (resident memory above the
  loaded model's, sampled every millisecond, the first call in a fresh process each);
* the **projection** to LLaVA-1.5-7B (576 cells, 32 layers): restarted layer forwards of exact
  per-cell patching against attribution's three passes.

Run: ``python -m benchmarks.attribution --pairs 60 --work DIR --out benchmarks/results/attribution.json``
(``--work``: each stage's rows are logged there, and a rerun resumes; only pairs computed in a
call are timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from .harness import log

SITES = ("resid_pre", "attn_out", "mlp_out")
GROUPS = ("changed", "other_image", "question", "last")
#: per head (site z): where the image's information is read, every head alone
HEAD_GROUPS = ("changed", "last")
#: the sites AtP*'s QK fix applies to
QK_SITES = ("q", "k")
#: the pairs whose decoder-layer work is counted (counts are per pair and do not wobble)
COUNTED_PAIRS = 3


class LayerRows:
    """Counts decoder-layer work: calls and batch rows, by a forward hook on every layer."""

    def __init__(self, vlm):
        self.layers = vlm.adapter.resolve(vlm.model, "layers")
        self.calls = 0
        self.rows = 0

    def __enter__(self):
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self.calls += 1
        self.rows += int(hidden.shape[0])

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _peak_rss_mb(code: str) -> float:
    """How far (MB) the resident memory of a fresh Python process rises above its level after
    loading the model while it runs ``code`` (sampled every millisecond)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


_MEMORY = """
import os, threading, time, torch
torch.set_num_threads(1)
import interp
from interp.data.synthetic import SyntheticVQA, counterfactual_pairs
vlm = interp.load("organism")
pairs = counterfactual_pairs(SyntheticVQA("test", seed=0, image_size=vlm.scene_size), 1)
page = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * page
base, peak, done = rss(), [0.0], [False]  # no warm-up: both variants pay their first call
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
thread = threading.Thread(target=sample)
thread.start()
{body}
done[0] = True
thread.join()
print(max(peak[0], rss()) - base)
"""


STAGES = ("exact_grid", "atp_grid", "ig_resid_pre", "exact_heads", "atp_heads", "exact_qk", "atp_qk", "atp_star")


def _stage(work: Path | None, name: str, compute) -> tuple:
    """``(frame, seconds per computed pair)`` of one stage: ``compute(resume)`` with its rows logged
    under ``work`` (a rerun reads finished pairs back; the calls that computed pairs add their time
    and count to ``<stage>.timing.json``), or in memory without ``work``."""
    import pandas as pd

    log_file = work / f"{name}.jsonl" if work else None
    done = len(log_file.read_text().splitlines()) if log_file and log_file.exists() else 0
    start = time.perf_counter()
    frame = compute(log_file)
    seconds = time.perf_counter() - start
    computed = frame.pair.nunique() - done
    log(f"{name}: {seconds:.1f} s for {computed} pairs")
    timing = work / f"{name}.timing.json" if work else None
    if computed > 0 and timing:  # the call that computed the pairs keeps their time for the report
        earlier = json.loads(timing.read_text()) if timing.exists() else {"seconds": 0.0, "pairs": 0}
        timing.write_text(json.dumps({"seconds": earlier["seconds"] + seconds, "pairs": earlier["pairs"] + computed}))
    if timing and timing.exists():
        kept = json.loads(timing.read_text())
        return pd.DataFrame(frame), kept["seconds"] / kept["pairs"]
    return pd.DataFrame(frame), (seconds / computed if computed > 0 else float("nan"))


def measure(n_pairs: int, seed: int = 0, work: Path | None = None, only: tuple[str, ...] = ()) -> dict | None:
    import interp
    from interp.analysis.attribution import agreement, attribution_sweep
    from interp.analysis.patching import REPORT_CHANGES, patching_sweep
    from interp.data.synthetic import SyntheticVQA

    torch.set_num_threads(1)
    if work:
        work.mkdir(parents=True, exist_ok=True)
    vlm = interp.load("organism")
    data = SyntheticVQA("test", seed=seed, image_size=vlm.scene_size)
    pairs = data.counterfactual_pairs(n_pairs, REPORT_CHANGES, seed=seed)
    grid = dict(positions=GROUPS, layers="all", progress=False)
    log(f"attribution benchmark: {len(pairs)} pairs, sites {SITES}, heads at {HEAD_GROUPS}, {QK_SITES}")

    def exact_run(sites, positions=GROUPS):
        return lambda resume: patching_sweep(
            vlm, pairs, sites=sites, mode="fast", **{**grid, "positions": positions}, resume=resume
        )

    def estimate_run(sites, method="atp", positions=GROUPS, **extra):
        return lambda resume: attribution_sweep(
            vlm, pairs, sites=sites, method=method, **{**grid, "positions": positions}, resume=resume, **extra
        )

    if only:  # these stages' rows into ``work`` (run several such processes side by side), no report
        runs = {
            "exact_grid": exact_run(SITES),
            "atp_grid": estimate_run(SITES),
            "ig_resid_pre": estimate_run(("resid_pre",), "ig", steps=8),
            "exact_heads": exact_run(("z",), HEAD_GROUPS),
            "atp_heads": estimate_run(("z",), positions=HEAD_GROUPS),
            "exact_qk": exact_run(QK_SITES),
            "atp_qk": estimate_run(QK_SITES),
            "atp_star": estimate_run(SITES + QK_SITES, "atp*"),
        }
        for name in only:
            _stage(work, name, runs[name])
        return None
    exact, exact_per_pair = _stage(work, "exact_grid", exact_run(SITES))
    atp, atp_per_pair = _stage(work, "atp_grid", estimate_run(SITES))
    # the work, counted afresh on the first pairs (the stages above may have been read back)
    counted = pairs[:COUNTED_PAIRS]
    with LayerRows(vlm) as exact_work:
        patching_sweep(vlm, counted, sites=SITES, mode="fast", **grid)
    with LayerRows(vlm) as atp_work:
        attribution_sweep(vlm, counted, sites=SITES, **grid)
    ig, _ = _stage(work, "ig_resid_pre", estimate_run(("resid_pre",), "ig", steps=8))
    heads_exact, _ = _stage(work, "exact_heads", exact_run(("z",), HEAD_GROUPS))
    heads_atp, _ = _stage(work, "atp_heads", estimate_run(("z",), positions=HEAD_GROUPS))
    qk_exact, _ = _stage(work, "exact_qk", exact_run(QK_SITES))
    qk_atp, _ = _stage(work, "atp_qk", estimate_run(QK_SITES))
    star, star_per_pair = _stage(work, "atp_star", estimate_run(SITES + QK_SITES, "atp*"))
    every_exact = pd_concat([exact, qk_exact])
    tables = {
        "atp": agreement(pd_concat([exact, heads_exact, qk_exact]), pd_concat([atp, heads_atp, qk_atp]), seed=seed),
        "atp*": agreement(every_exact, star, seed=seed),
        "ig": agreement(exact[exact.site == "resid_pre"], ig, seed=seed),
    }
    # one layer's per-cell grid on the first pair: exact restarts once per cell
    cell_layer = vlm.n_layers // 2
    cells = dict(positions=("last",), layers=[cell_layer], cell_layers=[cell_layer], progress=False)
    with LayerRows(vlm) as exact_cells:
        exact_cell_rows = patching_sweep(vlm, pairs[:1], mode="fast", **cells)
    with LayerRows(vlm) as atp_cells:
        atp_cell_rows = attribution_sweep(vlm, pairs[:1], **cells)
    exact_cell_rows = exact_cell_rows[exact_cell_rows.group == "cell"]
    atp_cell_rows = atp_cell_rows[atp_cell_rows.group == "cell"]
    cell_agreement = exact_cell_rows.merge(atp_cell_rows, on=["row", "col"], suffixes=("_exact", "_atp"))
    from scipy.stats import spearmanr

    cell_rho = float(spearmanr(cell_agreement.logit_diff_exact, cell_agreement.logit_diff_atp).statistic)
    memory = {
        "plain_forward_mb": _peak_rss_mb(
            _MEMORY.format(body="vlm.run(vlm.prepare(pairs[0].changed.image, pairs[0].changed.question))")
        ),
        "attribution_pair_mb": _peak_rss_mb(
            _MEMORY.format(
                body="from interp.analysis.attribution import attribution_sweep\n"
                "attribution_sweep(vlm, pairs, sites=('resid_pre', 'attn_out', 'mlp_out'), progress=False)"
            )
        ),
    }
    n_cells = len(atp_cell_rows)
    per_pair = {
        "exact_layer_rows": exact_work.rows / len(counted),
        "atp_layer_rows": atp_work.rows / len(counted),
        "atp_backward_passes": 1,
        "atp_star_backward_passes": 1 + vlm.n_layers,
        "exact_cell_layer_rows": exact_cells.rows,
        "atp_cell_layer_rows": atp_cells.rows,
        "cells": n_cells,
    }
    # projection to LLaVA-1.5-7B: exact per-cell patching restarts at each layer for each cell
    layers_7b, cells_7b = 32, 576
    exact_7b = sum(layers_7b - layer for layer in range(layers_7b)) * cells_7b + 2 * layers_7b
    return {
        "benchmark": "interp issue 27: attribution patching against exact activation patching",
        "model": vlm.name,
        "n_pairs": len(pairs),
        "sites": list(SITES),
        "groups": list(GROUPS),
        "head_groups": list(HEAD_GROUPS),
        "qk_sites": list(QK_SITES),
        "agreement": {name: json.loads(table.to_json(orient="records")) for name, table in tables.items()},
        "cells": {"layer": cell_layer, "pair": pairs[0].id, "n_cells": n_cells, "spearman_logit_diff": cell_rho},
        "per_pair_counts": per_pair,
        "layer_rows_ratio_grid": per_pair["exact_layer_rows"] / per_pair["atp_layer_rows"],
        "counted_pairs": len(counted),
        "layer_rows_ratio_cells": per_pair["exact_cell_layer_rows"] / per_pair["atp_cell_layer_rows"],
        "wall_seconds_per_pair": {"exact": exact_per_pair, "atp": atp_per_pair, "atp*": star_per_pair},
        "wall_ratio_grid": exact_per_pair / atp_per_pair,
        "memory": {
            **memory,
            "ratio": memory["attribution_pair_mb"] / memory["plain_forward_mb"],
            "note": "resident memory above the loaded model's, first call in a fresh process each (CPU)",
        },
        "projection_llava_1_5_7b": {
            "cells": cells_7b,
            "layers": layers_7b,
            "exact_per_cell_layer_forwards": exact_7b,
            "atp_layer_forwards": 3 * layers_7b,
            "ratio": exact_7b / (3 * layers_7b),
            "note": "exact: each cell restarted at each layer l runs layers l..31; atp: the source and base "
            "forwards and one backward (counted as one forward's layers each)",
        },
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def pd_concat(frames: list):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="row logs: a rerun resumes each stage")
    parser.add_argument(
        "--only", default="", help=f"with --work: run only these comma-separated stages ({', '.join(STAGES)})"
    )
    args = parser.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    if only and (args.work is None or set(only) - set(STAGES)):
        parser.error(f"--only needs --work and stages among {', '.join(STAGES)}")
    result = measure(args.pairs, work=args.work, only=only)
    if result is None:
        return 0
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
