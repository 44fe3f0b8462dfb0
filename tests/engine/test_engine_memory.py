"""What the generation-scored sweep holds, and how the decode slices are sized.

* :func:`interp.engine.memory.decode_batch_for` against the hand-worked arithmetic of the
  keys/values a condition holds (layers x tokens x 2 x kv heads x head dim x bytes);
* the fast sweep decoding in slices of ``decode_batch`` conditions hands the decoder at most
  that many conditions (a group of conditions sharing a restart is never split), each slice
  before the next restart slice starts, and gives exactly the predictions of one batch;
* bad ``decode_batch`` values are one line, in the API and on the command line.
"""

from __future__ import annotations

import pytest

import interp.analysis.sweep as sweep_module
from interp.analysis.sweep import VARIANTS, masking_sweep
from interp.engine.memory import KV_COPIES, decode_batch_for, kv_bytes, layer_devices, resolve_decode_batch
from interp.errors import InterpError

from ..conftest import square_items, tiny_vlm


def test_kv_bytes_and_decode_batch_by_hand():
    vlm = tiny_vlm("llava", "sdpa")
    text = vlm.config.get_text_config()
    per_token_layer = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4  # float32
    assert per_token_layer == 2 * 2 * 16 * 4
    assert kv_bytes(vlm, 100) == per_token_layer * 100 * vlm.n_layers
    (device,) = layer_devices(vlm)
    assert layer_devices(vlm)[device] == vlm.n_layers
    one = KV_COPIES * per_token_layer * 100 * vlm.n_layers  # one condition, every copy
    assert decode_batch_for(vlm, 100, free={device: 2 * one * 7}) == 7  # half the free memory: 7 conditions
    assert decode_batch_for(vlm, 100, free={device: 2 * one * 7 - 1}) == 6
    assert decode_batch_for(vlm, 100, free={device: 0}) == 1  # never below one
    assert decode_batch_for(vlm, 100, share=1.0, free={device: one * 3}) == 3
    assert resolve_decode_batch(vlm, None, 100) is None and resolve_decode_batch(vlm, 5, 100) == 5
    assert resolve_decode_batch(vlm, "auto", 100) >= 1


def test_sweep_decodes_in_bounded_slices_with_the_same_predictions(monkeypatch):
    vlm = tiny_vlm("llava", "sdpa")
    items = square_items(vlm, 1)
    calls: list[int] = []
    real = sweep_module.greedy_continue

    def counting(vlm_, prepared, logits, kv, max_new_tokens):  # the real decoder, its batch sizes noted
        calls.append(logits.shape[0])
        return real(vlm_, prepared, logits, kv, max_new_tokens)

    monkeypatch.setattr(sweep_module, "greedy_continue", counting)
    kwargs = dict(variants=VARIANTS, window=2, scoring="generate", max_new_tokens=3, progress=False, mode="fast")
    whole = masking_sweep(vlm, items, decode_batch=None, **kwargs)
    n_conditions = 1 + len(VARIANTS) * vlm.n_layers
    assert calls == [n_conditions]
    calls.clear()
    sliced = masking_sweep(vlm, items, decode_batch=4, **kwargs)
    # single/window/cumulative restarting at the same layer form one group of 3 (never split)
    assert sum(calls) == n_conditions and max(calls) <= 4 and len(calls) >= n_conditions // 4
    assert whole.prediction.tolist() == sliced.prediction.tolist()
    assert whole.correct.tolist() == sliced.correct.tolist()
    assert (whole.logprob - sliced.logprob).abs().max() < 1e-5
    calls.clear()
    auto = masking_sweep(vlm, items, **kwargs)  # the default: everything fits a tiny model's budget
    assert calls == [n_conditions] and auto.prediction.tolist() == whole.prediction.tolist()


def test_decode_slices_never_split_a_group():
    groups = [(("a", 0), [1, 2, 3]), (("b", 0), [4]), (("c", 0), [5, 6]), (("d", 0), [7, 8, 9, 10, 11])]
    sizes = [[len(m) for _, m in piece] for piece in sweep_module._slices(groups, 4)]
    assert sizes == [[3, 1], [2], [5]]
    assert sweep_module._slices(groups, None) == [groups]


@pytest.mark.parametrize("value", [0, -2, 1.5, "some"])
def test_bad_decode_batch_is_one_line(value):
    vlm = tiny_vlm("llava", "sdpa")
    with pytest.raises(InterpError, match="decode_batch"):
        masking_sweep(vlm, square_items(vlm, 1), scoring="generate", decode_batch=value, progress=False)


def test_decode_batch_flag(tmp_path, capsys):
    from interp.cli import build_parser, main

    parser = build_parser()
    for text, value in (("auto", "auto"), ("all", "all"), ("12", 12)):
        args = parser.parse_args(["reproduce", "--out", str(tmp_path / "r"), "--decode-batch", text])
        assert args.decode_batch == value
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--out", str(tmp_path / "r"), "--decode-batch", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decode-batch" in err[0]
    assert not (tmp_path / "r").exists()
