"""The nnsight executor: a Plan schedules interventions into ONE nnsight trace or generation, in forward order.

nnsight hands a trace body each module's values in the order the forward produces
them, so a body must visit hook points in that order. A Plan groups the bound
interventions by hook point, sorts the points by :attr:`interp.hooks.HookPoint.order`,
reads each point once, passes the value through its interventions in the order they
were given (so an ablation listed before a recording is seen by it), and writes the
value back once if it changed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

import nnsight
import torch

from ..errors import InterpError
from ..hooks import site_order
from ..interventions.base import Intervention, StepContext


def build_schedule(bound: list[Intervention]) -> list[tuple[Any, str, list[Intervention]]]:
    """``[(layer, site, [interventions...]), ...]`` sorted in forward order."""
    by_site: dict[tuple, list[Intervention]] = {}
    for intervention in bound:
        for layer, site in intervention.sites():
            items = by_site.setdefault((layer, site), [])
            if intervention not in items:
                items.append(intervention)
    return [(layer, site, items) for (layer, site), items in sorted(by_site.items(), key=lambda kv: site_order(*kv[0]))]


def execute_step(model, access, schedule, ctx: StepContext) -> None:
    """Run one forward's worth of the schedule (called inside the trace body)."""
    for layer, site, items in schedule:
        active = [item for item in items if item.active(ctx)]
        if not active:
            continue
        value = access.read(model, layer, site)
        new = value
        for item in active:
            new = item.at_site(layer, site, new, ctx)
        if new is not value:
            access.write(model, layer, site, new)


@dataclass
class RunResult:
    """What a plan run returns.

    Read recordings with :meth:`record`, :meth:`stack` and :meth:`attention_grid`.

    Args:
        prepared: the :class:`~interp.inputs.Prepared` the run ran on.
        records: the recordings, ``(name, layer, step)`` -> tensor.
        logits: the prefill's last-position logits ``(batch, vocab)``.
        sequences: the generated token ids (new tokens only), when the run generated.
        text: the decoding of ``sequences``, when the run generated.
        step_logits: when the run generated, the last-position logits of each step (only
            the prefill's unless an intervention acts at every step).
    """

    prepared: Any
    records: dict
    logits: torch.Tensor | None = None
    sequences: torch.Tensor | None = None
    text: list[str] | None = None
    step_logits: list = field(default_factory=list)

    def __repr__(self) -> str:
        shape = tuple(self.logits.shape) if self.logits is not None else None
        text = f", text={self.text!r}" if self.text is not None else ""
        return (
            f"RunResult({len(self.records)} records of {self.names() or 'nothing'}, logits {shape}{text}; "
            f"prompt of {self.prepared.seq_len} tokens)"
        )

    def names(self) -> list[str]:
        """The names recorded, sorted.

        Returns:
            Every recording name in :attr:`records`, sorted.
        """
        return sorted({key[0] for key in self.records})

    def layers(self, name: str) -> list[int]:
        """The layers a name was recorded at.

        Args:
            name: the recording's name.

        Returns:
            Those layers, ascending (a recording without a layer is left out).
        """
        return sorted({key[1] for key in self.records if key[0] == name and key[1] is not None})

    def record(self, name: str, layer: int | None = None, step: int = 0) -> torch.Tensor:
        """One recording.

        Args:
            name: the recording's name (``"attention"`` by default for
                :class:`~interp.interventions.RecordAttention`; the hook name for
                :class:`~interp.interventions.RecordResidual`).
            layer: its layer (None for a recording without one).
            step: the generation step (0: the prefill).

        Returns:
            The recorded tensor.

        Raises:
            InterpError: nothing was recorded under ``(name, layer, step)``; the message
                lists what was.
        """
        key = (name, layer, step)
        if key not in self.records:
            have = ", ".join(f"{n}@{l}" for n, l, s in sorted(self.records, key=str) if s == step) or "nothing"
            raise InterpError(f"no recording {name!r} at layer {layer}, step {step}; recorded: {have}")
        return self.records[key]

    def stack(self, name: str, step: int = 0) -> torch.Tensor:
        """Recordings of ``name`` for all its layers, stacked on a new leading axis.

        Args:
            name: the recording's name.
            step: the generation step (0: the prefill).

        Returns:
            A tensor ``[n_layers_recorded, ...]``, layers ascending (see :meth:`layers`).

        Raises:
            InterpError: a layer's recording is missing at ``step``.
        """
        return torch.stack([self.record(name, layer, step) for layer in self.layers(name)])

    def attention_grid(
        self,
        layer: int,
        name: str = "attention",
        image: int = 0,
        query: int = -1,
        step: int = 0,
        batch: int = 0,
        view: str | None = None,
    ) -> torch.Tensor:
        """Head-mean attention of one query row to one image, on that image's patch grid.

        Needs a ``RecordAttention(heads="mean", keys="image")``.

        Args:
            layer: the layer recorded.
            name: the recording's name.
            image: which image of the prompt.
            query: which recorded query row (-1: the last).
            step: the generation step (0: the prefill).
            batch: which batch row.
            view: a named view of the image's layout instead of its primary grid.

        Returns:
            A float tensor ``[rows, cols]``; cells no token covers are NaN.

        Raises:
            InterpError: no such recording, or it is not a head-mean recording over the
                image tokens.
        """
        values = self.record(name, layer, step)
        if values.ndim != 3:
            raise InterpError("attention_grid needs a head-mean recording (RecordAttention(heads='mean'))")
        if values.shape[-1] != self.prepared.n_image_tokens:
            raise InterpError("attention_grid needs a recording over the image tokens (keys='image')")
        row = values[batch, query].float()
        layout = self.prepared.layouts[image]
        grid_view = layout.view(view) if view else layout.grid
        return grid_view.scatter(row, self.prepared.image_positions)


