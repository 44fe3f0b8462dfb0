"""The performance benchmarks (benchmarks/run.py) run, report every ratio, and measure the right thing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import attention, models

from .conftest import tiny_vlm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run.py"

RATIOS = (
    "record_attention_time_ratio",
    "record_attention_peak_mem_ratio",
    "eager_output_attentions_time_ratio",
    "eager_output_attentions_peak_mem_ratio",
    "nnsight_overhead",
)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_run_reports_every_ratio(tmp_path):
    # its own process: the benchmark fixes torch's thread count and glibc's mmap threshold
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json-out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # stdout is exactly the one JSON object

    for key in RATIOS:
        assert _positive(result[key]), (key, result[key])
    for key in ("record_attention_activation_mem_ratio", "eager_output_attentions_activation_mem_ratio"):
        assert result[key] is None or _positive(result[key]), (key, result[key])
    # the sweep slots: a number for identical results, or null with the reason, never a fake
    for slot in ("sweep_speedup", "generate_sweep_speedup"):
        if result[slot] is None:
            assert result[f"{slot}_reason"]
        else:
            assert _positive(result[slot])
            sweep = result["details"][slot]
            assert sweep["correct_identical"] and sweep["logprob_max_abs_diff"] <= 1e-4
            assert sweep["predictions_identical"] is (True if slot.startswith("generate") else None)
            observed = sweep["observed"]["per_question"]
            assert observed["fast"]["layer_token_rows"] < observed["naive"]["layer_token_rows"]

    # clean-pass batching: a number only for passes equal to batch 1's
    if result["clean_pass_batch_speedup"] is None:
        assert result["clean_pass_batch_speedup_reason"]
    else:
        assert _positive(result["clean_pass_batch_speedup"])
        batching = result["details"]["clean_pass_batching"]
        assert batching["worst_share_of_tolerance"] <= 1
        forwards = batching["forwards"]
        assert forwards["batch_1"]["observed_forwards_per_question"] == 1.0
        assert forwards[f"batch_{batching['batch_size']}"]["observed_forwards_per_question"] < 1.0

    machine = result["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] >= 1
    attention = result["details"]["attention"]
    assert attention["record_vs_eager_max_abs_diff"] < 1e-5
    for variant in ("plain_sdpa", "record_attention", "eager_output_attentions"):
        memory = attention["memory"][variant]
        assert _positive(memory["peak_rss_mb"]) and _positive(memory["weights_mb"])
        # the peak-memory method reads a known 64 MiB allocation as 64 MiB
        assert abs(memory["calibration"]["measured_mb"] - 64.0) < 4.0, memory["calibration"]
        assert len(attention["times_s"][variant]) == result["settings"]["reps"]
    assert attention["config"]["seq_len"] > attention["config"]["n_image_tokens"] > 0
    assert set(result["meets_targets"]) == {
        "record_attention_peak_mem_ratio",
        "record_attention_time_ratio",
        "nnsight_overhead",
    }


def test_benchmarked_attention_equals_eager_output_attentions():
    """What the benchmark times as RecordAttention is HF eager attention, row for row."""
    import interp

    spec = models.QUICK_WIDE
    model, processor = models.build_wide(spec, "sdpa")
    prepared = models.wide_prepared(model, processor, spec)
    eager_model, _ = models.build_wide(spec, "eager")  # same seed: same weights
    for name, tensor in eager_model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name

    with torch.no_grad():
        out = eager_model(**prepared.inputs, output_attentions=True)
    expected = torch.stack([a[:, :, -1, :].mean(dim=1) for a in out.attentions])  # (layers, batch, keys)
    assert expected.shape[-1] == prepared.seq_len

    vlm = interp.load(model, processor)
    assert vlm.attn_implementation == "sdpa"
    recorded = attention.record_attention_values(vlm, prepared, keys="all")
    assert recorded.shape == expected.shape
    assert float((recorded - expected).abs().max()) < 1e-5
    image_only = attention.record_attention_values(vlm, prepared, keys="image")
    assert float((image_only - expected[..., prepared.image_positions]).abs().max()) < 1e-5
    # and the benchmark's own eager variant is the same computation
    assert float((attention.eager_attention_values(eager_model, prepared) - expected).abs().max()) == 0.0


def test_counted_sweep_layer_work_is_what_the_sweep_runs():
    """The sweep benchmark's layer-work counts (from the conditions alone) equal the decoder-layer
    calls a plain PyTorch forward hook sees in masking_sweep's naive and fast modes."""
    from interp.analysis.sweep import masking_sweep

    from benchmarks.sweep import layer_work, teacher_forced_lengths

    vlm = tiny_vlm("llava", "sdpa")
    samples = models.organism_samples(2)
    variants, batch = ("single", "window", "knockout_last"), 2  # 3 conditions per restart layer: chunks of 2 and 1
    lengths = teacher_forced_lengths(vlm, samples)
    assert len(lengths) == 2
    layers = vlm.adapter.resolve(vlm.model, "layers")
    calls: dict[int, list] = {}

    def hook(index):
        def record(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            calls.setdefault(index, []).append(tuple(hidden.shape[:2]))

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for mode, rows in (("naive", True), ("fast", False)):  # the fast schedule: every row of every condition
            calls.clear()
            masking_sweep(vlm, samples, variants=variants, mode=mode, batch=batch, progress=False, rows=rows)
            expected = layer_work(vlm.n_layers, list(range(vlm.n_layers)), variants, lengths, batch)["total"][mode]
            seen = [shape for index in calls for shape in calls[index]]
            assert len(calls[vlm.n_layers - 1]) == expected["forwards"], mode  # every forward runs the last layer
            assert len(seen) == expected["layer_forwards"], mode
            assert sum(rows for rows, _ in seen) == expected["layer_row_forwards"], mode
            assert sum(rows * seq for rows, seq in seen) == expected["layer_token_rows"], mode
            assert {seq for _, seq in seen} == set(lengths.values()), mode
        # the row-level restart (the default): the engine's own count is what the layers saw, and less
        calls.clear()
        vlm.counts.clear()
        masking_sweep(vlm, samples, variants=variants, mode="fast", batch=batch, progress=False)
        seen = [shape for index in calls for shape in calls[index]]
        clean = vlm.n_layers * sum(lengths.values())  # the clean pass of each sample (not in the engine's count)
        assert sum(rows * seq for rows, seq in seen) == vlm.counts["layer_token_rows"] + clean
        assert sum(rows for rows, _ in seen) == vlm.counts["layer_forwards"] + vlm.n_layers * len(lengths)
        assert sum(rows * seq for rows, seq in seen) < expected["layer_token_rows"]
    finally:
        for handle in handles:
            handle.remove()
    work = layer_work(vlm.n_layers, list(range(vlm.n_layers)), variants, lengths, batch)
    assert work["layer_row_forwards_ratio"] > 1  # the fast sweep does less layer work


def test_layer_work_hook_counts_decode_steps():
    """The benchmark's hook counter sees generate's one-row decode steps as such."""
    from benchmarks.sweep import LayerWork

    vlm = tiny_vlm("llava", "sdpa")
    prepared = vlm.prepare(models.organism_samples(1)[0].image, "What colour is the square?")
    with LayerWork(vlm) as work:
        out = vlm.run(prepared, generate=True, max_new_tokens=3)
    steps = out.sequences.shape[1] - 1
    assert work.counts["forwards"] == 1 + steps and work.counts["decode_forwards"] == steps
    assert work.counts["layer_token_rows"] == vlm.n_layers * (prepared.seq_len + steps)


def test_batching_benchmark_counts_one_forward_per_batch():
    """What the batching benchmark counts is what ran: one forward per question at batch 1, one per
    batch at batch B (a forward hook on the decoder layers), and the padding in the token rows."""
    from benchmarks.batching import measure_batching
    from interp.analysis.items import Item

    from .conftest import make_image

    vlm = tiny_vlm("llava", "sdpa")
    questions = [
        "What colour is it?",
        "Is there a small red circle in the top left corner of the picture?",
        "Colour?",
        "Which shape is the largest one here?",
        "Is it blue?",
    ]
    items = [Item(id=str(i), image=make_image(seed=i), question=q, answers=("red",)) for i, q in enumerate(questions)]
    result = measure_batching(vlm, items, batch=2, reps=1)
    details = result["details"]
    assert _positive(result["clean_pass_batch_speedup"]), result
    forwards = details["forwards"]
    assert forwards["batch_1"]["observed_forwards_per_question"] == 1.0
    assert forwards["batch_1"]["clean_forwards_per_question"] == 1.0
    assert forwards["batch_2"]["observed_forwards_per_question"] == 3 / 5  # batches of 2, 2 and 1
    assert forwards["batch_2"]["clean_forwards_per_question"] == 3 / 5
    # padded rows: batch 2 runs more token rows than batch 1
    assert forwards["batch_2"]["layer_token_rows_per_question"] > forwards["batch_1"]["layer_token_rows_per_question"]
    assert details["worst_share_of_tolerance"] <= 1 and details["max_abs_diff"] < 1e-4
    assert len(details["timing"]["per_round"]) == 1


def test_attribution_benchmark_stages_resume_and_keep_the_computing_calls_time(tmp_path):
    """A stage's rows are read back on a rerun; its time per pair is that of the calls that computed
    pairs (kept in ``<stage>.timing.json``), never a resumed call's near-zero time."""
    import pandas as pd

    from benchmarks.attribution import _stage

    def compute(total: int):
        def run(log):
            rows = [{"pair": f"p{i}"} for i in range(total)]
            if log is not None:  # as a RowLog does: one line per finished pair
                log.write_text("".join(json.dumps(row) + "\n" for row in rows))
            return pd.DataFrame(rows)

        return run

    frame, first = _stage(tmp_path, "grid", compute(3))
    assert len(frame) == 3 and first > 0
    timing = json.loads((tmp_path / "grid.timing.json").read_text())
    assert timing["pairs"] == 3
    again, per_pair = _stage(tmp_path, "grid", compute(3))  # everything read back: nothing timed
    assert per_pair == first and json.loads((tmp_path / "grid.timing.json").read_text()) == timing
    _, in_memory = _stage(None, "grid", compute(2))
    assert in_memory > 0 and not (tmp_path / "None").exists()
