"""TransformerLens parity: our ``blocks.{l}.attn.hook_pattern`` equals TransformerBridge's.

For every tiny family that TransformerLens's ``TransformerBridge.boot_transformers``
supports, the same saved HF model directory is run through our nnsight trace and
through the bridge's ``run_with_cache`` on the same processed inputs; the attention
patterns of every layer must agree. Our pattern is recomputed from the attention
call's queries and keys, so it is checked under eager *and* SDPA attention (the
bridge always runs eager). The bridge's logits are checked against HF's first, so
a mismatch cannot come from the two sides running different models.

Nothing here may pip-install anything: the bridge installs torchvision at run time
when it cannot load a model's processor (``_ensure_torchvision`` in
``transformer_lens/model_bridge/sources/transformers/helpers.py``). Its processor
loading is skipped (the bridge is fed ready-made tensors), the session-wide guard
in ``conftest.py`` refuses any pip install, and every test asserts none was tried.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import interp
from interp.models.tiny import build_tiny, save_tiny, tiny_model_types

from .conftest import sample_for

# Families whose HF class TransformerLens 4.3 maps to a bridge adapter
# (``Qwen2VLForConditionalGeneration``, ``SmolVLMForConditionalGeneration`` and
# InternVL have none). Only those with a tiny builder are run.
TL_FAMILIES = {
    "gemma3",
    "idefics3",
    "llava",
    "llava_next",
    "llava_onevision",
    "mistral3",
    "qwen2_5_vl",
    "qwen3_vl",
}
# model_type -> reason, for a family the bridge itself gets wrong (none today).
TL_XFAIL: dict[str, str] = {}

FAMILIES = [
    pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=TL_XFAIL[t])) if t in TL_XFAIL else t
    for t in tiny_model_types()
    if t in TL_FAMILIES
]

PATTERN_TOL = 1e-5
LOGIT_TOL = 1e-5


def _pattern_names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]


@pytest.fixture(scope="module")
def bridge_without_processor_or_torchvision():
    """Boot bridges that never load a processor and do not demand torchvision.

    * ``load_modality_processor`` would ``AutoProcessor.from_pretrained`` the directory
      and, when that fails (the Qwen-VL and OneVision processors carry a video processor
      that needs torchvision), pip-install torchvision and retry. The bridge is given
      processed tensors, so its processor is never needed: the step is skipped.
    * The Qwen2.5-VL and Qwen3-VL adapters list torchvision in ``required_libraries``
      for that same processor and refuse to construct without it; the model forward
      does not use it, so that one requirement is dropped (others still checked).
    """
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.model_bridge.sources.transformers import source

    check = ArchitectureAdapter._check_required_libraries

    def check_all_but_torchvision(self):
        self.required_libraries = [lib for lib in type(self).required_libraries if lib != "torchvision"]
        check(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(source, "load_modality_processor", lambda *args, **kwargs: None)
        patch.setattr(ArchitectureAdapter, "_check_required_libraries", check_all_but_torchvision)
        yield


_REFERENCES: dict = {}


def _reference(model_type, tmp_path_factory, pip_install_attempts):
    """Save the tiny model, run HF (eager) and the bridge on it once per family."""
    if model_type in _REFERENCES:
        return _REFERENCES[model_type]
    from transformer_lens.model_bridge import TransformerBridge

    directory = save_tiny(model_type, tmp_path_factory.mktemp(model_type), attn_implementation="eager")
    # Built, not reloaded from the directory: AutoProcessor cannot reload the saved
    # Qwen-VL / OneVision processors without torchvision (their video processor).
    processor = build_tiny(model_type)[1]
    vlm = interp.load(str(directory), processor, attn_implementation="eager")
    sample = sample_for(vlm)
    with torch.no_grad():
        hf_logits = vlm.model(**sample.inputs).logits

    tried_before = len(pip_install_attempts)
    bridge = TransformerBridge.boot_transformers(str(directory), device=str(vlm.device))
    bridge.processor = processor
    inputs = dict(sample.inputs)
    input_ids = inputs.pop("input_ids")
    names = _pattern_names(vlm.n_layers)
    with torch.no_grad():
        bridge_logits, cache = bridge.run_with_cache(input_ids, names_filter=names, **inputs)
    reference = SimpleNamespace(
        directory=directory,
        processor=processor,
        n_layers=vlm.n_layers,
        bridge_n_layers=bridge.cfg.n_layers,
        hf_logits=hf_logits.cpu(),
        bridge_logits=bridge_logits.detach().cpu(),
        bridge_patterns=[cache[name].cpu() for name in names],
        install_attempts=list(pip_install_attempts[tried_before:]),
    )
    del bridge, cache
    _REFERENCES[model_type] = reference
    return reference


@pytest.mark.parametrize("model_type", FAMILIES)
def test_bridge_logits_equal_hf(
    model_type, tmp_path_factory, pip_install_attempts, bridge_without_processor_or_torchvision
):
    ref = _reference(model_type, tmp_path_factory, pip_install_attempts)
    assert ref.install_attempts == []
    assert ref.bridge_n_layers == ref.n_layers
    assert ref.bridge_logits.shape == ref.hf_logits.shape
    diff = (ref.bridge_logits - ref.hf_logits).abs().max().item()
    assert diff < LOGIT_TOL, f"bridge logits differ from HF's by {diff:.2e}"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_hook_pattern_equals_transformer_bridge(
    model_type, attn, tmp_path_factory, pip_install_attempts, bridge_without_processor_or_torchvision
):
    ref = _reference(model_type, tmp_path_factory, pip_install_attempts)
    assert ref.install_attempts == []
    vlm = interp.load(str(ref.directory), ref.processor, attn_implementation=attn)
    assert vlm.attn_implementation == attn
    sample = sample_for(vlm)
    names = _pattern_names(vlm.n_layers)
    result = vlm.run(sample, interp.RecordResidual(names))

    seq_len = sample.seq_len
    for layer, name in enumerate(names):
        ours = result.record(name, layer)
        theirs = ref.bridge_patterns[layer]
        assert (
            ours.shape == theirs.shape == (1, vlm.adapter.text_config(vlm.config).num_attention_heads, seq_len, seq_len)
        ), name
        diff = (ours - theirs).abs().max().item()
        assert diff < PATTERN_TOL, f"{model_type}/{attn} {name}: max abs diff {diff:.2e}"
    # The comparison is not vacuous: real distributions, different in every layer.
    stacked = torch.stack(ref.bridge_patterns)
    assert torch.allclose(stacked.sum(-1), torch.ones(()), atol=1e-5)
    assert all((stacked[i] - stacked[i + 1]).abs().max() > 1e-3 for i in range(len(stacked) - 1))


def test_guard_refuses_the_bridge_torchvision_install(pip_install_attempts, monkeypatch):
    """TransformerLens's own install path ends in the conftest guard, not in pip.

    Made harmless even if the guard failed: the "python" it would run is ``true``.
    """
    from transformer_lens.model_bridge.sources.transformers import helpers

    true = shutil.which("true")
    if true is None:
        pytest.skip("no `true` executable to stand in for python")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` fails
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)  # no uv: `python -m pip install`
    monkeypatch.setattr(sys, "executable", true)
    before = len(pip_install_attempts)
    try:
        assert helpers._ensure_torchvision() is False
        tried = pip_install_attempts[before:]
        assert len(tried) == 1 and list(tried[0])[-4:-1] == ["pip", "install", "torchvision"]
        with pytest.raises(PermissionError):
            subprocess.run([true, "-m", "pip", "install", "torchvision"])
    finally:
        del pip_install_attempts[before:]
