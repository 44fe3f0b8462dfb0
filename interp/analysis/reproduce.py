"""``interp reproduce``: every analysis of the paper on one model and dataset.

The pipeline runs ONE clean pass per sample (:mod:`interp.analysis.clean`) and derives
from it the masking sweep's baseline and restart prefix, the attention maps and the
logit lens (phase 1). The contrastive method needs the review layer, which the sweep
over all samples decides, so it runs in phase 2 from the same clean passes — kept in
memory up to ``keep_prefix_mb``; a sample beyond that budget re-runs its clean pass
(counted). Only v2's crop is an extra forward. ``report.json`` records the passes of
each kind (``counts``).

Cross-question batching (``batch_size``): the clean passes of ``batch_size`` samples run as one
right-padded forward, cut back into one pass per sample (:func:`interp.analysis.clean.sample_passes`;
restartable ones too, so the sweep restarts from them unchanged); every other analysis then runs
per sample as before. Results equal batch 1 within float tolerance, so the batch size is not part
of the run's settings: a run may be resumed with another one. Rows are still written per sample,
so an interrupted batch recomputes only its samples without rows. Default (None): 1 on the CPU,
:data:`GPU_BATCH_SIZE` when the model is on an accelerator (decided when the run starts); families
that cannot batch (their adapter's ``batched_forward``) and remote runs use 1.

The tables go to :mod:`interp.analysis.report`, which computes the statistics, draws
the figures and writes ``report.json`` / ``report.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..engine.clean_pass import supports_prefix_reuse
from ..errors import InputError, InterpError
from ..evaluation.shards import shard_docs
from ..interventions.base import resolve_layers
from ..options import DEFAULT_WINDOW, GPU_BATCH_SIZE, PAPER_MASK_SCALE
from ..options import SWEEP_VARIANTS as VARIANTS
from .attention import attention_rows, attention_table
from .clean import sample_passes
from .contrastive import ContrastiveSetup, contrastive_frame, contrastive_rows
from .items import as_items
from .logit_lens import lens_frame, lens_rows
from .rundir import RunDir, RunDirError
from .sections import SectionContext, run_sections
from .stats import bootstrap_mean_ci, detect_fusion, layer_effects
from .sweep import MODES, SCORINGS, check_decode_batch, check_options, sweep_frame, sweep_rows, use_fast


@dataclass(frozen=True)
class ReproduceConfig:
    variants: tuple[str, ...] = VARIANTS
    window: int = DEFAULT_WINDOW
    scale: float = PAPER_MASK_SCALE
    scoring: str = SCORINGS[0]
    mode: str = MODES[0]
    rhos: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    primary: tuple[str, float, str] = ("all", 0.2, "jsd")
    heatmap_layers: int = 6
    n_boot: int = 2000
    seed: int = 0
    remote: Any = None
    progress: bool = True
    #: memory for clean prefixes kept between the two phases; beyond it, phase 2 re-runs them
    keep_prefix_mb: float = 2048.0
    #: the synthetic benchmark's sections (0: skip): counterfactual patching on this many pairs
    #: (colour and shape changes and the distractor control, taking turns) and the
    #: image-token lens on this many samples; other data have no counterfactuals or cell labels
    patching_pairs: int = 60
    #: of those pairs, the first this many are patched exactly (a validation subset: the attribution
    #: section estimates every pair and is scored against these); ``patching_pairs`` or more: all
    patching_exact: int = 15
    #: of the exactly patched pairs, how many are also patched cell by cell (a restart per image cell and cell layer)
    patching_cell_pairs: int = 2
    lens_samples: int = 60
    #: the authors'-method ablation with this many sampling seeds (None: off; it generates
    #: 8 x (1 + seeds) answers per question)
    ablation_seeds: int | None = None
    #: samples whose clean passes run as one padded forward (None: 1 on the CPU, GPU_BATCH_SIZE on
    #: an accelerator); results equal batch 1, so it is not a setting a resumed run must keep
    batch_size: int | None = None
    #: a question's started sweep conditions per restart forward (layer-major; see
    #: :func:`interp.engine.prefix.restart_many`); larger suits a GPU with memory to spare. Results
    #: equal at any value (float tolerance), so, like batch_size, a resumed run may change it
    restart_batch: int = 8
    #: with ``scoring="generate"``: a question's sweep conditions decoded together (their prompt
    #: keys/values are held until then); "auto" sizes it from the free memory
    #: (:func:`interp.engine.memory.decode_batch_for`). Results equal at any value, so a resumed run may change it
    decode_batch: int | str | None = "auto"


def resolve_batch_size(vlm, batch_size: int | None, remote=None) -> int:
    """The batch size a run uses: ``batch_size`` (checked), else 1 on the CPU and
    :data:`GPU_BATCH_SIZE` on an accelerator (the model's device, now); 1 where the family or a
    remote run cannot batch (:func:`interp.engine.batched.batch_reason`)."""
    from .. import validate
    from ..engine.batched import batch_reason

    if batch_size is not None:
        batch_size = validate.positive_int(batch_size, "batch_size")
    if batch_reason(vlm, remote) is not None:
        return 1
    if batch_size is None:
        return 1 if vlm.device.type == "cpu" else GPU_BATCH_SIZE
    return batch_size


#: the fewest decoder layers a reproduce run can use: a pre layer, a reference layer, a review layer
MIN_LAYERS = 3


@dataclass
class Tables:
    """What the pipeline measured: tidy per-sample tables, timings, pass counts."""

    items: list
    sweep: pd.DataFrame
    maps: pd.DataFrame
    lens: pd.DataFrame
    contrastive: pd.DataFrame
    effects: pd.DataFrame
    baseline: tuple
    findings: dict
    review: int
    review_source: str
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    #: the figure's example: its item id and greedy answers without / with the primary mask
    example: dict = field(default_factory=dict)


def choose_review_layer(effects: pd.DataFrame, finding, n_layers: int) -> tuple[int, str]:
    """The detected review layer, or (stated as a fallback) the deeper-half layer where
    single-layer masking lowers accuracy most — saying whether that drop is significant."""
    if finding.review_layer is not None:
        return finding.review_layer, "detected"
    rows = effects[(effects.variant == "single") & (effects.layer >= max(2, n_layers // 2))]
    if rows.empty:
        return n_layers - 1, "fallback: no review layer detected and no deeper-half layer measured; the last layer"
    row = rows.sort_values(["diff", "layer"]).iloc[0]
    significant = int(row.layer) in finding.significant_layers
    return int(row.layer), (
        "fallback: no review layer detected; the deeper-half layer with the largest masking drop "
        f"({'significant' if significant else 'not significant'} family-wise)"
    )


def run_settings(vlm, dataset: str, items: list, config: ReproduceConfig) -> dict:
    """What a run directory's rows depend on (checked on resume; the shard is not part of it,
    nor the report-only settings n_boot, seed and heatmap_layers: rerunning with other values
    rewrites the report from the same rows)."""
    import hashlib

    # batch_size: the rows are the same at any batch size (within float tolerance; tests/engine/test_batching.py),
    # so a run may be continued with another one
    report_only = (
        "progress",
        "keep_prefix_mb",
        "remote",
        "n_boot",
        "seed",
        "heatmap_layers",
        "patching_pairs",
        "patching_exact",
        "patching_cell_pairs",
        "lens_samples",
        "ablation_seeds",
        "batch_size",
        "restart_batch",
        "decode_batch",
    )
    fields = {k: v for k, v in asdict(config).items() if k not in report_only}
    ids = [item.id for item in items]
    weights_id = vlm.weights_id
    weights = {"weights": weights_id} if weights_id else {}  # e.g. a retrained organism: not the same run
    return {
        "kind": "interp-reproduce",
        "model": vlm.name,
        **weights,
        "n_layers": vlm.n_layers,
        "dataset": dataset,
        "n_samples": len(items),
        "items_sha1": hashlib.sha1(json.dumps(ids).encode()).hexdigest(),
        **json.loads(json.dumps(fields)),
    }


class _World:
    """torch.distributed when launched by ``torchrun`` (rank r runs shard r+1 of the world)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if _cuda() else "gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        self.dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_analyses(
    vlm,
    items: list,
    config: ReproduceConfig,
    run: RunDir,
    *,
    shard: tuple[int, int] | None = None,
    world: _World | None = None,
) -> Tables | None:
    """Phase 1 (clean pass, sweep, attention, lens) and phase 2 (contrastive) for this shard's
    samples not yet in ``run``; the tables of every sample once all shards are done (else None)."""
    variants = check_options(config.variants, config.scoring, config.mode, config.window)
    remote = config.remote
    restartable = config.mode != "naive" and supports_prefix_reuse(vlm) is None and remote in (None, False)
    fast_sweep = use_fast(vlm, config.mode, config.scoring, remote)
    layers = resolve_layers("all", vlm.n_layers)
    before = Counter(vlm.counts)
    timings: Counter = Counter()
    budget = config.keep_prefix_mb * 2**20
    mine = shard_docs(items, shard)
    kept, held = {}, 0

    done = run.done("phase1")
    todo = [item for item in mine if item.id not in done]
    batch = resolve_batch_size(vlm, config.batch_size, remote)
    bar = tqdm(
        total=len(todo),
        desc=f"clean pass, sweep ({'fast' if fast_sweep else 'naive'}), attention, lens",
        unit="sample",
        disable=not config.progress,
    )
    for chunk in _chunks(todo, batch):
        t = time.time()
        with _fits(chunk, batch):
            passes = sample_passes(vlm, chunk, restartable=restartable, remote=remote)
        timings["clean_pass"] += time.time() - t
        for item, sp in zip(chunk, passes):
            t = time.time()
            with _fits([item], batch, "a smaller --restart-batch or --decode-batch (the masking sweep)"):
                sweep = sweep_rows(
                    vlm,
                    sp,
                    variants,
                    layers,
                    window=config.window,
                    scale=config.scale,
                    scoring=config.scoring,
                    fast=fast_sweep,
                    remote=remote,
                    batch=config.restart_batch,
                    decode_batch=check_decode_batch(config.decode_batch),
                )
            timings["masking_sweep"] += time.time() - t
            t = time.time()
            maps = _plain(attention_rows(sp).to_dict("records"))
            timings["attention_maps"] += time.time() - t
            t = time.time()
            lens = lens_rows(vlm, sp)
            timings["early_output"] += time.time() - t
            run.append("phase1", {"item": item.id, "sweep": _plain(sweep), "maps": maps, "lens": _plain(lens)})
            sp.clean.records = {k: v for k, v in sp.clean.records.items() if k[0] == "attention"}  # lens done
            size = sp.clean.prefix_bytes()
            if held + size > budget:
                sp.clean.release_prefix()
            else:
                held += size
            kept[item.id] = sp
            bar.update(1)
        del passes
    bar.close()

    if world is not None:
        world.barrier()
    done = run.done("phase1")
    if any(item.id not in done for item in items):
        run.add_passes(_delta(vlm.counts, before), dict(timings), batch_size=batch)
        return None
    sweep_table = sweep_frame(
        _gather(done, items, "sweep"),
        vlm,
        scoring=config.scoring,
        fast=fast_sweep,
        scale=config.scale,
        window=config.window,
    )
    effects = layer_effects(sweep_table, n_boot=config.n_boot, seed=config.seed)
    base_values = sweep_table[sweep_table.variant == "baseline"].correct.values
    baseline = bootstrap_mean_ci(base_values, n_boot=config.n_boot, seed=config.seed)
    findings = {v: detect_fusion(effects, variant=v, baseline=baseline[0]) for v in variants}
    review, review_source = choose_review_layer(
        effects, findings.get("single", next(iter(findings.values()))), vlm.n_layers
    )

    fusion_layers = findings["single"].fusion_layers if "single" in findings else []
    setup = ContrastiveSetup.build(
        vlm, review, fusion_layers, config.rhos, ("jsd", "hellinger"), config.primary, config.mode, remote
    )
    finished = run.done("phase2")
    todo = [item for item in mine if item.id not in finished]
    bar = tqdm(total=len(todo), desc="contrastive attention", unit="sample", disable=not config.progress)
    for chunk in _chunks(todo, batch):
        t = time.time()
        held_passes = {item.id: kept.pop(item.id, None) for item in chunk}
        rerun = [
            item
            for item in chunk
            if held_passes[item.id] is None or (setup.fast and not held_passes[item.id].clean.restartable)
        ]
        if rerun:
            with _fits(rerun, batch):
                held_passes.update(
                    zip(
                        [item.id for item in rerun],
                        sample_passes(vlm, rerun, restartable=setup.fast, remote=remote, residual_layers=None),
                    )
                )
        timings["contrastive"] += time.time() - t
        for item in chunk:
            t = time.time()
            sp = held_passes.pop(item.id)
            with _fits([item], batch):
                rows = contrastive_rows(vlm, sp, setup, remote=remote)
            run.append("phase2", {"item": item.id, "review_layer": review, "rows": _plain(rows)})
            sp.clean.release_prefix()
            timings["contrastive"] += time.time() - t
            bar.update(1)
    bar.close()
    run.add_passes(_delta(vlm.counts, before), dict(timings), batch_size=batch)

    if world is not None:
        world.barrier()
    finished = run.done("phase2")
    if any(item.id not in finished for item in items):
        return None
    stale = sorted({record["review_layer"] for record in finished.values()} - {review})
    if stale:
        raise RunDirError(
            f"{run.out} has contrastive rows for review layer(s) {stale}, not {review}; use another --out"
        )
    passes = run.passes()
    counts = dict(passes["counts"])
    counts["clean_forwards_per_sample"] = counts.get("clean_forward", 0) / max(1, len(items))
    counts["crop_forwards_per_sample"] = counts.get("crop_forward", 0) / max(1, len(items))
    # how the clean passes ran: the batch size(s) the run's processes used (resolved; a resumed
    # run may have used several), beside clean_forwards_per_sample
    counts["batch_sizes"] = passes["batch_sizes"]
    maps = pd.DataFrame(_gather(done, items, "maps"))
    maps["attention"] = maps["attention"].astype("float32")
    return Tables(
        items,
        sweep_table,
        attention_table([maps], vlm),
        lens_frame(_gather(done, items, "lens"), vlm),
        contrastive_frame(_gather(finished, items, "rows"), vlm, setup),
        effects,
        baseline,
        findings,
        review,
        review_source,
        passes["timings"],
        counts,
    )


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _fits(items: list, batch: int, step: str = ""):
    """Samples that do not fit in accelerator memory: one line saying which, and what to do
    (``step``: the options that bound the step inside, named first)."""
    try:
        yield
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(error).lower():
            raise
        which = (
            f"sample {items[0].id!r}"
            if len(items) == 1
            else f"the batch of samples {', '.join(repr(i.id) for i in items)}"
        )
        smaller = f"a smaller --batch-size (this run: {batch}), " if batch > 1 else ""
        smaller = f"{step}, " + smaller if step else smaller
        raise InterpError(
            f"{which} does not fit in memory ({str(error).splitlines()[0][:120]}); finished "
            f"samples are saved: rerun with {smaller}a smaller --keep-prefix-mb, a shorter prompt, or "
            "more devices (--device-map auto)"
        ) from None


