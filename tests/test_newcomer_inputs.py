"""What a newcomer hit, each one clear line (exit 2 on the command line) before heavy work:
loading flags (dtype, device map), a hub id offline, bootstrap counts, a window longer than
the model, a prompt longer than the model takes, a hook returning the wrong shape, a missing
image file; and a run's result prints short."""

from __future__ import annotations

import os

import pytest
import torch

import interp
from interp.analysis.reproduce import ReproduceConfig, reproduce
from interp.errors import InputError, InterpError

from .conftest import cli, one_line, sample_for, square_items, tiny_vlm


def _no_loading(monkeypatch):
    """Make any model load fail loudly: what is refused must be refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(interp, "load", refuse)


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--dtype", "tensor"], "non-floating dtype 'tensor'"),
        (["--dtype", "int8"], "non-floating dtype 'int8'"),
        (["--device-map", "gpu"], "unknown device_map 'gpu'"),
    ],
)
def test_loading_flags_are_one_line(capsys, flags, says):
    code, err = cli(capsys, "quickstart", "--model", "tiny:llava", *flags)
    assert code == 2 and says in one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no CUDA device")
def test_cuda_device_map_without_cuda(capsys):
    code, err = cli(capsys, "quickstart", "--model", "tiny:llava", "--device-map", "cuda:0")
    assert code == 2 and "needs a CUDA GPU and torch sees none" in one_line(err)
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        interp.load("tiny:llava", device_map=0)


def test_load_accepts_the_float_dtypes():
    assert interp.load("tiny:llava", dtype="bfloat16").dtype == torch.bfloat16
    assert interp.load("tiny:llava", dtype=torch.float16).dtype == torch.float16
    with pytest.raises(InputError, match="non-floating"):
        interp.load("tiny:llava", dtype=torch.int8)


def test_hub_id_in_offline_mode_says_so(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InterpError, match="HF_HUB_OFFLINE=1 is set"):
        interp.load("nobody/no-such-vlm-anywhere")
    code, err = cli(capsys, "hooks", "--model", "nobody/no-such-vlm-anywhere")
    assert code == 2 and "offline mode" in one_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "--n-boot", "0"],
        ["ablate-method", "--n-boot", "0"],
        ["patch", "--n-boot", "-1"],
        ["reproduce", "--window", "0"],
    ],
)
def test_counts_are_checked_by_the_parser(capsys, monkeypatch, tmp_path, argv):
    _no_loading(monkeypatch)
    code, err = cli(capsys, *argv, "--out", str(tmp_path / "out"))
    assert code == 2 and "positive integer" in one_line(err)


def test_window_longer_than_the_model_and_zero_n_boot_before_any_compute(tmp_path):
    vlm = tiny_vlm("llava", "sdpa")
    items = square_items(vlm, 1)
    vlm.counts.clear()
    with pytest.raises(InterpError, match=f"window 50 is longer than the model's {vlm.n_layers} decoder layers"):
        reproduce(vlm, items, tmp_path / "a", config=ReproduceConfig(window=50, progress=False))
    with pytest.raises(InputError, match="n_boot must be a positive integer"):
        reproduce(vlm, items, tmp_path / "b", config=ReproduceConfig(n_boot=0, progress=False))
    assert not vlm.counts and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(InterpError, match="window 9 is longer"):
        interp.analysis.masking_sweep(vlm, items, window=9, progress=False)


def test_prompt_longer_than_the_model_is_refused_at_prepare():
    vlm = tiny_vlm("llava", "sdpa")
    limit = vlm.config.get_text_config().max_position_embeddings
    with pytest.raises(InputError, match=f"at most {limit}"):
        sample_for(vlm, question="What colour is it? " * (limit // 10))
    assert sample_for(vlm).seq_len < limit


def test_hook_returning_the_wrong_shape_names_the_hook():
    vlm = tiny_vlm("llava", "sdpa")
    sample = sample_for(vlm)
    with pytest.raises(InterpError, match=r"the hook at blocks\.1\.hook_resid_pre returned shape \(3,\)"):
        vlm.run_with_hooks(sample, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: torch.zeros(3))])
    with pytest.raises(InterpError, match="returned str"):
        vlm.run_with_hooks(sample, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: "no")])
    same = vlm.run_with_hooks(sample, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x * 1.0)])
    assert torch.allclose(same, vlm.run_with_hooks(sample), atol=1e-6)


def test_missing_image_file_before_the_model_loads(capsys, monkeypatch, tmp_path):
    _no_loading(monkeypatch)
    code, err = cli(capsys, "quickstart", "--image", str(tmp_path / "cat.png"))
    assert code == 2 and "image file not found" in one_line(err)


def test_run_result_prints_short():
    vlm = tiny_vlm("llava", "sdpa")
    result = vlm.run(sample_for(vlm), interp.RecordAttention(layers=[0, 1]))
    text = repr(result)
    assert "input_ids" not in text and len(text) < 200
    assert "2 records of ['attention']" in text and f"{sample_for(vlm).seq_len} tokens" in text


def test_default_threads_follow_the_idle_cores(monkeypatch):
    from interp import threads

    assert threads.default_threads(n_cores=2, idle=0.3) == 1  # both cores busy: still one thread
    assert threads.default_threads(n_cores=2, idle=1.2) == 1  # one busy: one thread, not two
    assert threads.default_threads(n_cores=16, idle=15.7) == 16
    assert threads.default_threads(n_cores=4, idle=7.0) == 4  # never more than this process's cores
    idle = threads.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.set_default_threads() is None  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        chosen = threads.set_default_threads()
        assert chosen is not None and 1 <= chosen <= threads.cores()
        assert torch.get_num_threads() == chosen and os.environ["OMP_NUM_THREADS"] == str(chosen)
    finally:
        torch.set_num_threads(before)


def test_the_masking_scale_as_each_dtype_holds_it():
    from interp.analysis.report import scale_precision

    half = scale_precision(1e-9, torch.float16)
    assert half["scale_in_dtype"] == 0.0 and half["dtype"] == "float16"
    assert half["scale_note"] == "x1e-09 is 0 in float16: the masked image-token states are exactly zero"
    for dtype in (torch.bfloat16, torch.float32):  # they keep 1e-9 (to their rounding): no note
        held = scale_precision(1e-9, dtype)
        assert abs(held["scale_in_dtype"] - 1e-9) < 1e-11 and "scale_note" not in held
    assert "scale_note" not in scale_precision(0.0, torch.float16)


def test_a_float16_run_states_that_its_mask_is_exact_zero(tmp_path):
    vlm = interp.load("tiny:llava", dtype="float16")
    report = reproduce(vlm, square_items(vlm, 2), tmp_path / "run", config=ReproduceConfig(progress=False, n_boot=50))
    assert report["config"]["scale_in_dtype"] == 0.0 and report["config"]["dtype"] == "float16"
    assert "Masking scale: x1e-09 is 0 in float16" in (tmp_path / "run" / "report.md").read_text()


def test_limit_bounds_every_section(tmp_path):
    """``--limit 3`` runs 3 counterfactual pairs and 3 lens samples, not the sections' 60."""
    from interp.data.synthetic import SyntheticVQA

    vlm = tiny_vlm("llava", "sdpa")
    images = []
    tower = vlm.adapter.resolve(vlm.model, "vision_layers")[0]
    handle = tower.register_forward_hook(lambda module, args, out: images.append(args[0].shape[0]))
    try:
        report = reproduce(
            vlm,
            SyntheticVQA("test", seed=0, image_size=32),
            tmp_path / "run",
            limit=3,
            config=ReproduceConfig(progress=False, n_boot=50),
        )
    finally:
        handle.remove()
    assert report["patching"]["n_pairs"] == 3 and report["image_lens"]["n_samples"] == 3
    assert report["attribution"]["n_pairs"] == 3
    # per question: its passes, its pair's two exact and two attribution passes, its lens pass (not 60 + 60 more)
    assert sum(images) <= 3 * 10


