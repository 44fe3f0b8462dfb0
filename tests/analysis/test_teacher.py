"""Teacher forcing (:mod:`interp.analysis.teacher`): an appended answer changes nothing before it."""

from __future__ import annotations

import pytest
import torch

from interp.analysis.teacher import teacher_force
from interp.models.tiny import tiny_model_types

from ..conftest import sample_for, tiny_vlm


@pytest.mark.parametrize("model_type", tiny_model_types())
def test_the_prompt_reads_nothing_of_the_appended_answer(model_type):
    """The prompt's logits with the answer appended equal the prompt's alone (HF's own forward): the
    answer tokens get each token-axis field's value for text after the prompt (the adapter's
    ``appended_token_fields``; on PaliGemma the suffix type, which the prefix never attends to)."""
    vlm = tiny_vlm(model_type, "eager")
    prepared = sample_for(vlm)
    forced = teacher_force(vlm, prepared, "red square")
    with torch.no_grad():
        alone = vlm.model(**prepared.inputs).logits[0]
        with_answer = vlm.model(**forced.prepared.inputs).logits[0, : prepared.seq_len]
    torch.testing.assert_close(with_answer, alone, atol=1e-5, rtol=1e-4)
    for key, value in prepared.inputs.items():  # every token-axis field extended with the answer
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == prepared.seq_len:
            assert forced.prepared.inputs[key].shape[1] == forced.prepared.seq_len, key
