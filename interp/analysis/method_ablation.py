"""Which part of the authors' method moves accuracy: a factorial ablation on the same questions.

Cells: decoding {greedy, sampling at temperature T with K seeds} x mask {none, the
authors' review-layer mask (:class:`~interp.interventions.ReviewLayerMask`)} x DoLa
{none, DoLa by logits JSD, DoLa by attention JSD (the authors'), a static premature
layer}, every question answered in every cell (:func:`interp.decoding.dola_generate`,
one nnsight generation per answer, the mask in its prefill). Each answer is scored
twice: by the items' own scorer (the synthetic benchmark's normalised match, or an
evaluation task's lmms-eval metric) — reported as ``lmms`` — and by the authors' lenient
metric (:func:`interp.data.metrics.wcd_score`, 0-100 rescaled to 0-1; on the synthetic
benchmark the TextVQA word-overlap rule) — reported as ``wcd``.

Settings, as the authors ran them unless said: DoLa candidates ``"low"``, relative top
0.1, repetition penalty 1.2 on the generated tokens only (their pipeline passes
embeddings, so the prompt is not penalised); the cells without DoLa decode plainly (no
penalty), as ``interp evaluate`` does; sampling is temperature 0.2 with transformers'
default top-k 50 and one seeded generator per answer (seed ``s`` for the s-th run of
every question); the mask ratio 0.2 at the review layer (default: the authors'
LLaVA-1.5 layer 29 of 32, scaled to the model's depth); the static premature layer
defaults to the middle "low" candidate.

:func:`ablation_table` gives, per metric and cell, the accuracy with a 95% bootstrap CI
over questions (sampling cells: each question's mean over the seeds, with the
seed-to-seed spread of the accuracy next to it) and the paired difference to the same
cell with greedy decoding / no mask / no DoLa, with a paired bootstrap CI and the exact
paired test's p-value: McNemar's exact test where both cells are one run per question, else an
exact (or, beyond 20 changed questions, seeded Monte-Carlo) sign-flip test of the per-question
differences of accuracy averaged over the seeds (:func:`~interp.analysis.stats.paired_sign_flip`).
Rows go to a row log as they come (:func:`interp.outputs.logged_units`: one fsynced record per
question and decoding run, holding that run's cells), so a long run resumes where it stopped and a
record cut by a crash is recomputed; the settings are claimed in ``<stem>.settings.json`` beside
it (a continuation with other settings is refused, nothing touched). Decoding runs are outermost
(greedy for every question, then seed 0 for every question, ...), so a run stopped early
summarises as fewer seeds, and a log with more questions or seeds than asked serves a smaller
ablation. On LLaVA-family models each question's prompt is encoded once per mask and run
(:func:`interp.decoding.prefill_cache`), and every cell decodes from that cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InterpError
from ..outputs import OutputError, OutputLock, RowLog, SettingsMismatchError, SettingsRecord, check_output
from .items import as_items
from .stats import bootstrap_mean_ci, paired_bootstrap_diff, paired_sign_flip

DOLA_VARIANTS = ("none", "logits", "attention", "static")
MASKS = ("none", "authors")
METRICS = ("lmms", "wcd")
DOLA_LABELS = {
    "none": "no DoLa",
    "logits": "DoLa (logits JSD)",
    "attention": "DoLa (attention JSD, authors')",
    "static": "DoLa (static layer)",
}
MASK_LABELS = {"none": "no mask", "authors": "authors' mask"}


@dataclass
class AblationConfig:
    """The ablation's settings (see the module docstring)."""

    temperature: float = 0.2
    seeds: int = 3
    review_layer: int | None = None
    ratio: float = 0.2
    dola_layers: Any = "low"
    static_layer: int | None = None
    relative_top: float = 0.1
    repetition_penalty: float = 1.2
    penalize_prompt: bool = False
    max_new_tokens: int = 16
    wcd_task: str = "textvqa"
    n_boot: int = 2000
    seed: int = 0
    progress: bool = True
    remote: Any = None
    masks: tuple = MASKS
    dola: tuple = DOLA_VARIANTS

    def resolved(self, vlm) -> dict:
        """The settings with the model-dependent defaults filled in (written to the results)."""
        from ..decoding.dola import _output_embedding_is_tied, candidate_layers

        n = vlm.n_layers
        review = self.review_layer if self.review_layer is not None else min(n - 1, max(2, round(29 / 32 * n)))
        candidates = candidate_layers(n, self.dola_layers, tied=_output_embedding_is_tied(vlm))
        static = self.static_layer if self.static_layer is not None else candidates[len(candidates) // 2]
        candidate_layers(n, [static], tied=False)  # range check
        if not 2 <= review < n:
            raise InterpError(f"the review layer must be in 2..{n - 1}, got {review}")
        if not self.temperature > 0:
            raise InterpError(f"sampling needs a temperature > 0, got {self.temperature}")
        if self.seeds < 0:
            raise InterpError(f"seeds must be >= 0, got {self.seeds}")
        bad = [m for m in self.masks if m not in MASKS] + [d for d in self.dola if d not in DOLA_VARIANTS]
        if bad:
            raise InterpError(f"unknown ablation cells {bad}; masks: {MASKS}, DoLa: {DOLA_VARIANTS}")
        out = {k: v for k, v in asdict(self).items() if k not in ("progress", "remote")}
        out.update(
            review_layer=review,
            static_layer=static,
            candidates=candidates,
            masks=list(self.masks),
            dola=list(self.dola),
        )
        return out


def cells(settings: dict) -> list[dict]:
    """Every ``(decoding, seed, mask, dola)`` cell of the factorial."""
    runs = [("greedy", None)] + [("sample", s) for s in range(settings["seeds"])]
    return [
        {"decoding": d, "seed": s, "mask": m, "dola": v}
        for d, s in runs
        for m in settings["masks"]
        for v in settings["dola"]
    ]


def _answer(vlm, prepared, cell: dict, settings: dict, remote, prefill=None):
    from ..decoding import dola_generate

    layers = {
        "none": None,
        "logits": settings["dola_layers"],
        "attention": settings["dola_layers"],
        "static": [settings["static_layer"]],
    }[cell["dola"]]
    interventions = mask_for(cell, settings)
    sample = cell["decoding"] == "sample"
    return dola_generate(
        vlm,
        prepared,
        layers=layers,
        select="attention" if cell["dola"] == "attention" else "logits",
        relative_top=settings["relative_top"],
        repetition_penalty=settings["repetition_penalty"] if layers is not None else 1.0,
        penalize_prompt=settings["penalize_prompt"],
        max_new_tokens=settings["max_new_tokens"],
        do_sample=sample,
        temperature=settings["temperature"] if sample else None,
        seed=cell["seed"],
        interventions=interventions if prefill is None else [],
        remote=remote,
        prefill=prefill,
    )


def mask_for(cell: dict, settings: dict) -> list:
    from ..interventions import ReviewLayerMask

    return [ReviewLayerMask(settings["review_layer"], ratio=settings["ratio"])] if cell["mask"] == "authors" else []


def grid_by_run(grid: list[dict]) -> list[dict]:
    """The cells in run order: all of greedy, then all of seed 0, seed 1, ..."""
    return sorted(grid, key=lambda c: -1 if c["seed"] is None else c["seed"])


def _runs(grid: list[dict]) -> list[list[dict]]:
    """The cells grouped by decoding run, in run order (greedy, seed 0, seed 1, ...)."""
    runs: dict = {}
    for cell in grid_by_run(grid):
        runs.setdefault((cell["decoding"], cell["seed"]), []).append(cell)
    return list(runs.values())


def supports_prefill_reuse(vlm) -> bool:
    """Whether the prompt's cache can be reused across decodings (see ``prefill_cache``)."""
    return getattr(vlm.config, "model_type", None) == "llava"


def _key(row: dict) -> tuple:
    return (str(row["item"]), row["decoding"], row["seed"], row["mask"], row["dola"])


def _unit_key(run: list[dict], item) -> str:
    """The row log's key of one question's decoding run (its cells share decoding and seed)."""
    return json.dumps([run[0]["decoding"], run[0]["seed"], str(item.id)])


def settings_path(path: str | Path) -> Path:
    """The settings record beside row log ``path``: ``<stem>.settings.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.settings.json")


def _one_row_per_line(path: Path) -> bool:
    """Whether ``path`` is a log of the format with a settings header and one answer per line."""
    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "settings" in first and "key" not in first


def _claim_settings(path: Path, settings: dict) -> None:
    """Store ``settings`` beside the row log ``path``, or check them against the stored ones.

    Raises:
        OutputError: the log is of the one-answer-per-line format, holds rows without a
            settings record, or was written with other settings (one line; nothing touched).
    """
    if _one_row_per_line(path):
        raise OutputError(
            f"{path} holds rows of the one-answer-per-line format, which cannot be continued; it is "
            f"left untouched: use another --out (read_ablation_rows still reads it)"
        )
    record = SettingsRecord(settings_path(path))
    if record.read() is None and path.exists() and path.stat().st_size > 0:
        raise SettingsMismatchError(
            f"{path} holds rows but no {record.path.name}, so their settings are unknown; it is left "
            f"untouched: use another --out"
        )
    record.claim(settings, what=str(path))


def _unit_rows(vlm, item, run: list[dict], settings: dict, remote, prepared_of: dict, reuse: bool) -> list[dict]:
    """One question's rows for the cells of one decoding run, in the run's cell order.

    Args:
        vlm: the model.
        item: the question (an :class:`~interp.analysis.items.Item`).
        run: the run's cells (one decoding and seed; every mask x DoLa).
        settings: the resolved settings (:meth:`AblationConfig.resolved`).
        remote: where to run (``AblationConfig.remote``).
        prepared_of: the prepared prompt per item id, filled as questions are first seen.
        reuse: whether the run's cells decode from one prompt cache per mask.

    Returns:
        One row per cell (see :func:`run_method_ablation`).
    """
    from ..data.metrics import wcd_score
    from ..decoding import prefill_cache

    if item.id not in prepared_of:
        prepared_of[item.id] = vlm.prepare(item.image, item.question)
    prepared = prepared_of[item.id]
    caches: dict = {}  # the prompt's cache per mask, shared by this run's cells
    rows = []
    for cell in run:
        began = time.perf_counter()
        if reuse and cell["mask"] not in caches:
            caches[cell["mask"]] = prefill_cache(vlm, prepared, mask_for(cell, settings))
        result = _answer(vlm, prepared, cell, settings, remote, caches.get(cell["mask"]))
        wcd = wcd_score(settings["wcd_task"], result.text, list(item.answers))
        rows.append(
            {
                "item": str(item.id),
                "kind": item.kind,
                **cell,
                "text": result.text,
                "premature_layers": result.premature_layers,
                "lmms": item.score(result.text),
                "wcd": None if wcd is None else wcd / 100.0,
                "seconds": round(time.perf_counter() - began, 4),
            }
        )
    return rows


def run_method_ablation(
    vlm, samples: Any, *, config: AblationConfig | None = None, limit: int | None = None, out: str | Path | None = None
) -> pd.DataFrame:
    """Answer every question in every cell of the ablation.

    With ``out`` (a row log, :class:`interp.outputs.RowLog`) each question's decoding run is
    one fsynced record once its cells are answered, and a rerun computes only the runs not
    there (a record cut by a crash is dropped and recomputed). The settings (all but
    ``seeds``, plus the model's name) are claimed in :func:`settings_path` of ``out``; the
    log is locked against a second writer while the ablation runs.

    Args:
        vlm: the model.
        samples: the questions (anything :func:`~interp.analysis.items.as_items` takes).
        config: the settings (default :class:`AblationConfig`).
        limit: answer only the first ``limit`` questions.
        out: the row log, or None to keep nothing.

    Returns:
        One row per question x cell: ``item, kind, decoding, seed, mask, dola, text,
        premature_layers, lmms, wcd, seconds`` (scores in 0-1; ``wcd`` NaN where the
        authors' metric skips the question), question by question in the grid's order.

    Raises:
        InterpError: bad settings, or ``out`` holds another run's rows or is being written
            (one line; nothing there touched).
    """
    config = config or AblationConfig()
    from tqdm.auto import tqdm

    from ..data.metrics import wcd_score
    from ..outputs import logged_units

    items = as_items(samples, limit)
    settings = config.resolved(vlm)
    wcd_score(settings["wcd_task"], "", ["x"])  # an unknown task fails before anything runs
    grid = cells(settings)
    # decoding runs outermost (greedy, then seed 0, 1, ...): a run stopped early still holds
    # complete runs, which summarise as fewer seeds; a question id seen twice is run once
    units = list({_unit_key(run, item): (run, item) for run in _runs(grid) for item in items}.values())
    path = Path(out) if out is not None else None
    lock = None
    logged: set = set()
    if path is not None:
        check_output(path, "file", lock=False)
        lock = OutputLock(path).acquire()
    try:
        if path is not None:
            _claim_settings(path, {**{k: v for k, v in settings.items() if k != "seeds"}, "model": vlm.name})
            logged = {str(record.get("key")) for record in RowLog(path).read()[0]}
        prepared_of: dict = {}
        reuse = config.remote is None and supports_prefill_reuse(vlm)
        with tqdm(
            total=len(items) * len(grid),
            initial=sum(len(run) for run, item in units if _unit_key(run, item) in logged),
            desc="method ablation",
            unit="answer",
            disable=not config.progress,
        ) as bar:

            def compute(unit: tuple) -> list[dict]:
                rows = _unit_rows(vlm, unit[1], unit[0], settings, config.remote, prepared_of, reuse)
                bar.update(len(rows))
                return rows

            done = {_key(row): row for row in logged_units(path, units, lambda unit: _unit_key(*unit), compute)}
    finally:
        if lock is not None:
            lock.release()
    order = {str(item.id): i for i, item in enumerate(items)}
    rows = [done[(str(item.id), c["decoding"], c["seed"], c["mask"], c["dola"])] for item in items for c in grid]
    frame = pd.DataFrame(rows)
    frame["wcd"] = frame["wcd"].astype(float)
    return frame.sort_values("item", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _read_one_row_per_line(path: Path) -> tuple[list[dict], dict]:
    """The rows and settings of a log with a settings header and one answer per line."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows, dict(json.loads(lines[0])["settings"])


def read_ablation_rows(path: str | Path, *, limit: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Read an ablation's row log back.

    Keeps the first ``limit`` questions (default: every question that has all greedy
    cells) and only the decoding runs complete for all of them: a run stopped early
    summarises as the runs it finished. Reads the logs of :func:`run_method_ablation` and
    those with a settings header and one answer per line.

    Args:
        path: the row log.
        limit: keep at most this many questions.

    Returns:
        ``(rows, settings)``, ``settings["seeds"]`` the number of complete sampling runs.

    Raises:
        InterpError: the log holds no rows or has no settings record (one line).
    """
    path = Path(path)
    if _one_row_per_line(path):
        rows, settings = _read_one_row_per_line(path)
    else:
        records, _ = RowLog(path).read()
        stored = SettingsRecord(settings_path(path)).read()
        if not records or stored is None:
            raise InterpError(f"{path} holds no ablation rows with a settings record ({settings_path(path).name})")
        rows, settings = [row for record in records for row in record["rows"]], dict(stored)
    frame = pd.DataFrame(rows)
    per_run = len(settings["masks"]) * len(settings["dola"])
    greedy = frame[frame.decoding == "greedy"].groupby("item", sort=False).size()
    items = [item for item, n in greedy.items() if n == per_run]
    if limit is not None:
        items = items[:limit]
    frame = frame[frame["item"].isin(items)]
    complete = [
        seed
        for seed, part in frame[frame.decoding == "sample"].groupby("seed")
        if len(part.drop_duplicates(["item", "mask", "dola"])) == per_run * len(items)
    ]
    seeds = 0
    while seeds in complete:
        seeds += 1
    frame = frame[(frame.decoding == "greedy") | (frame.seed < seeds)]
    frame = frame.drop_duplicates(["item", "decoding", "seed", "mask", "dola"], keep="last")
    settings["seeds"] = seeds
    frame = frame.assign(wcd=frame["wcd"].astype(float)).reset_index(drop=True)
    return frame, settings


# -- statistics ----------------------------------------------------------------------------------------


def _per_item(rows: pd.DataFrame, metric: str, decoding: str, mask: str, dola: str) -> pd.Series:
    """Each question's score in a cell (sampling: the mean over the seeds), NaN-skipping."""
    cell = rows[(rows.decoding == decoding) & (rows["mask"] == mask) & (rows.dola == dola)]
    return cell.groupby("item", sort=False)[metric].mean()


def _seed_accuracies(rows: pd.DataFrame, metric: str, mask: str, dola: str) -> list[float]:
    cell = rows[(rows.decoding == "sample") & (rows["mask"] == mask) & (rows.dola == dola)]
    return [float(v) for v in cell.groupby("seed")[metric].mean().values]


def ablation_table(rows: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per metric and cell: ``accuracy, ci_low, ci_high, n``, the seed spread (sampling:
    ``seed_sd, seed_min, seed_max, n_seeds``) and, for each reference (``greedy``,
    ``no_mask``, ``no_dola``), ``diff_<ref>, diff_<ref>_low, diff_<ref>_high,
    p_<ref>, gained_<ref>, lost_<ref>`` (NaN in the reference cell itself)."""
    out = []
    decodings = [d for d in ("greedy", "sample") if (rows.decoding == d).any()]
    masks = [m for m in MASKS if (rows["mask"] == m).any()]
    dolas = [d for d in DOLA_VARIANTS if (rows.dola == d).any()]
    for metric in METRICS:
        if rows[metric].isna().all():
            continue
        for decoding in decodings:
            for mask in masks:
                for dola in dolas:
                    values = _per_item(rows, metric, decoding, mask, dola).dropna()
                    mean, low, high = bootstrap_mean_ci(values.values, n_boot=n_boot, seed=seed)
                    entry = {
                        "metric": metric,
                        "decoding": decoding,
                        "mask": mask,
                        "dola": dola,
                        "accuracy": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n": int(values.size),
                    }
                    if decoding == "sample":
                        per_seed = _seed_accuracies(rows, metric, mask, dola)
                        entry.update(
                            seed_sd=float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"),
                            seed_min=min(per_seed),
                            seed_max=max(per_seed),
                            n_seeds=len(per_seed),
                        )
                    references = {
                        "greedy": ("greedy", mask, dola),
                        "no_mask": (decoding, "none", dola),
                        "no_dola": (decoding, mask, "none"),
                    }
                    for name, (rd, rm, rv) in references.items():
                        keys = [
                            f"diff_{name}",
                            f"diff_{name}_low",
                            f"diff_{name}_high",
                            f"p_{name}",
                            f"gained_{name}",
                            f"lost_{name}",
                        ]
                        if (rd, rm, rv) == (decoding, mask, dola) or not (
                            (rows.decoding == rd) & (rows["mask"] == rm) & (rows.dola == rv)
                        ).any():
                            entry.update({k: float("nan") for k in keys})
                            continue
                        ref = _per_item(rows, metric, rd, rm, rv)
                        both = pd.concat([ref, _per_item(rows, metric, decoding, mask, dola)], axis=1).dropna()
                        diff, dlow, dhigh = paired_bootstrap_diff(
                            both.iloc[:, 0].values, both.iloc[:, 1].values, n_boot=n_boot, seed=seed
                        )
                        test = paired_sign_flip(both.iloc[:, 0].values, both.iloc[:, 1].values, seed=seed)
                        entry.update(
                            dict(zip(keys, [diff, dlow, dhigh, test["p_value"], test["b_only"], test["a_only"]]))
                        )
                    out.append(entry)
    return pd.DataFrame(out)


def gains(table: pd.DataFrame) -> pd.DataFrame:
    """The table's paired differences in long form: ``metric, cell, reference, diff, low,
    high, p`` (one row per cell and reference it differs from) — what the figure shows."""
    out = []
    for _, row in table.iterrows():
        for reference in ("greedy", "no_mask", "no_dola"):
            if pd.isna(row[f"diff_{reference}"]):
                continue
            out.append(
                {
                    "metric": row.metric,
                    "cell": cell_label(row),
                    "reference": reference,
                    "decoding": row.decoding,
                    "mask": row["mask"],
                    "dola": row.dola,
                    "diff": row[f"diff_{reference}"],
                    "low": row[f"diff_{reference}_low"],
                    "high": row[f"diff_{reference}_high"],
                    "p": row[f"p_{reference}"],
                }
            )
    return pd.DataFrame(out)


def cell_label(row) -> str:
    decoding = "greedy" if row["decoding"] == "greedy" else "sampling"
    return f"{decoding} / {MASK_LABELS[row['mask']]} / {DOLA_LABELS[row['dola']]}"


# -- the report --------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:+.3f}"


def _effect_summary(table: pd.DataFrame, metric: str, reference: str, select) -> dict:
    part = table[(table.metric == metric) & select(table) & table[f"diff_{reference}"].notna()]
    if part.empty:
        return {}
    biggest = part.loc[part[f"diff_{reference}"].abs().idxmax()]
    significant = part[(part[f"diff_{reference}_low"] > 0) | (part[f"diff_{reference}_high"] < 0)]
    return {
        "min": float(part[f"diff_{reference}"].min()),
        "max": float(part[f"diff_{reference}"].max()),
        "largest": {
            "cell": cell_label(biggest),
            "diff": float(biggest[f"diff_{reference}"]),
            "low": float(biggest[f"diff_{reference}_low"]),
            "high": float(biggest[f"diff_{reference}_high"]),
            "p": float(biggest[f"p_{reference}"]),
        },
        "n_cells": int(len(part)),
        "n_significant": int(len(significant)),
    }


def component_effects(table: pd.DataFrame) -> dict:
    """Per metric and component (sampling, mask, each DoLa rule): the range of its paired
    effect over the other factors, the largest one with its CI and p, and how many CIs
    exclude 0."""
    out = {}
    for metric in table.metric.unique():
        out[metric] = {
            "sampling": _effect_summary(table, metric, "greedy", lambda t: t.decoding == "sample"),
            "mask": _effect_summary(table, metric, "no_mask", lambda t: t["mask"] == "authors"),
            **{
                f"dola_{v}": _effect_summary(table, metric, "no_dola", lambda t, v=v: t.dola == v)
                for v in DOLA_VARIANTS[1:]
            },
        }
    return out


def render_paragraph(table: pd.DataFrame, settings: dict, n_items: int) -> str:
    """The report.md paragraph: which component moves accuracy and by how much."""
    effects = component_effects(table)
    names = {
        "sampling": f"sampling (T={settings['temperature']}, {settings['seeds']} seeds) instead of greedy",
        "mask": f"the authors' mask (ratio {settings['ratio']} at layer {settings['review_layer']})",
        "dola_logits": "DoLa by logits JSD",
        "dola_attention": "DoLa by attention JSD (the authors')",
        "dola_static": f"DoLa with the static layer {settings['static_layer']}",
    }
    parts = [f"{n_items} questions (a small sample: one question is {1 / n_items:.3f} of accuracy). "]
    for metric, per in effects.items():
        base = table[
            (table.metric == metric) & (table.decoding == "greedy") & (table["mask"] == "none") & (table.dola == "none")
        ]
        label = "the items' own metric" if metric == "lmms" else "the authors' lenient metric"
        if not base.empty:
            b = base.iloc[0]
            parts.append(
                f"Under {label}, greedy decoding without mask or DoLa scores {b.accuracy:.3f} "
                f"[{b.ci_low:.3f}, {b.ci_high:.3f}]; "
            )
        ranked = sorted(((k, v) for k, v in per.items() if v), key=lambda kv: -abs(kv[1]["largest"]["diff"]))
        clauses = []
        for key, summary in ranked:
            largest = summary["largest"]
            clauses.append(
                f"{names[key]} changes it by {_fmt(summary['min'])} to {_fmt(summary['max'])} "
                f"(largest {_fmt(largest['diff'])} [{_fmt(largest['low'])}, {_fmt(largest['high'])}], "
                f"paired p = {largest['p']:.2g}; {summary['n_significant']} of {summary['n_cells']} "
                f"CIs exclude 0)"
            )
        parts.append(("; ".join(clauses) if clauses else "no other cell was run") + ". ")
        if ranked:
            top_key, top = ranked[0]
            moved = top["n_significant"] > 0
            parts.append(
                f"The component that moves {label} most is {names[top_key]}"
                + (
                    "."
                    if moved
                    else ", and no paired CI of it excludes 0: nothing here is distinguishable "
                    "from no effect at this sample size."
                )
                + " "
            )
    return "".join(parts).strip()


def ablation_report(rows: pd.DataFrame, table: pd.DataFrame, settings: dict) -> dict:
    """The ``method_ablation`` entry of report.json: settings, cell table, component effects, paragraph."""
    n_items = int(rows["item"].nunique())
    return {
        "settings": settings,
        "n_items": n_items,
        "cells": json.loads(table.to_json(orient="records")),
        "components": component_effects(table),
        "paragraph": render_paragraph(table, settings, n_items),
        "seconds_per_answer": float(rows["seconds"].mean()) if "seconds" in rows else None,
    }


def render_table_markdown(table: pd.DataFrame, metric: str) -> str:
    """One metric's cells as a markdown table (accuracy with CI, differences with CI and p)."""
    part = table[table.metric == metric]
    lines = [
        "| decoding | mask | DoLa | accuracy [95% CI] | seed sd | vs greedy | vs no mask | vs no DoLa |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def diff(row, ref):
        if pd.isna(row[f"diff_{ref}"]):
            return "—"
        return (
            f"{_fmt(row[f'diff_{ref}'])} [{_fmt(row[f'diff_{ref}_low'])}, {_fmt(row[f'diff_{ref}_high'])}] "
            f"p={row[f'p_{ref}']:.2g}"
        )

    for _, row in part.iterrows():
        sd = row.get("seed_sd")
        lines.append(
            f"| {row.decoding} | {MASK_LABELS[row['mask']]} | {DOLA_LABELS[row.dola]} | "
            f"{row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}] | "
            f"{'—' if sd is None or pd.isna(sd) else f'{sd:.3f}'} | {diff(row, 'greedy')} | "
            f"{diff(row, 'no_mask')} | {diff(row, 'no_dola')} |"
        )
    return "\n".join(lines)


def write_outputs(
    rows: pd.DataFrame, settings: dict, out_dir: str | Path, *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Write ``method_ablation.csv`` (the table), ``method_ablation.json`` (the report dict),
    ``method_ablation.md`` and the gains figure (PNG, PDF) into ``out_dir``; returns the dict."""
    from ..plotting.method_ablation import plot_gains
    from ..plotting.style import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = ablation_table(rows, n_boot=n_boot, seed=seed)
    table.to_csv(out / "method_ablation.csv", index=False)
    report = ablation_report(rows, table, settings)
    (out / "method_ablation.json").write_text(json.dumps(report, indent=1))
    md = ["# Method ablation", "", report["paragraph"], ""]
    for metric in table.metric.unique():
        md += [
            f"## {'items’ own metric (lmms)' if metric == 'lmms' else 'the authors’ lenient metric (wcd)'}",
            "",
            render_table_markdown(table, metric),
            "",
        ]
    (out / "method_ablation.md").write_text("\n".join(md))
    save(plot_gains(gains(table)), out, "method_ablation", dpi=150, bbox_inches="tight")
    return report


__all__ = [
    "AblationConfig",
    "DOLA_VARIANTS",
    "MASKS",
    "ablation_report",
    "ablation_table",
    "cells",
    "component_effects",
    "gains",
    "read_ablation_rows",
    "render_paragraph",
    "render_table_markdown",
    "run_method_ablation",
    "settings_path",
    "write_outputs",
]