def example_answers(vlm, tables: Tables, config: ReproduceConfig, max_new_tokens: int = 8) -> dict:
    """The contrastive figure's sample, answered greedily without and with the primary mask."""
    from ..interventions import ContrastiveMask
    from .report import pick_example

    item = pick_example(tables.items, tables.contrastive)
    name, rho, distance = config.primary
    sets = tables.contrastive.attrs["candidate_sets"]
    prepared = vlm.prepare(item.image, item.question)
    mask = ContrastiveMask(tables.review, candidates=sets[name], rho=rho, distance=distance)
    before = vlm.run(prepared, generate=True, max_new_tokens=max_new_tokens, remote=config.remote).text[0]
    after = vlm.run(prepared, mask, generate=True, max_new_tokens=max_new_tokens, remote=config.remote).text[0]
    tables.counts["generate"] = tables.counts.get("generate", 0) + 2
    return {"item": item.id, "answer_before": before, "answer_after": after}


def _gather(done: dict, items: list, key: str) -> list[dict]:
    """Every sample's rows of one kind, in the samples' order (what an unsharded run makes)."""
    return [row for item in items for row in done[item.id][key]]


def _delta(counts: Counter, before: Counter) -> dict:
    return {k: v - before.get(k, 0) for k, v in counts.items() if v - before.get(k, 0)}


