"""Planted-fusion organisms: LLaVA organisms whose text reads the image only at known layers.

A planted variant is the shipped ``organism`` plus low-rank changes to the LM's attention
projections, trained so that text queries attend to image tokens only at the layers ``S`` of
its name (:data:`PLANTED_LAYERS`): a ground truth for methods that claim to localise fusion.

The recipe (``interp organism train --planted NAME``), seeded and resumable:

1. **Blocked**: text->image attention is cut outside ``S`` (the attention mask of those layers
   forbids every edge from a text query after the image to an image key) while LoRA factors on
   every layer's q/k/v/o learn to answer through ``S`` alone.
2. **Released**: the answers are still learned through the cut forward; an uncut forward adds
   ``penalty`` times :func:`mass_penalty` of the attention mass that text queries put on image keys
   at each layer outside ``S`` and ``consistency`` times the KL divergence of its answers from the
   cut forward's, so the weights themselves keep that mass near zero and what is left of it
   carries nothing the answer uses (a small mass alone does not promise that).

Each phase has its own warm-up and cosine learning-rate cycle.

The shipped file holds only the factors (fp16) and ``S`` in its metadata; loading merges them
into an ordinary checkpoint, so plain transformers sees the planted structure with no rule
applied at run time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...errors import InterpError

from . import PLANTED_BASE as BASE_VARIANT
from . import PLANTED_LAYERS

RESUME_FILE = "planted-resume.pt"


def planted_layers(variant: str) -> tuple[int, ...]:
    """``S`` of a planted variant; one clear error for any other name."""
    if variant not in PLANTED_LAYERS:
        raise InterpError(f"unknown planted organism {variant!r}; choose from {', '.join(PLANTED_LAYERS)}")
    return PLANTED_LAYERS[variant]


def check_layers(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """``layers`` sorted and de-duplicated, or one error naming the first outside ``0..n_layers-1``."""
    for layer in layers:
        if not 0 <= int(layer) < n_layers:
            raise InterpError(f"planted layer {layer} is outside the model's layers 0-{n_layers - 1}")
    if not layers:
        raise InterpError("a planted organism needs at least one reading layer")
    return tuple(sorted({int(layer) for layer in layers}))


def organism_layers() -> int:
    """The organism LM's decoder layers (SmolLM2's config; no weights loaded)."""
    from .smollm2 import smollm2_dir

    return int(json.loads((smollm2_dir() / "config.json").read_text())["num_hidden_layers"])


@dataclass
class PlantedConfig:
    """The planted recipe. ``layers`` defaults to the variant's ``S``."""

    variant: str = "organism-planted-late"
    layers: tuple[int, ...] = ()
    seed: int = 0
    rank: int = 16
    alpha: float = 32.0
    lr: float = 1e-3
    block_steps: int = 1000
    release_steps: int = 400
    penalty: float = 1.0  # weight of the outside-S mass term (see :func:`mass_penalty`)
    mass_scale: float = 1e-3  # the mass the penalty's log bends at (the card's bar)
    consistency: float = 1.0  # weight of the uncut forward's KL from the cut one (released phase)
    batch: int = 16
    warmup: int = 20
    grad_clip: float = 1.0
    bf16: bool = True
    eval_every: int = 100
    eval_samples: int = 64
    checkpoint_every: int = 25
    first_index: int = 300_000  # train-split indices after the base organism's
    focus_kinds: tuple[str, ...] = ("counting", "spatial")
    focus_fraction: float = 0.25
    device: str = "cpu"

    def __post_init__(self):
        if not self.layers:
            self.layers = planted_layers(self.variant)
        self.layers = tuple(int(layer) for layer in self.layers)

    @property
    def steps(self) -> int:
        return self.block_steps + self.release_steps


# -- the text->image gate ----------------------------------------------------------------


