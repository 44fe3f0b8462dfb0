"""Cross-question batching: several samples' clean passes as ONE right-padded forward.

* The batched pass, cut back into one pass per sample, equals the sample run alone
  (``sample_pass``) — logits, records, every decoder layer's captured inputs and the keys and
  values — on the organism and on tiny configs of every family whose adapter says
  ``batched_forward`` (Qwen2-VL with images of different sizes: per-image grids and M-RoPE
  positions), with questions of different lengths so the rows really are padded; and the
  sweep restarted from a cut pass equals the sweep restarted from the pass run alone.
* Families that cannot batch fall back to one forward per sample, with the same results.
* ``interp reproduce --batch-size 2`` writes the numbers of ``--batch-size 1``; a run may be
  resumed with another batch size (an interrupted batch recomputes only its samples without
  rows); ``--batch-size 0`` is refused with one line.

Tolerance (float32), per tensor: ``max|batched - alone| <= 1e-5 * max(1, max|alone|)`` — 1e-5
absolute on values of order one (attention, probabilities, log-probabilities), 1e-5 relative to
the tensor's largest magnitude on larger ones (the organism's residual stream reaches ~500, where
one float32 ulp is 3e-5: its batched residuals differ from the alone ones by up to 4e-4 at batch 8,
~1e-6 of their scale, 13 ulps; its logits, of scale ~40, by 2e-5). Not bit for bit on SDPA: a
padded row runs SDPA with the batch's explicit mask where the sample alone takes the kernel's
causal path, and batched matmuls block differently, which reorders float reductions. (With eager
attention the passes here came out the same bits; the tests do not require it.) A wrong cut (a
shifted row, padding seen, another row's values) differs by the values' own scale.
"""

from __future__ import annotations

import json

import pytest
import torch

from interp.analysis.clean import sample_pass, sample_passes
from interp.analysis.items import Item
from interp.analysis.sweep import sweep_rows
from interp.engine.batched import batch_reason
from interp.errors import InterpError
from interp.models.adapters import all_adapters

from ..conftest import assert_reports_close, make_image, tiny_vlm

ATOL = 1e-5


def _within(diff: float, scale: float, tol: float | None = None) -> bool:
    """The test's float32 tolerance (module docstring); ``tol`` overrides it (0: the same bits)."""
    return diff <= (ATOL * max(1.0, scale) if tol is None else tol)


#: questions of different lengths (so the batch is padded) and answers of different lengths
QUESTIONS = [
    ("What colour is the square?", "red"),
    ("Is there a small red circle in the top left corner of this picture, next to the square?", "yes it is"),
    ("Colour?", "blue green"),
]
#: image sizes (height, width): families with dynamic resolution (Qwen2-VL) get different grids
SIZES = [(48, 64), (64, 40), (32, 96)]

BATCHING = sorted(a.model_types[0] for a in all_adapters() if a.batched_forward)
NOT_BATCHING = sorted(a.model_types[0] for a in all_adapters() if not a.batched_forward)


