"""The engine's runs with a source: one nnsight session that runs a source input, then the base
once per condition, for interventions that read the source (:meth:`Intervention.needs_source`,
e.g. :class:`~interp.interventions.PatchActivations`).

Beside :meth:`interp.engine.plan.Plan.run` (one input, one trace), :func:`patch_session` is the
engine's entrance for source-reading interventions: every condition is bound, scheduled and
executed by the same :func:`~interp.engine.plan.execute_step`; the source run records what the
conditions' interventions ask for (:meth:`Intervention.source_recorder`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nnsight
import torch

from ..errors import InputError
from ..interventions.base import StepContext
from ..interventions.patch import RecordSource
from .plan import Plan, RunResult, build_schedule, execute_step


@dataclass
class PatchedRuns:
    """What :func:`patch_session` returns: the source run and one base run per condition."""

    source: RunResult
    runs: list[RunResult] = field(default_factory=list)


def _source_recorders(bound: Iterable) -> list:
    """One recorder per source name, over the union of the sites the patches need."""
    sites: dict[str, set] = {}
    for item in bound:
        made = item.source_recorder()
        if made is not None:
            sites.setdefault(made.name, set()).update(made.sites())
    return [RecordSource(s, name) for name, s in sites.items()]


def _with_source(items, source) -> list:
    return [item.with_source(source) if item.needs_source() else item for item in Plan(items)]


def patch_session(
    vlm,
    base,
    source,
    conditions: Sequence[Sequence],
    *,
    remote: bool | str | None = None,
    logit_positions=None,
    source_interventions: Sequence = (),
) -> PatchedRuns:
    """Run ``source`` once, then ``base`` once per condition (a list of interventions, any
    mix of :class:`PatchActivations` and others), all in one nnsight session.

    Patches without a source get ``source``. The source run records every site any
    patch needs (whole activations, under :meth:`PatchActivations.source_key`), plus
    ``source_interventions`` of its own. Logits: the last position ``(batch, vocab)``,
    or ``logit_positions`` of each run (``(batch, n, vocab)``).
    """
    if base.input_ids.shape[0] != source.input_ids.shape[0]:
        raise InputError(f"the source has batch {source.input_ids.shape[0]} but the base has {base.input_ids.shape[0]}")
    bound_conditions = [Plan(_with_source(items, source)).bind(vlm, base) for items in conditions]
    recorders = _source_recorders(item for bound in bound_conditions for item in bound)
    source_bound = Plan(source_interventions).bind(vlm, source) + recorders
    source_schedule = build_schedule(source_bound)
    schedules = [build_schedule(bound) for bound in bound_conditions]
    model, access = vlm.nnsight, vlm.access
    trace_kwargs = vlm.trace_kwargs(remote)

    def pick(logits):
        return logits[:, -1] if logit_positions is None else logits[:, logit_positions]

    with torch.no_grad(), model.session(**trace_kwargs):
        records = nnsight.save({})
        outputs = nnsight.save([])
        with model.trace(dict(source.inputs)):
            execute_step(model, access, source_schedule, StepContext.of(source, records, vlm.device))
            source_logits = nnsight.save(pick(model.output.logits))
        for schedule in schedules:
            with model.trace(dict(base.inputs)):
                run_records = dict(records)  # the source's values, and this run's own recordings
                ctx = StepContext.of(base, run_records, vlm.device)
                execute_step(model, access, schedule, ctx)
                outputs.append((run_records, pick(model.output.logits)))
    source_records = {k: v.detach().cpu() for k, v in records.items()}
    source_run = RunResult(source, source_records, logits=source_logits.detach().cpu())
    runs = [
        RunResult(base, {k: v.detach().cpu() for k, v in rec.items() if k not in records}, logits=logits.detach().cpu())
        for rec, logits in outputs
    ]
    return PatchedRuns(source_run, runs)


def run_patched(
    vlm,
    base,
    source,
    *interventions,
    remote: bool | str | None = None,
    logit_positions=None,
    source_interventions: Sequence = (),
) -> RunResult:
    """Run ``base`` with ``interventions`` (patches read from ``source``), after a source
    run recording what the patches need, in one nnsight session. Returns the base run."""
    return patch_session(
        vlm,
        base,
        source,
        [list(interventions)],
        remote=remote,
        logit_positions=logit_positions,
        source_interventions=source_interventions,
    ).runs[0]


__all__ = ["PatchedRuns", "patch_session", "run_patched"]
