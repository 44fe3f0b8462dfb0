"""The report sections ``interp reproduce`` runs after its per-sample phases.

A section is registered once, with what it needs and how it runs (in the spirit of lmms-eval's
registered tasks and metrics)::

    @section("image_lens", needs=OffersCellLabels, enabled=lambda ctx: ctx.config.lens_samples > 0)
    def _lens(ctx: SectionContext) -> tuple[dict, list[str]]:
        ...

``needs`` names the dataset capability the section reads (:mod:`interp.data.capabilities`; None:
any dataset): a dataset without it skips the section; ``enabled`` reads the context (the config,
the model) and says whether the section runs. Each section writes its rows through the
run store (:meth:`interp.analysis.rundir.RunDir.section_log`: fsynced, settings-checked, resumed
unit by unit) and returns ``(dict for report.json, markdown lines)``; the report adds both under
the section's name, in registration order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.capabilities import OffersCellLabels, OffersCounterfactuals
from ..runfiles import FILES


@dataclass
class SectionContext:
    """What a section may read: the model, the run's data and items, its config and store."""

    vlm: Any
    samples: Any
    items: list
    config: Any
    run: Any
    out: Path
    dataset: str
    #: the per-sample phases' tables (:class:`interp.analysis.reproduce.Tables`): the sweep's rows, ...
    tables: Any = None

    @property
    def common(self) -> dict:
        """The options every section shares (bootstrap, seed, where it runs, progress bars)."""
        config = self.config
        return {"n_boot": config.n_boot, "seed": config.seed, "remote": config.remote, "progress": config.progress}


@dataclass(frozen=True)
class Section:
    """One registered section: its name, the dataset capability it needs, when it is on, how it runs."""

    name: str
    needs: type | None
    enabled: Callable[[SectionContext], bool]
    run: Callable[[SectionContext], tuple[dict, list[str]]]

    def applies(self, ctx: SectionContext) -> bool:
        return (self.needs is None or isinstance(ctx.samples, self.needs)) and self.enabled(ctx)


SECTIONS: dict[str, Section] = {}


def section(name: str, *, needs: type | None = None, enabled: Callable[[SectionContext], bool]):
    """Register the decorated function as the section ``name`` (see the module docstring)."""

    def register(run: Callable[[SectionContext], tuple[dict, list[str]]]):
        SECTIONS[name] = Section(name, needs, enabled, run)
        return run

    return register


def run_sections(ctx: SectionContext) -> dict[str, tuple[dict, list[str]]]:
    """Every registered section that applies to the run's data and config, in order."""
    return {name: entry.run(ctx) for name, entry in SECTIONS.items() if entry.applies(ctx)}


# -- the sections ------------------------------------------------------------------------------


def _attributed_pairs(ctx: SectionContext) -> int:
    """The run's counterfactual pairs: at most one per item (every one estimated by attribution)."""
    return min(ctx.config.patching_pairs, len(ctx.items))


def _exact_pairs(ctx: SectionContext) -> int:
    """The first pairs also patched exactly (the validation subset of the attribution estimate)."""
    return min(ctx.config.patching_exact, _attributed_pairs(ctx))


@section(
    "patching",
    needs=OffersCounterfactuals,
    enabled=lambda ctx: ctx.config.patching_pairs > 0 and ctx.config.patching_exact > 0,
)
def _patching(ctx: SectionContext) -> tuple[dict, list[str]]:
    """Exact counterfactual patching on the first pairs (the synthetic benchmark's pairs)."""
    from .patching import REPORT_CHANGES, REPORT_GROUPS, patching_section

    config = ctx.config
    settings = {
        "cell_pairs": config.patching_cell_pairs,
        "positions": list(REPORT_GROUPS),
        "changes": list(REPORT_CHANGES),
        "seed": config.seed,  # the pairs are drawn with it
    }
    return patching_section(
        ctx.vlm,
        ctx.samples,
        ctx.out,
        n_pairs=_exact_pairs(ctx),
        of_pairs=_attributed_pairs(ctx),
        cell_pairs=config.patching_cell_pairs,
        resume=ctx.run.section_log("patching", settings),
        **ctx.common,
    )


@section("attribution", needs=OffersCounterfactuals, enabled=lambda ctx: ctx.config.patching_pairs > 0)
def _attribution(ctx: SectionContext) -> tuple[dict, list[str]]:
    """Attribution patching on the patching section's pairs (every pair, with its per-cell grid),
    scored against the exact rows that section logged."""
    import pandas as pd

    from .attribution_report import attribution_section
    from .patching import REPORT_CHANGES, REPORT_GROUPS

    config = ctx.config
    settings = {"method": "atp", "positions": list(REPORT_GROUPS), "changes": list(REPORT_CHANGES), "seed": config.seed}
    return attribution_section(
        ctx.vlm,
        ctx.samples,
        ctx.out,
        n_pairs=_attributed_pairs(ctx),
        exact=pd.DataFrame(ctx.run.section_rows("patching")),
        resume=ctx.run.section_log("attribution", settings),
        **ctx.common,
    )


@section("image_lens", needs=OffersCellLabels, enabled=lambda ctx: ctx.config.lens_samples > 0)
def _image_lens(ctx: SectionContext) -> tuple[dict, list[str]]:
    """The image-token lens on at most one sample per item."""
    from .image_lens import lens_section

    settings = {"layers": "all", "site": "resid_pre", "k": 5}
    return lens_section(
        ctx.vlm,
        ctx.samples,
        ctx.out,
        n=min(ctx.config.lens_samples, len(ctx.items)),
        resume=ctx.run.section_log("image_lens", settings),
        **ctx.common,
    )


@section("method_ablation", enabled=lambda ctx: ctx.config.ablation_seeds is not None)
def _method_ablation(ctx: SectionContext) -> tuple[dict, list[str]]:
    """The authors' method component by component, on the run's items."""
    from .method_ablation import AblationConfig, run_method_ablation, write_outputs

    config = ctx.config
    ablation = AblationConfig(
        seeds=config.ablation_seeds,
        n_boot=config.n_boot,
        seed=config.seed,
        progress=config.progress,
        remote=config.remote,
    )
    rows = run_method_ablation(
        ctx.vlm, ctx.items, config=ablation, out=ctx.run.out / FILES.section_log("method_ablation")
    )
    report = write_outputs(
        rows,
        {**ablation.resolved(ctx.vlm), "model": ctx.vlm.name, "dataset": ctx.dataset},
        ctx.out,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    lines = [
        "## The authors' method, component by component",
        "",
        report["paragraph"],
        "",
        "Table and figure: method_ablation.md / .png.",
        "",
    ]
    return report, lines


def _planted(ctx: SectionContext) -> bool:
    from ..models.organism import planted_layers_of

    return planted_layers_of(ctx.vlm.config) is not None


@section("localisation", enabled=_planted)
def _localisation(ctx: SectionContext) -> tuple[dict, list[str]]:
    """On a model with planted reading layers: every localisation method scored against them."""
    from .faithfulness import localisation_section

    return localisation_section(ctx)