def _flatten(items: Iterable) -> list[Intervention]:
    out = []
    for item in items:
        if isinstance(item, Plan):
            out.extend(item.interventions)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        elif isinstance(item, Intervention):
            out.append(item)
        else:
            raise InterpError(f"not an intervention: {item!r}")
    return out


class Plan:
    """Interventions that run together in one pass. Compose with ``+``.

    At a shared hook point the interventions act in the order given (an ablation listed
    before a recording is seen by it).

    Args:
        *interventions: interventions, lists or tuples of them, or plans (flattened, in order).

    Raises:
        InterpError: an item is not an intervention.

    Example:
        ```python
        plan = interp.Plan(interp.ScaleImageTokens(layers=[2], scale=0)) + interp.RecordAttention()
        result = plan.run(vlm, vlm.prepare("cat.png", "What colour is the cat?"))
        result.stack("attention")  # [n_layers, batch, 1, n_image_tokens]
        ```
    """

    def __init__(self, *interventions: Intervention | Iterable[Intervention]):
        self.interventions = _flatten(interventions)

    def __add__(self, other) -> Plan:
        return Plan(self, other)

    def __iter__(self):
        return iter(self.interventions)

    def __len__(self) -> int:
        return len(self.interventions)

    def __repr__(self) -> str:
        return f"Plan({', '.join(map(repr, self.interventions))})"

    def bind(self, vlm, prepared) -> list[Intervention]:
        bound = [item.bind(vlm.n_layers, prepared) for item in self.interventions]
        vlm.check_sites(bound)
        return bound

    def run(
        self,
        vlm,
        prepared,
        *,
        generate: bool = False,
        max_new_tokens: int = 16,
        remote: bool | str | None = None,
        logit_positions=None,
        count_as: str | None = None,
        **generate_kwargs,
    ) -> RunResult:
        """Run the plan on ``prepared`` in one trace (prefill) or one generation.

        :meth:`interp.VLM.run` is the usual way in (it validates its inputs first).

        Args:
            vlm: the :class:`~interp.models.vlm.VLM` to run.
            prepared: the prompt (:meth:`interp.VLM.prepare`).
            generate: generate greedily instead of one prefill forward.
            max_new_tokens: tokens to generate.
            remote: run on NDIF (True) or nnsight's local simulation of it (``"local"``);
                None: the model's default.
            logit_positions: without generation, the positions (a list) whose logits to
                keep; None: the last position only.
            count_as: the name of the pass in ``vlm.counts`` (default ``full_forward`` /
                ``generate``).
            **generate_kwargs: passed to the model's ``generate``.

        Returns:
            The run's :class:`RunResult`. Without generation its ``logits`` are the last
                position's ``(batch, vocab)``, or with ``logit_positions`` those
                positions' ``(batch, n, vocab)``.

        Raises:
            InterpError: an intervention does not fit the model or the prompt (a layer out of
                range, an unknown hook name, a bad token selector).
        """
        bound = self.bind(vlm, prepared)
        schedule = build_schedule(bound)
        every_step = generate and any(item.every_step for item in bound)
        inputs = dict(prepared.inputs)
        seq_len = prepared.seq_len
        access = vlm.access
        model = vlm.nnsight
        trace_kwargs = vlm.trace_kwargs(remote)
        vlm.counts[count_as or ("generate" if generate else "full_forward")] += 1

        if not generate:
            with torch.no_grad(), model.trace(inputs, **trace_kwargs):
                records = nnsight.save({})
                execute_step(model, access, schedule, StepContext.of(prepared, records, vlm.device))
                if logit_positions is None:
                    logits = model.output.logits[:, -1].save()
                else:
                    logits = model.output.logits[:, logit_positions].save()
            return RunResult(prepared, _to_cpu(records), logits=logits.detach().cpu())

        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
        if not every_step:
            with torch.no_grad(), model.generate(inputs, **kwargs, **trace_kwargs) as tracer:
                records = nnsight.save({})
                execute_step(model, access, schedule, StepContext.of(prepared, records, vlm.device))
                logits = model.output.logits[:, -1].save()
                ids = tracer.result.save()
            new_ids = ids[:, seq_len:].detach().cpu()
            return RunResult(
                prepared,
                _to_cpu(records),
                logits=logits.detach().cpu(),
                sequences=new_ids,
                text=vlm.decode(new_ids),
                step_logits=[logits.detach().cpu()],
            )

        # Every step: the loop ends when generation does, so nothing may follow it in
        # the body; the token each step produced is read off nnsight's streamer, whose
        # first output is the prompt and each later one the token of the step before.
        with warnings.catch_warnings():
            # nnsight warns that the open loop's last step "was never reached": by design
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with torch.no_grad(), model.generate(inputs, **kwargs, **trace_kwargs) as tracer:
                records = nnsight.save({})
                streamed = nnsight.save([])
                step_logits = nnsight.save([])
                prefill = StepContext.of(prepared, records, vlm.device)
                for step in tracer.iter[:]:
                    streamed.append(model.generator.streamer.output)
                    offset = 0 if step == 0 else seq_len + step - 1
                    execute_step(model, access, schedule, prefill.at(step, offset))
                    step_logits.append(model.output.logits[:, -1])
        new_ids = torch.cat([torch.as_tensor(t).reshape(-1, 1) for t in streamed[1:]], dim=1).cpu()
        logits_list = [t.detach().cpu() for t in step_logits]
        return RunResult(
            prepared,
            _to_cpu(records),
            logits=logits_list[0],
            sequences=new_ids,
            text=vlm.decode(new_ids),
            step_logits=logits_list,
        )


def _to_cpu(records: dict) -> dict:
    return {key: value.detach().cpu() for key, value in records.items()}