def _plain(rows: list[dict]) -> list[dict]:
    """Rows with numpy scalars as Python numbers (exact: float32 values stay exactly representable)."""
    return [{key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()} for row in rows]


def reproduce(
    vlm,
    samples: Any,
    out_dir: str | Path,
    *,
    dataset: str = "",
    limit: int | None = None,
    config: ReproduceConfig | None = None,
    shard: tuple[int, int] | None = None,
) -> dict | None:
    """Run every analysis on ``samples`` and write figures, ``report.json`` and ``report.md``
    into ``out_dir``, appending each sample's rows as it goes (rerun the same call to
    resume). ``shard=(i, n)`` runs the i-th of n shards; under ``torchrun`` each rank runs
    its own shard and rank 0 writes the report. Returns the report dict, or None while
    other shards are not done (or on ranks other than 0)."""
    from .report import write_report

    config = config or ReproduceConfig()
    from .. import validate

    validate.positive_int(config.restart_batch, "restart_batch")  # before any compute
    validate.positive_int(config.n_boot, "n_boot")
    check_decode_batch(config.decode_batch)
    check_options(config.variants, config.scoring, config.mode, config.window, vlm.n_layers)
    if vlm.n_layers < MIN_LAYERS:
        raise InputError(
            f"reproduce needs at least {MIN_LAYERS} decoder layers (the contrastive method's pre layer lies before "
            f"its reference layer, which lies before the review layer); {vlm.name} has {vlm.n_layers}"
        )
    validate.non_negative_int(config.patching_exact, "patching_exact")
    validate.non_negative_int(config.patching_cell_pairs, "patching_cell_pairs")
    if config.batch_size is not None:
        validate.positive_int(config.batch_size, "batch_size")
    items = as_items(samples, limit)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise InputError("sample ids must be unique for a resumable run")
    world = _World() if launched_by_torchrun() else None
    if world is not None:
        if shard is not None:
            raise InputError("under torchrun each rank is a shard: drop --shard")
        shard = (world.rank + 1, world.size)
    out = Path(out_dir)
    try:
        with RunDir(out, run_settings(vlm, dataset, items, config), shard) as run:
            tables = run_analyses(vlm, items, config, run, shard=shard, world=world)
            if tables is None or (world is not None and world.rank != 0):
                return None
            tables.example = example_answers(vlm, tables, config)
            extras = run_sections(SectionContext(vlm, samples, items, config, run, out, dataset, tables))
            return write_report(vlm, tables, config, out, dataset=dataset, extras=extras)
    finally:
        if world is not None:
            world.close()
