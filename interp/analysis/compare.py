"""Side by side: several ``interp reproduce`` runs on a common relative-depth axis.

Pure: reads each run directory's ``report.json`` and returns tidy DataFrames (no
plotting, no new computation beyond re-indexing layers as ``layer / n_layers``):

* ``masking``: the masking curves (accuracy with its CI per variant and layer),
* ``relevant_share``: the share of image attention on the question-relevant region,
* ``early_output``: accuracy read out at each layer through the final norm and head,
* ``contrastive``: every contrastive-decoding comparison row,
* ``summary``: one row per run (fusion layers, review layer, baseline with CI, the best
  contrastive result, method-ablation results when the report has them).

:func:`compare_markdown` renders the side-by-side table; ``interp compare`` writes it with
``compare.json`` and the figures of :mod:`interp.plotting.compare`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..runfiles import FILES

ABLATION_KEYS = ("method_ablation", "ablation")  # where a report keeps its method ablation, if any


@dataclass
class Comparison:
    masking: pd.DataFrame
    relevant_share: pd.DataFrame
    early_output: pd.DataFrame
    contrastive: pd.DataFrame
    summary: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "summary": self.summary,
            "masking": self.masking,
            "relevant_share": self.relevant_share,
            "early_output": self.early_output,
            "contrastive": self.contrastive,
        }


def read_report(run_dir: str | Path) -> dict:
    """A run directory's ``report.json`` (one clear error when it is missing or unreadable)."""
    path = Path(run_dir) / FILES.report_json
    if not path.is_file():
        raise InputError(f"{run_dir}: no {FILES.report_json} (make one with `interp reproduce --out {run_dir}`)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    for key in ("model", "n_layers", "baseline_accuracy", "masking"):
        if key not in report:
            raise InputError(f"{path}: not an `interp reproduce` report (no {key!r})")
    return report


def _labels(reports: list[dict], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(reports):
            raise InputError(f"{len(labels)} labels for {len(reports)} runs")
        return list(labels)
    names = [str(r["model"]) for r in reports]
    # the same model twice (two datasets, two settings): number them
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _per_layer(label: str, report: dict, rows: list[dict], **extra) -> list[dict]:
    n_layers = int(report["n_layers"])
    return [
        {"run": label, "model": report["model"], **extra, **row, "rel_depth": row["layer"] / n_layers} for row in rows
    ]


def _layer_span(layers: list[int], n_layers: int) -> str:
    if not layers:
        return "none"
    return f"{min(layers)}-{max(layers)} of {n_layers} ({min(layers) / n_layers:.2f}-{max(layers) / n_layers:.2f})"


def _best_contrastive(rows: list[dict]) -> dict:
    if not rows:
        return {}
    best = max(rows, key=lambda r: (r["diff"], -r.get("p_value", 1.0)))
    return {
        "contrastive_best": f"{best['method']} rho={best['rho']} ({best['candidates']}, {best['distance']})",
        "contrastive_diff": best["diff"],
        "contrastive_diff_low": best["diff_low"],
        "contrastive_diff_high": best["diff_high"],
        "contrastive_p": best.get("p_value"),
    }


def _ablation(report: dict) -> dict:
    for key in ABLATION_KEYS:
        value = report.get(key)
        if isinstance(value, dict):
            return {f"ablation_{k}": v for k, v in value.items() if isinstance(v, (int, float, str, bool))}
    return {}


def compare_runs(run_dirs, labels: list[str] | None = None, *, variant: str = "single") -> Comparison:
    """The tables of a comparison of ``run_dirs`` (at least one). ``variant`` is the
    masking variant whose findings (fusion, review layer) go into the summary."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise InputError("compare needs at least one run directory")
    reports = [read_report(d) for d in run_dirs]
    names = _labels(reports, labels)
    masking, share, early, contrastive, summary = [], [], [], [], []
    for label, run_dir, report in zip(names, run_dirs, reports):
        n_layers = int(report["n_layers"])
        base = report["baseline_accuracy"]
        masking += _per_layer(label, report, report["masking"].get("per_layer", []), baseline=base["mean"])
        attention = report.get("attention") or {}
        share += _per_layer(label, report, attention.get("relevant_share_per_layer", []))
        early += _per_layer(label, report, (report.get("early_output") or {}).get("per_layer", []))
        rows = (report.get("contrastive") or {}).get("comparison", [])
        contrastive += [{"run": label, "model": report["model"], **row} for row in rows]
        finding = report["masking"].get("findings", {}).get(variant, {})
        fusion = list(finding.get("fusion_layers", []))
        review = report.get("review_layer") or {}
        summary.append(
            {
                "run": label,
                "model": report["model"],
                "dir": str(run_dir),
                "dataset": report.get("dataset"),
                "n_samples": report.get("n_samples"),
                "n_layers": n_layers,
                "baseline": base["mean"],
                "baseline_low": base["low"],
                "baseline_high": base["high"],
                "fusion_layers": fusion,
                "fusion_span": _layer_span(fusion, n_layers),
                "review_layer": finding.get("review_layer"),
                "review_layer_used": review.get("layer"),
                "review_source": review.get("source"),
                "review_rel_depth": None if review.get("layer") is None else review["layer"] / n_layers,
                "relevant_area": attention.get("relevant_area"),
                **_best_contrastive(rows),
                **_ablation(report),
            }
        )
    return Comparison(
        masking=pd.DataFrame(masking),
        relevant_share=pd.DataFrame(share),
        early_output=pd.DataFrame(early),
        contrastive=pd.DataFrame(contrastive),
        summary=pd.DataFrame(summary),
    )


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def compare_markdown(comparison: Comparison, *, variant: str = "single") -> str:
    """The side-by-side table (runs as columns) as markdown."""
    s = comparison.summary
    runs = list(s.run)
    lines = [f"# Comparison of {len(runs)} runs", "", "| | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]

    def row(name: str, values) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("model", [str(m) for m in s.model])
    row("dataset, n", [f"{d}, {n}" for d, n in zip(s.dataset, s.n_samples)])
    row("layers", [str(n) for n in s.n_layers])
    row(
        "baseline accuracy (95% CI)",
        [f"{b:.3f} ({lo:.3f}-{hi:.3f})" for b, lo, hi in zip(s.baseline, s.baseline_low, s.baseline_high)],
    )
    row(f"fusion layers ({variant} masking; relative depth)", list(s.fusion_span))
    row("review layer (detected)", [_fmt(v) for v in s.review_layer])
    row(
        "review layer used (source)",
        [f"{_fmt(v)} ({src})" if src else _fmt(v) for v, src in zip(s.review_layer_used, s.review_source)],
    )
    if "contrastive_best" in s:
        row("best contrastive setting", [_fmt(v) for v in s.contrastive_best])
        row(
            "its accuracy change (95% CI, p)",
            [
                "-" if pd.isna(d) else f"{d:+.3f} ({lo:+.3f} to {hi:+.3f}, p={_fmt(p)})"
                for d, lo, hi, p in zip(
                    s.contrastive_diff, s.contrastive_diff_low, s.contrastive_diff_high, s.contrastive_p
                )
            ],
        )
    for column in [c for c in s.columns if c.startswith("ablation_")]:
        row(column.removeprefix("ablation_").replace("_", " "), [_fmt(v) for v in s[column]])
    small = [r for r, n in zip(runs, s.n_samples) if n is not None and n < 100]
    if small:
        lines += ["", f"Small samples (n < 100): {', '.join(small)}; read the CIs, not the point values."]
    lines += ["", "Curves on relative depth (layer / number of layers): `compare_curves.png`."]
    return "\n".join(lines) + "\n"


def compare_json(comparison: Comparison) -> dict:
    """Every table as a list of records (JSON-ready)."""
    return {name: json.loads(table.to_json(orient="records")) for name, table in comparison.tables().items()}