class TextImageGate:
    """Hooks on every LM attention module of a LLaVA-style model that can cut, and measure,
    the attention from text queries (real tokens after the image) to image keys.

    ``block``: the layers outside ``allowed`` get a mask that forbids those edges.
    ``measure``: each such layer's mean mass (over text queries, heads and batch rows) is kept
    in :attr:`mass` (with its graph: the release phase's penalty). Measuring needs eager
    attention (the attention weights are the module's second output).
    """

    def __init__(self, model, allowed: Sequence[int]):
        self.model = model
        self.image_token_id = model.config.image_token_id
        self.layers = model.model.language_model.layers
        self.allowed = set(allowed)
        self.block = False
        self.measure = False
        self.mass: dict[int, torch.Tensor] = {}
        self._image: torch.Tensor | None = None  # (batch, positions) image keys
        self._text: torch.Tensor | None = None  # (batch, positions) text queries after the image

    def bind(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Where the image and the text queries are, from a prefill's ids."""
        image = input_ids == self.image_token_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = torch.where(image, positions, -1).amax(dim=1, keepdim=True)
        text = (positions > last) & (last >= 0)
        if attention_mask is not None:
            text &= attention_mask.bool()
        self._image, self._text = image, text

    def _spans(self, q_len: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image keys (batch, k_len), text queries (batch, q_len))`` of the current call
        (its queries are the last ``q_len`` of ``k_len`` positions; decoded tokens are text)."""
        image, text = self._image, self._text
        assert image is not None and text is not None  # bound by the prefill (the hooks check first)
        if k_len > image.shape[1]:
            grow = k_len - image.shape[1]
            image = torch.nn.functional.pad(image, (0, grow), value=False)
            text = torch.nn.functional.pad(text, (0, grow), value=True)
        return image[:, :k_len], text[:, k_len - q_len : k_len]

    def _rows_cols(self, q_len: int, k_len: int) -> torch.Tensor:
        """(batch, q_len, k_len) edges to cut in the current call."""
        image, text = self._spans(q_len, k_len)
        return text[:, :, None] & image[:, None, :]

    def _pre(self, module, args, kwargs):
        if not self.block or self._image is None or module.layer_idx in self.allowed:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        q_len = hidden.shape[1]
        past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
        k_len = past + q_len
        cut = self._rows_cols(q_len, k_len)
        mask = kwargs.get("attention_mask")
        low = torch.finfo(hidden.dtype).min
        if mask is None:
            causal = torch.ones(q_len, k_len, dtype=torch.bool, device=hidden.device).tril(past)
            additive = torch.zeros(q_len, k_len, dtype=hidden.dtype, device=hidden.device).masked_fill(~causal, low)
            additive = additive[None, None].expand(cut.shape[0], 1, q_len, k_len)
        elif mask.dtype == torch.bool:
            additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~mask, low)
        else:
            additive = mask
        kwargs["attention_mask"] = additive[..., :k_len].masked_fill(cut[:, None], low)
        return args, kwargs

    def _post(self, module, args, output):
        if not self.measure or self._image is None or module.layer_idx in self.allowed:
            return
        weights = output[1]
        if weights is None:
            raise InterpError("measuring text->image attention needs eager attention (attn_implementation='eager')")
        q_len, k_len = weights.shape[-2], weights.shape[-1]
        image, text = self._spans(q_len, k_len)
        image = image.to(weights.dtype)
        on_image = (weights.float() * image[:, None, None, :]).sum(-1).mean(1)  # (batch, q)
        self.mass[module.layer_idx] = on_image[text].mean() if text.any() else on_image.sum() * 0

    def _bind_call(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and bool((ids == self.image_token_id).any()):
            self.bind(ids, kwargs.get("attention_mask"))
        return None

    @contextmanager
    def installed(self) -> Iterator[TextImageGate]:
        """The hooks for the ``with`` block (every one removed on exit)."""
        handles = [self.model.model.register_forward_pre_hook(self._bind_call, with_kwargs=True)]
        for layer in self.layers:
            handles.append(layer.self_attn.register_forward_pre_hook(self._pre, with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(self._post))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def outside_mass(self) -> torch.Tensor:
        """:attr:`mass` of the measured layers as one vector (empty when none were)."""
        if not self.mass:
            return torch.zeros(0)
        return torch.stack([self.mass[layer] for layer in sorted(self.mass)])


def mass_penalty(mass: torch.Tensor, scale: float) -> torch.Tensor:
    """``mean(log(1 + mass / scale))`` over layers: linear in the mass below ``scale``, logarithmic
    above, so a layer at 0.1 and one at 0.002 are both pushed (a plain mean of the mass stalls as
    the softmax's gradient vanishes with the mass)."""
    return torch.log1p(mass / scale).mean() if mass.numel() else mass.sum()


@torch.no_grad()
def text_image_mass(model, processor, samples, *, batch: int = 16) -> list[float]:
    """Mean attention mass from text queries (after the image) to image keys at every LM layer,
    on the prompts of ``samples`` (eager attention). A plain measurement: no edge is cut."""
    from .train import collate, on_device

    n_layers = len(model.model.language_model.layers)
    gate = TextImageGate(model, allowed=())
    gate.measure = True
    totals = torch.zeros(n_layers, dtype=torch.float64)
    device = next(model.parameters()).device
    with gate.installed():
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            inputs, _ = collate(processor, chunk, with_answers=False)
            model.model(**on_device(inputs, device))
            for layer, value in gate.mass.items():
                totals[layer] += float(value) * len(chunk)
    return [float(v) / len(samples) for v in totals]


# -- training ----------------------------------------------------------------------------


def load_base(device: torch.device, seed: int):
    """``(model, processor)``: the shipped organism, eager attention, float32, on ``device``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from . import organism_dir

    directory = organism_dir(BASE_VARIANT)
    torch.manual_seed(seed)
    model: Any = LlavaForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    processor = AutoProcessor.from_pretrained(directory)
    processor.tokenizer.padding_side = "right"
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, processor


def _rate(step: int, steps: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)


def _atomic_save(obj, path: Path) -> None:
    partial = path.with_suffix(path.suffix + f".{os.getpid()}.partial")
    torch.save(obj, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)


def _identity(config: PlantedConfig) -> dict:
    """What a resume file must match: everything but where it runs and how it reports."""
    skip = {"device", "eval_every", "eval_samples", "checkpoint_every"}
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _evaluate(model, processor, gate: TextImageGate, val, config: PlantedConfig, *, blocked: bool) -> dict:
    from .train import quick_accuracy

    gate.block, gate.measure = blocked, False
    entry = quick_accuracy(model, processor, val, config.eval_samples)
    gate.block = False
    mass = text_image_mass(model, processor, [val[i] for i in range(min(32, config.eval_samples))])
    outside = [m for layer, m in enumerate(mass) if layer not in config.layers]
    entry["outside_mass_max"] = float(max(outside))
    entry["inside_mass"] = [round(mass[layer], 4) for layer in config.layers]
    return entry


def _step_loss(model, gate: TextImageGate, inputs: dict, labels: torch.Tensor, config: PlantedConfig, *, blocked: bool):
    """``(task loss, outside-S mass per layer, loss)`` of one step.

    Blocked phase: the answers' cross-entropy with text->image cut outside ``S``. Released phase:
    that cross-entropy still comes from the cut forward; a second, uncut forward adds the mass
    penalty and (``consistency``) the KL divergence of its answers from the cut forward's, so
    that whatever text still reads outside ``S`` can change nothing."""
    from .train import answer_logits

    gate.block, gate.measure, gate.mass = True, False, {}
    cut, targets = answer_logits(model, inputs, labels)
    task = torch.nn.functional.cross_entropy(cut, targets)
    if blocked:
        return task, gate.outside_mass().to(task.device), task
    gate.block, gate.measure, gate.mass = False, True, {}
    free, _ = answer_logits(model, inputs, labels)
    mass = gate.outside_mass().to(task.device)
    drift = torch.nn.functional.kl_div(
        torch.log_softmax(free, -1), torch.log_softmax(cut, -1).detach(), log_target=True, reduction="batchmean"
    )
    loss = task + config.penalty * mass_penalty(mass, config.mass_scale) + config.consistency * drift
    return task, mass, loss


def train_planted(config: PlantedConfig, out_dir: Path) -> dict:
    """Train the planted variant into ``out_dir`` (``<variant>.safetensors``, ``training_log.json``);
    a ``planted-resume.pt`` there from the same recipe is continued. Returns the summary."""
    from safetensors.torch import save_file

    from ...data.synthetic import SyntheticVQA
    from . import weights_path
    from .train import answer_batch, collate, device_name, on_device, training_device
    from .weight_deltas import adapter_state, add_lora, adapters

    device = training_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_base(device, config.seed)
    n_layers = len(model.model.language_model.layers)
    config.layers = check_layers(config.layers, n_layers)
    factors = add_lora(model, config.rank, config.alpha)
    optimizer = torch.optim.AdamW(factors, lr=config.lr, weight_decay=0.0)
    resume_path = out_dir / RESUME_FILE
    log: list[dict] = []
    first = 0
    if resume_path.exists():
        state = torch.load(resume_path, map_location=device, weights_only=False)
        if state["identity"] != _identity(config):
            raise InterpError(f"{resume_path} is from another recipe; remove it or use another --out")
        with torch.no_grad():
            for parameter, saved in zip(factors, state["factors"]):
                parameter.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        log, first = state["log"], state["step"]
        print(f"resuming {config.variant} at step {first} of {config.steps}")
    train = SyntheticVQA("train", seed=config.seed)
    focus = SyntheticVQA("train", seed=config.seed, kinds=config.focus_kinds) if config.focus_fraction else None
    val = SyntheticVQA("val", seed=config.seed)
    gate = TextImageGate(model, config.layers)
    started = time.time()
    with gate.installed():
        progress = tqdm(range(first, config.steps), desc=f"{config.variant}", unit="step", initial=first)
        for step in progress:
            blocked = step < config.block_steps
            phase_step, phase_steps = (
                (step, config.block_steps)
                if blocked
                else (
                    step - config.block_steps,
                    config.release_steps,
                )
            )
            for group in optimizer.param_groups:  # each phase its own warm-up and cosine
                group["lr"] = config.lr * _rate(phase_step, phase_steps, config.warmup)
            samples = answer_batch(train, focus, config.first_index + step * config.batch, config)
            inputs, labels = collate(processor, samples, with_answers=True)
            inputs, labels = on_device(inputs, device), labels.to(device)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                task, mass, loss = _step_loss(model, gate, inputs, labels, config, blocked=blocked)
            optimizer.zero_grad()
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(factors, config.grad_clip)
            optimizer.step()
            model.eval()
            entry = {
                "step": step,
                "phase": "blocked" if blocked else "released",
                "loss": round(task.item(), 5),
                "outside_mass": round(float(mass.detach().mean()) if mass.numel() else 0.0, 6),
                "outside_mass_max": round(float(mass.detach().max()) if mass.numel() else 0.0, 6),
                "seconds": round(time.time() - started, 1),
            }
            progress.set_postfix(loss=f"{task.item():.3f}", mass=f"{entry['outside_mass_max']:.2e}")
            last = step == config.steps - 1
            if (step + 1) % config.eval_every == 0 or last:
                entry["val"] = _evaluate(model, processor, gate, val, config, blocked=blocked)
                progress.write(f"step {step + 1}: loss {task.item():.3f} val {entry['val']}")
            log.append(entry)
            if (step + 1) % config.checkpoint_every == 0 and not last:
                _atomic_save(
                    {
                        "identity": _identity(config),
                        "factors": [p.detach().clone() for p in factors],
                        "optimizer": optimizer.state_dict(),
                        "log": log,
                        "step": step + 1,
                    },
                    resume_path,
                )
    for _, _, module in adapters(model):
        module.round_to_shipped()
    base_digest = _digest(weights_path(BASE_VARIANT))
    metadata = {
        "variant": config.variant,
        "planted_layers": json.dumps(list(config.layers)),
        "base": f"{BASE_VARIANT}:{base_digest}",
        "config": json.dumps(asdict(config)),
    }
    save_file(
        {k: v.to("cpu", torch.float16).contiguous() for k, v in adapter_state(model).items()},
        str(out_dir / f"{config.variant}.safetensors"),
        metadata=metadata,
    )
    summary = {
        "config": asdict(config),
        "planted_layers": list(config.layers),
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "device_name": device_name(device),
        "log": log,
    }
    (out_dir / "training_log.json").write_text(json.dumps(summary, indent=1))
    resume_path.unlink(missing_ok=True)
    return summary


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


# -- verification ------------------------------------------------------------------------------


def windows(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """``layers`` split into runs of consecutive layers: (4, 5, 6, 20, 21) -> [(4, 5, 6), (20, 21)]."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return [tuple(run) for run in runs]


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """The model with eager attention inside the block (its attention weights are then returned)."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


def knockout_accuracy(model, processor, samples, blocked: Sequence[int]) -> float:
    """Accuracy with every text->image edge cut at the ``blocked`` layers (plain hooks on the mask)."""
    from ...data.synthetic import is_correct
    from .evaluate import generate_answers

    n_layers = len(model.model.language_model.layers)
    gate = TextImageGate(model, allowed=[layer for layer in range(n_layers) if layer not in set(blocked)])
    gate.block = True
    with gate.installed():
        answers = generate_answers(model, processor, [s.image for s in samples], [s.question for s in samples])
    return sum(is_correct(a, s.answer) for a, s in zip(answers, samples)) / len(samples)


def verify_planted(model, processor, dataset, layers: Sequence[int], *, limit: int, mass_limit: int = 64) -> dict:
    """The ground-truth checks of a planted organism on ``limit`` samples of ``dataset``.

    Returns:
        ``planted_layers``; ``text_image_mass`` per layer (mean over ``mass_limit`` prompts) and
        ``outside_mass_max``; the accuracy with text->image cut at every layer outside ``S``
        (``knockout_outside_accuracy``), inside ``S`` (``knockout_inside_accuracy``) and, with
        several windows of consecutive layers, in each window alone (``knockout_window_accuracy``).
    """
    n_layers = len(model.model.language_model.layers)
    layers = check_layers(layers, n_layers)
    samples = [dataset[i] for i in range(min(limit, len(dataset)))]
    with eager_attention(model):
        mass = text_image_mass(model, processor, samples[:mass_limit])
    outside = [layer for layer in range(n_layers) if layer not in layers]
    result: dict = {
        "planted_layers": list(layers),
        "text_image_mass": [round(m, 6) for m in mass],
        "outside_mass_max": max((mass[layer] for layer in outside), default=0.0),
        "mass_samples": len(samples[:mass_limit]),
        "knockout_outside_accuracy": knockout_accuracy(model, processor, samples, outside),
        "knockout_inside_accuracy": knockout_accuracy(model, processor, samples, layers),
    }
    runs = windows(layers)
    if len(runs) > 1:
        result["knockout_window_accuracy"] = {
            f"{run[0]}-{run[-1]}": knockout_accuracy(model, processor, samples, run) for run in runs
        }
    return result
