"""Teacher forcing: score a reference answer in one forward pass.

The prompt is followed by the reference answer's tokens and the end-of-turn token.
From the logits at those positions we get, in one pass,

* ``logprob``: the log-probability of the reference answer tokens, and
* ``greedy_match``: whether greedy decoding would produce exactly the reference
  followed by the end-of-turn token. Greedy decoding is deterministic and causal,
  so this is *exactly* "greedy generation returns the reference" — and an
  intervention on the prompt (e.g. masking image tokens at prefill) acts on the
  prompt positions of this pass as it would on the prefill of a generation.

It is stricter than VQA-style scoring of free text (a reply "Red." scores under
normalisation but is not the reference token sequence); analyses report which
scoring they used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import InputError
from ..inputs import Prepared


@dataclass
class TeacherForced:
    """A prompt with its reference answer appended.

    ``prepared`` holds the extended inputs (image and question positions unchanged);
    ``prompt_len`` is the length of the prompt alone, so ``prompt_len - 1`` is the
    position of the prompt's last token (the "last token" of the paper's analyses);
    ``targets`` are the appended token ids (answer, then end-of-turn), predicted at
    ``positions = prompt_len - 1 + arange(len(targets))``; the first ``n_answer`` of
    them are the answer proper.
    """

    prepared: Prepared
    prompt_len: int
    targets: torch.Tensor
    n_answer: int

    @property
    def positions(self) -> torch.Tensor:
        return torch.arange(self.prompt_len - 1, self.prompt_len - 1 + len(self.targets))

    @property
    def last_prompt_position(self) -> int:
        return self.prompt_len - 1

    def score(self, logits: torch.Tensor) -> tuple[float, bool]:
        """``(logprob of the answer tokens, greedy match)`` from logits at :attr:`positions`
        (``[n_targets, vocab]`` or ``[1, n_targets, vocab]``)."""
        logits = logits.detach().reshape(len(self.targets), -1).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = self.targets.to(logits.device)
        picked = logprobs.gather(1, targets[:, None]).squeeze(1)
        logprob = float(picked[: self.n_answer].sum())
        match = bool((logits.argmax(dim=-1) == targets).all())
        return logprob, match


def end_of_turn_id(vlm) -> int:
    """The token that ends the assistant's reply: the generation config's (first) EOS."""
    eos = getattr(vlm.model.generation_config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
        eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the model has no end-of-sequence token; teacher forcing needs one")
    return int(eos)


def answer_token_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """The ids the model would generate for ``answer`` right after ``prompt``: the
    tokenisation of ``prompt + answer`` minus that of ``prompt`` (so word-boundary
    markers come out as generation produces them); a space is put between a prompt
    that ends in a non-space character (``"ASSISTANT:"``) and the answer."""
    if not answer.strip():
        raise InputError("an empty reference answer cannot be teacher-forced")
    sep = "" if not prompt or prompt[-1].isspace() else " "
    full = tokenizer(prompt + sep + answer, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head) :]
    return tokenizer(sep + answer, add_special_tokens=False)["input_ids"]


def teacher_force(vlm, prepared: Prepared, answer: str) -> TeacherForced:
    """Append ``answer`` and the end-of-turn token to ``prepared`` (batch of one)."""
    tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
    ids = answer_token_ids(tokenizer, prepared.prompt, answer)
    targets = torch.tensor(ids + [end_of_turn_id(vlm)], dtype=torch.long)
    inputs = dict(prepared.inputs)
    prompt_len = prepared.seq_len
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise InputError("teacher forcing takes one prompt at a time")
    extra = targets[None, :].to(input_ids.device, input_ids.dtype)
    inputs["input_ids"] = torch.cat([input_ids, extra], dim=1)
    # the token-axis fields and what an appended answer token gets there (a family fact: its adapter's)
    for key, fill in {"attention_mask": 1, **dict(vlm.adapter.appended_token_fields)}.items():
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == prompt_len:
            pad = torch.full((1, len(targets)), fill, dtype=value.dtype, device=value.device)
            inputs[key] = torch.cat([value, pad], dim=1)
    return TeacherForced(replace(prepared, inputs=inputs), prompt_len, targets, len(ids))