def test_scene_size_one_rule_for_every_command():
    from interp.models.vlm import DYNAMIC_SCENE_SIZE

    llava = tiny_vlm("llava", "sdpa")
    assert llava.scene_size == llava.config.vision_config.image_size  # a fixed-size tower's input
    assert tiny_vlm("qwen2_vl", "sdpa").scene_size == DYNAMIC_SCENE_SIZE == 336  # dynamic resolution: not 96 px


def test_a_dataset_defined_here_offering_pairs_feeds_the_patching_section(tmp_path):
    """A capability, not a type: any dataset with ``counterfactual_pairs`` gets the patching section."""
    from interp.analysis.items import Item
    from interp.data.capabilities import OffersCellLabels, OffersCounterfactuals

    from .conftest import make_image

    class PairedPictures(list):
        asked: list = []

        def counterfactual_pairs(self, n, changes, *, seed=0):
            self.asked.append((n, tuple(changes), seed))
            return [
                ((item.image, item.question), (make_image(48, 64, seed=100 + i), item.question))
                for i, item in enumerate(self[:n])
            ]

    vlm = tiny_vlm("llava", "sdpa")
    data = PairedPictures(
        Item(id=str(i), image=make_image(48, 64, seed=i), question="What is it?", answers=("red",)) for i in range(2)
    )
    assert isinstance(data, OffersCounterfactuals) and not isinstance(data, OffersCellLabels)
    report = reproduce(vlm, data, tmp_path / "run", config=ReproduceConfig(progress=False, n_boot=50))
    assert data.asked and data.asked[0][0] == 2  # bounded by the run's two items
    assert report["patching"]["n_pairs"] == 2 and "image_lens" not in report


def test_the_synthetic_task_draws_at_the_models_scene_size(tmp_path):
    from interp.data.tasks import load_task
    from interp.errors import InterpError as TaskError

    default = load_task("synthetic", limit=1)
    assert default.docs[0].load_image().size == (96, 96) and default.source == "SyntheticVQA('test', seed=0)"
    large = load_task("synthetic", limit=1, image_size=336)
    assert large.docs[0].load_image().size == (336, 336) and "image_size=336" in large.source
    assert large.docs[0].question == default.docs[0].question  # the same scene, drawn larger
    with pytest.raises(TaskError, match="reads its images from files"):
        load_task("textvqa", tmp_path, image_size=336)