def _items(sizes=SIZES):
    return [
        Item(
            id=str(i),
            image=make_image(*size, seed=i),
            question=q,
            answers=(a,),
            kind="attribute",
            boxes=((0, 0, size[1] // 2, size[0] // 2),),
        )
        for i, ((q, a), size) in enumerate(zip(QUESTIONS, sizes))
    ]


def _check_close(a, b, where: str, tol: float | None = None) -> None:
    """Two nested structures of tensors are the same structure, shapes and dtypes, their integer
    and bool tensors equal and each float tensor within the tolerance; anything else equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.shape == b.shape and a.dtype == b.dtype, (where, a.shape, b.shape, a.dtype, b.dtype)
        if not a.is_floating_point():
            assert torch.equal(a, b), where
        elif a.numel():
            diff, scale = float((a.float() - b.float()).abs().max()), float(b.float().abs().max())
            assert _within(diff, scale, tol), (where, diff, scale)
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _check_close(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, sorted(map(str, a)), sorted(map(str, b)))
        for key in a:
            _check_close(a[key], b[key], f"{where}.{key}", tol)
    else:
        assert a == b, (where, a, b)


def _mask_as_alone(batched_mask, alone_mask, seq_len: int):
    """The cut pass's mask and what the pass alone used: the same tensor, or (SDPA alone passes
    none: the kernel's causal flag) the plain causal keep-mask."""
    if batched_mask is None:  # a pass that did not run batched (the fallback)
        assert alone_mask is None
        return
    if alone_mask is None:
        assert batched_mask.dtype == torch.bool and batched_mask.shape[-2:] == (seq_len, seq_len)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=batched_mask.device).tril()
        assert torch.equal(
            batched_mask.reshape(-1, seq_len, seq_len),
            causal.expand(batched_mask.shape[0] * batched_mask.shape[1], -1, -1),
        )
        return
    _check_close(batched_mask, alone_mask, "attention_mask", tol=0.0)


def assert_pass_equal(batched, alone, tol: float | None = None) -> None:
    """A cut pass equals the pass run alone (the module docstring's tolerance; ``tol=0``: same bits)."""
    bc, ac = batched.clean, alone.clean
    assert torch.equal(bc.positions, ac.positions)
    assert bc.specs == ac.specs
    assert bc.restartable == ac.restartable
    assert bc.logits.device == ac.logits.device
    _check_close(bc.logits, ac.logits, "logits", tol)
    _check_close(bc.records, ac.records, "records", tol)
    assert (bc.kv is None) == (ac.kv is None)
    if ac.kv is not None:
        _check_close(bc.kv, ac.kv, "kv", tol)
    if ac.layer_inputs is not None:
        seq_len = ac.prepared.seq_len
        for index, ((b_args, b_kwargs), (a_args, a_kwargs)) in enumerate(
            zip(bc.layer_inputs, ac.layer_inputs, strict=True)
        ):
            _mask_as_alone(b_kwargs["attention_mask"], a_kwargs["attention_mask"], seq_len)
            # the pass alone keeps the forward's cache object (restarts drop it); a cut pass holds none
            caches = ("cache", "past_key_values")
            assert all(b_kwargs[k] is None or type(b_kwargs[k]) is type(a_kwargs[k]) for k in a_kwargs if k in caches)
            keep = {k: v for k, v in a_kwargs.items() if k != "attention_mask" and k not in caches}
            assert set(b_kwargs) == set(a_kwargs)
            _check_close((b_args, {k: b_kwargs[k] for k in keep}), (a_args, keep), f"layer {index} inputs", tol)


def _check_rows(got: list[dict], want: list[dict]) -> None:
    """Sweep rows: the same conditions and greedy correctness, log-probabilities within tolerance."""
    assert [(r["variant"], r["layer"], r["correct"]) for r in got] == [
        (r["variant"], r["layer"], r["correct"]) for r in want
    ]
    for x, y in zip(got, want):
        assert _within(abs(x["logprob"] - y["logprob"]), abs(y["logprob"])), (x, y)


def _check_family(vlm, items, *, restartable: bool, tol: float | None = None) -> tuple[list, list]:
    lengths = [vlm.prepare(item.image, item.question).seq_len for item in items]
    assert len(set(lengths)) == len(lengths), "the test needs rows of different lengths (padding)"
    before = vlm.counts["clean_forward"]
    batched = sample_passes(vlm, items, restartable=restartable)
    assert vlm.counts["clean_forward"] - before == 1  # one forward for the three samples
    alone = [sample_pass(vlm, item, restartable=restartable) for item in items]
    for b, a in zip(batched, alone, strict=True):
        assert b.item is a.item or b.item.id == a.item.id
        assert torch.equal(b.tf.prepared.input_ids, a.tf.prepared.input_ids)  # no padding left in the row
        assert_pass_equal(b, a, tol)
    return batched, alone


@pytest.mark.parametrize(
    "model_type,attn", [(m, "sdpa") for m in BATCHING] + [("llava", "eager"), ("qwen2_vl", "eager")]
)
def test_batched_clean_pass_equals_one_sample_at_a_time(model_type, attn):
    from interp.engine.clean_pass import supports_prefix_reuse

    vlm = tiny_vlm(model_type, attn)
    assert batch_reason(vlm) is None
    items = _items()
    for restartable in [True, False] if supports_prefix_reuse(vlm) is None else [False]:
        _check_family(vlm, items, restartable=restartable)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_the_sweep_restarted_from_a_cut_pass_equals_the_sweep_from_the_pass_alone(model_type):
    """Restarts (row-level and every-row) read the cut layer inputs and keys/values as their own."""
    vlm = tiny_vlm(model_type, "sdpa")
    batched, alone = _check_family(vlm, _items(), restartable=True)
    variants = ("single", "window", "cumulative", "knockout_last", "knockout_question")
    for rows in (True, False):
        for b, a in zip(batched, alone):
            got = sweep_rows(
                vlm,
                b,
                variants,
                list(range(vlm.n_layers)),
                window=2,
                scale=1e-9,
                scoring="teacher",
                fast=True,
                rows=rows,
            )
            want = sweep_rows(
                vlm,
                a,
                variants,
                list(range(vlm.n_layers)),
                window=2,
                scale=1e-9,
                scoring="teacher",
                fast=True,
                rows=rows,
            )
            _check_rows(got, want)
    if model_type == "llava":  # generation scoring decodes from the cut pass's keys and values
        for b, a in zip(batched, alone):
            got = sweep_rows(
                vlm,
                b,
                ("single", "knockout_last"),
                list(range(vlm.n_layers)),
                window=2,
                scale=1e-9,
                scoring="generate",
                fast=True,
                max_new_tokens=4,
            )
            want = sweep_rows(
                vlm,
                a,
                ("single", "knockout_last"),
                list(range(vlm.n_layers)),
                window=2,
                scale=1e-9,
                scoring="generate",
                fast=True,
                max_new_tokens=4,
            )
            assert [r["prediction"] for r in got] == [r["prediction"] for r in want]
            _check_rows(got, want)


def test_the_organism_batched_equals_one_sample_at_a_time():
    import interp
    from interp.analysis.items import as_items
    from interp.data.synthetic import SyntheticVQA

    vlm = interp.load("organism")
    assert batch_reason(vlm) is None
    data = SyntheticVQA("test", seed=0, image_size=vlm.config.vision_config.image_size)
    items, lengths = [], set()
    for item in as_items(data, 40):  # three questions of different lengths
        length = vlm.prepare(item.image, item.question).seq_len
        if length not in lengths:
            items.append(item)
            lengths.add(length)
        if len(items) == 3:
            break
    assert len(items) == 3
    batched, alone = _check_family(vlm, items, restartable=True)
    layers = [0, vlm.n_layers // 2, vlm.n_layers - 1]
    for b, a in zip(batched, alone):
        got = sweep_rows(
            vlm, b, ("single", "knockout_last"), layers, window=3, scale=1e-9, scoring="teacher", fast=True
        )
        want = sweep_rows(
            vlm, a, ("single", "knockout_last"), layers, window=3, scale=1e-9, scoring="teacher", fast=True
        )
        _check_rows(got, want)


@pytest.mark.parametrize("model_type", ["llava_next", "idefics3"])
def test_families_that_cannot_batch_run_one_sample_at_a_time(model_type):
    vlm = tiny_vlm(model_type, "sdpa")
    assert "batched_forward" in batch_reason(vlm)
    items = _items()
    before = vlm.counts["clean_forward"]
    batched = sample_passes(vlm, items, restartable=True)
    assert vlm.counts["clean_forward"] - before == len(items)
    for b, item in zip(batched, items):
        alone = sample_pass(vlm, item, restartable=True)
        assert_pass_equal(b, alone, tol=0.0)


def test_every_family_says_whether_it_batches():
    assert "llava" in BATCHING and "qwen2_vl" in BATCHING
    assert set(BATCHING) | set(NOT_BATCHING) == {a.model_types[0] for a in all_adapters()}


def test_batch_size_resolution():
    from interp.analysis.reproduce import ReproduceConfig, resolve_batch_size, run_settings

    vlm = tiny_vlm("llava", "sdpa")
    assert vlm.device.type == "cpu"
    assert resolve_batch_size(vlm, None) == 1  # the CPU default
    assert resolve_batch_size(vlm, 4) == 4
    assert resolve_batch_size(vlm, 4, remote=True) == 1
    assert resolve_batch_size(tiny_vlm("llava_next", "sdpa"), 4) == 1
    for bad in (0, -2, True, 1.5):
        with pytest.raises(InterpError, match="batch_size must be a positive integer"):
            resolve_batch_size(vlm, bad)
    # not part of what a resumed run must keep
    items = _items()
    assert run_settings(vlm, "d", items, ReproduceConfig(batch_size=1)) == run_settings(
        vlm, "d", items, ReproduceConfig(batch_size=5)
    )


# -- interp reproduce ------------------------------------------------------------------------------

ARGS = ["reproduce", "--model", "tiny:llava", "--limit", "3", "--n-boot", "50"]


def _reproduce(out, *extra) -> dict:
    from interp.cli import main

    assert main([*ARGS, "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text())


def _passes(out) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((out / "rows").glob("passes.*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def batch_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch1")
    return _reproduce(out, "--batch-size", "1")


def test_reproduce_batch_2_writes_the_numbers_of_batch_1(tmp_path, batch_one):
    report = _reproduce(tmp_path, "--batch-size", "2")
    assert report["counts"]["batch_sizes"] == [2] and batch_one["counts"]["batch_sizes"] == [1]
    # phase 1: batches of 2 and 1 (two forwards for three samples); phase 2 reuses them
    assert report["counts"]["clean_forward"] == 2 and batch_one["counts"]["clean_forward"] == 3
    assert_reports_close(report, batch_one, atol=ATOL)
    assert report["masking"]["findings"] == batch_one["masking"]["findings"]
    assert report["review_layer"] == batch_one["review_layer"]


def test_a_run_resumes_with_another_batch_size_recomputing_only_samples_without_rows(tmp_path, batch_one):
    _reproduce(tmp_path, "--batch-size", "2")
    rows = tmp_path / "rows"
    # as if killed after the first sample of the first batch had its phase-1 rows written
    phase1 = rows / "phase1.shard-1-of-1.jsonl"
    phase1.write_text(phase1.read_text().splitlines()[0] + "\n")
    (rows / "phase2.shard-1-of-1.jsonl").unlink()
    (tmp_path / "report.json").unlink()
    before = len(_passes(tmp_path))
    report = _reproduce(tmp_path, "--batch-size", "3")  # another batch size: accepted
    assert_reports_close(report, batch_one, atol=ATOL)
    resumed = _passes(tmp_path)[before:]
    assert [p["batch_size"] for p in resumed] == [3]
    # phase 1: the two samples without rows in one forward; phase 2: the one whose pass this process
    # does not hold, run again
    assert resumed[0]["counts"]["clean_forward"] == 2
    assert report["counts"]["batch_sizes"] == [2, 3]
    assert len(phase1.read_text().splitlines()) == 3


def test_the_restart_batch_changes_how_the_sweep_batches_not_its_numbers(tmp_path, batch_one):
    report = _reproduce(tmp_path, "--batch-size", "1", "--restart-batch", "1")
    assert_reports_close(report, batch_one, atol=ATOL)
    counts, default = report["counts"], batch_one["counts"]
    # one condition per layer call: more, smaller calls, and conditions with the same input to a
    # layer no longer share its forward (they share only inside a batch)
    assert counts["restart_layer_calls"] > default["restart_layer_calls"]
    assert counts["layer_forwards"] > default["layer_forwards"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_batch_size_is_refused_with_one_line(tmp_path, capsys, value):
    from interp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*ARGS, "--out", str(tmp_path / "out"), "--batch-size", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size" in err and "positive integer" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_batch_size_through_the_api_is_refused_before_any_compute(tmp_path):
    from interp.analysis.reproduce import ReproduceConfig, reproduce

    vlm = tiny_vlm("llava", "sdpa")
    before = dict(vlm.counts)
    with pytest.raises(InterpError, match="batch_size must be a positive integer"):
        reproduce(vlm, _items(), tmp_path / "out", config=ReproduceConfig(batch_size=0, progress=False))
    assert dict(vlm.counts) == before and not (tmp_path / "out").exists()
