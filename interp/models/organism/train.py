"""``interp organism train``: the organism's reproducible, seeded training recipe.

Like a real VLM, in three stages:

0. **Tower pre-training** on its own: the CLIP tower learns dense per-patch (colour,
   shape) labels of the synthetic scenes and which patch holds an object's centre
   (real VLM encoders come pre-trained too). Then the projector is initialised so that
   each patch's image token lands near the sum of SmolLM2's embeddings of its words
   (`` red`` + `` circle``, plus `` object`` on an object's centre patch;
   `` background``): a cheap regression (no LM forward) that gives the frozen LM
   readable image tokens, much as LLaVA's stage 1 aligns features to word space. The
   centre mark gives each object exactly one token to count, whatever its size.
1. **Alignment** (LLaVA stage 1): projector (and tower, at a lower rate) trained to
   answer questions through the *frozen* SmolLM2. Saved as ``organism-frozen``.
2. **Adaptation** (LLaVA stage 2): additionally the LM's attention projections
   (q/k/v/o) are trained; MLPs, embeddings and head stay SmolLM2's. Saved as ``organism``.
3. **Polish**: a second, gentler cosine cycle of stage 2.

Answer stages draw ``focus_fraction`` of every batch from the kinds that are learned last
(counting, spatial) and the rest round-robin over all kinds.

Loss: cross-entropy on the answer tokens (and the closing ``<|im_end|>``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from tqdm.auto import tqdm

from . import WEIGHTS_DIR
from .build import ATTENTION_PROJECTIONS, TowerSpec, build_organism, trainable_state

if TYPE_CHECKING:
    pass


@dataclass
class TrainConfig:
    seed: int = 0
    tower_steps: int = 1200
    tower_batch: int = 64
    tower_lr: float = 3e-4
    words_steps: int = 300
    words_lr: float = 1e-3
    align_steps: int = 150
    adapt_steps: int = 1000
    batch: int = 16
    lr_projector: float = 1e-3
    lr_tower: float = 0.0  # 0 keeps the pre-trained tower frozen in the answer stages
    lr_attention: float = 3e-4
    polish_steps: int = 400  # stage 3: a second, gentler cosine cycle over all kinds
    polish_lr_scale: float = 0.5
    centre_marker: bool = True  # tower learns object centres; their tokens also carry " object"
    centre_weight: float = 4.0  # class weight of centre patches (about 1 patch in 10)
    focus_kinds: tuple[str, ...] = ("counting", "spatial")
    focus_fraction: float = 0.25  # share of each answer batch drawn from focus_kinds
    warmup: int = 20
    grad_clip: float = 5.0  # global norm; 0 disables
    bf16: bool = True  # bfloat16 autocast for the answer stages (fp32 master weights)
    eval_every: int = 100
    eval_samples: int = 96
    progress_file: str | None = None  # the log so far, rewritten at every evaluation
    #: where the model trains ("cpu", "cuda", "cuda:1", ...); the shipped run trained on the CPU
    device: str = "cpu"
    tower: TowerSpec = field(default_factory=TowerSpec)


def _pixel_values(processor, images) -> torch.Tensor:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


# -- devices (both recipes) ---------------------------------------------------------


def training_device(name: str) -> torch.device:
    """The training device, or one clear error when this machine has none such."""
    from ...errors import InterpError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InterpError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InterpError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InterpError(f"--device {name}: MPS is not available here")
    return device


def on_device(batch: dict, device) -> dict:
    """``batch``'s tensors on ``device`` (the processor makes them on the CPU)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def device_name(device: torch.device) -> str:
    """What a model card says the run trained on."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


# -- stage 0 -------------------------------------------------------------------------


def patch_targets(samples, grid: int) -> dict[str, torch.Tensor]:
    """Flattened per-patch labels of a batch: ``colour``, ``shape`` (class indices) and
    ``centre`` (1 on the patch holding an object's centre)."""
    labels = [s.patch_labels(grid, grid) for s in samples]
    return {
        "colour": torch.stack([c for c, _ in labels]).flatten(),
        "shape": torch.stack([s for _, s in labels]).flatten(),
        "centre": torch.stack([s.centre_mask(grid, grid) for s in samples]).flatten().long(),
    }


def pretrain_tower(model, processor, dataset, config: TrainConfig, log: list) -> None:
    """Dense per-patch colour and shape (and centre) classification on the tower's patch outputs."""
    from ...data.synthetic import COLOURS, SHAPES

    tower = model.model.vision_tower
    grid = config.tower.grid
    hidden = config.tower.hidden_size
    heads = torch.nn.ModuleDict(
        {
            "colour": torch.nn.Linear(hidden, len(COLOURS) + 1),
            "shape": torch.nn.Linear(hidden, len(SHAPES) + 1),
            "centre": torch.nn.Linear(hidden, 2),
        }
    )
    device = next(tower.parameters()).device
    heads.to(device)
    centre_weights = torch.tensor([1.0, config.centre_weight], device=device)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.tower_lr, weight_decay=0.05)
    tower.train()
    start = time.time()
    index = 0
    progress = tqdm(range(config.tower_steps), desc="stage 0: tower", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = config.tower_lr * min(1.0, (step + 1) / 30)
        samples = [dataset[index + i] for i in range(config.tower_batch)]
        index += config.tower_batch
        pixels = _pixel_values(processor, [s.image for s in samples]).to(device)
        target = on_device(patch_targets(samples, grid), device)
        colour, shape, centre = target["colour"], target["shape"], target["centre"]
        features = tower(pixels).last_hidden_state[:, 1:]  # drop CLS: one row per patch
        features = features.reshape(-1, hidden)
        logits_c, logits_s = heads["colour"](features), heads["shape"](features)
        loss = torch.nn.functional.cross_entropy(logits_c, colour) + torch.nn.functional.cross_entropy(logits_s, shape)
        if config.centre_marker:
            logits_m = heads["centre"](features)
            loss = loss + torch.nn.functional.cross_entropy(logits_m, centre, weight=centre_weights)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        accuracy = float(((logits_c.argmax(-1) == colour) & (logits_s.argmax(-1) == shape)).float().mean())
        on_object = colour > 0
        shape_accuracy = float((logits_s.argmax(-1) == shape)[on_object].float().mean())
        progress.set_postfix(loss=f"{loss.item():.3f}", patch_acc=f"{accuracy:.3f}")
        if step % 25 == 0 or step == config.tower_steps - 1:
            entry = {
                "stage": 0,
                "step": step,
                "loss": loss.item(),
                "patch_accuracy": accuracy,
                "object_shape_accuracy": shape_accuracy,
                "seconds": round(time.time() - start, 1),
            }
            message = (
                f"stage 0 step {step + 1}: loss {loss.item():.3f} patch accuracy {accuracy:.3f} "
                f"shape accuracy on object patches {shape_accuracy:.3f}"
            )
            if config.centre_marker:
                # images whose centre patches are all found, and nothing else
                exact = (logits_m.argmax(-1) == centre).reshape(len(samples), -1).all(-1)
                entry["centre_exact"] = float(exact.float().mean())
                message += f" centre patches exact {entry['centre_exact']:.3f}"
            log.append(entry)
            progress.write(message)
    tower.eval()


def word_targets(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SmolLM2's input embeddings of `` <colour>`` (row 0: `` background``) and `` <shape>``
    (row 0: zeros), indexed like :data:`COLOUR_CLASSES` / :data:`SHAPE_CLASSES`, and of the
    centre mark `` object``."""
    from ...data.synthetic import COLOUR_CLASSES, SHAPE_CLASSES

    def word(text: str) -> torch.Tensor:
        return word_embedding(model, tokenizer, text)

    colours = torch.stack([word(c) for c in COLOUR_CLASSES])
    shapes = torch.stack([torch.zeros_like(colours[0])] + [word(s) for s in SHAPE_CLASSES[1:]])
    return colours, shapes, word("object")


def word_embedding(model, tokenizer, text: str) -> torch.Tensor:
    """SmolLM2's input embedding of `` <text>`` (the mean over its tokens, if several)."""
    embed = model.model.language_model.embed_tokens.weight.detach()
    return embed[tokenizer(" " + text, add_special_tokens=False)["input_ids"]].mean(dim=0)


def align_projector_to_words(model, processor, dataset, config: TrainConfig, log: list) -> None:
    """Regress each patch's projected feature onto its words' embedding sum (tower frozen)."""
    tower = model.model.vision_tower
    projector = model.model.multi_modal_projector
    colours, shapes, marker = word_targets(model, processor.tokenizer)
    grid = config.tower.grid
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.words_lr, weight_decay=0.0)
    start = time.time()
    index = 80_000
    progress = tqdm(range(config.words_steps), desc="stage 0: projector to words", unit="step")
    for step in progress:
        samples = [dataset[index + i] for i in range(config.tower_batch)]
        index += config.tower_batch
        with torch.no_grad():
            features = tower(_pixel_values(processor, [s.image for s in samples]).to(marker.device)).last_hidden_state[
                :, 1:
            ]
        labels = on_device(patch_targets(samples, grid), marker.device)
        target = colours[labels["colour"]] + shapes[labels["shape"]]
        if config.centre_marker:
            target = target + labels["centre"][:, None].float() * marker
        output = projector(features).reshape(-1, target.shape[-1])
        loss = torch.nn.functional.mse_loss(output, target) / target.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step % 25 == 0 or step == config.words_steps - 1:
            log.append({"stage": 0.5, "step": step, "loss": loss.item(), "seconds": round(time.time() - start, 1)})
            progress.write(f"stage 0.5 step {step + 1}: relative error {loss.item():.4f}")


# -- stages 1 and 2 ----------------------------------------------------------------------


def collate(processor, samples, *, with_answers: bool):
    """Right-padded batch; labels cover the answer tokens and the closing <|im_end|>."""
    from ...inputs import chat_messages

    tokenizer = processor.tokenizer
    pixels = _pixel_values(processor, [s.image for s in samples])
    rows, labels = [], []
    for sample in samples:
        prompt = processor.apply_chat_template(chat_messages(sample.question, 1), add_generation_prompt=True)
        prompt_ids = processor(images=sample.image, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
        answer_ids = (
            tokenizer(sample.answer + "<|im_end|>", add_special_tokens=False)["input_ids"] if with_answers else []
        )
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_t = torch.full((len(rows), width), -100)
    for i, (row, label) in enumerate(zip(rows, labels)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        label_t[i, : len(label)] = torch.tensor(label)
    return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixels}, label_t


def answer_logits(model, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` at the labelled positions only: the unembedding (49k x 576) is applied
    to the few answer rows instead of every position, which halves the step time."""
    hidden = model.model(**inputs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    return model.lm_head(hidden[keep]).float(), targets[keep]


def answer_loss(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the labelled positions (:func:`answer_logits`); both organism recipes train on it."""
    return torch.nn.functional.cross_entropy(*answer_logits(model, inputs, labels))


def quick_accuracy(model, processor, dataset, n: int) -> dict:
    from .evaluate import evaluate

    model.eval()
    result = evaluate(model, processor, dataset, limit=n, blind=False)
    return {"accuracy": round(result["accuracy"], 4), **{k: round(v, 3) for k, v in result["per_kind"].items()}}


class BatchSpec(Protocol):
    """What :func:`answer_batch` reads of a recipe's config."""

    batch: int
    focus_fraction: float


def answer_batch(train, focus, index: int, config: BatchSpec) -> list:
    """The batch at ``index``: it takes the ``batch`` train indices from ``index`` on, the
    first ones from ``train`` (all kinds), the last ``focus_fraction`` of them from ``focus``
    (the focus kinds; same split and seed, so no index is ever drawn twice)."""
    n_focus = round(config.batch * config.focus_fraction) if focus is not None else 0
    n_all = config.batch - n_focus
    return [train[index + i] for i in range(n_all)] + [focus[index + n_all + i] for i in range(n_focus)]


def train_answers(
    model,
    processor,
    train,
    val,
    config: TrainConfig,
    *,
    steps: int,
    stage: int,
    with_attention: bool,
    log: list,
    first_index: int,
    lr_scale: float = 1.0,
    focus=None,
) -> int:
    """Train the projector and tower (and attention projections) on answer tokens."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups: list[dict[str, Any]] = [
        {"params": list(model.model.multi_modal_projector.parameters()), "lr": config.lr_projector}
    ]
    if config.lr_tower > 0:
        groups.append({"params": list(model.model.vision_tower.parameters()), "lr": config.lr_tower})
    if with_attention:
        attention = [
            p
            for name, p in model.model.language_model.named_parameters()
            if ".self_attn." in name and name.split(".")[-2] in ATTENTION_PROJECTIONS
        ]
        groups.append({"params": attention, "lr": config.lr_attention})
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] * lr_scale for g in groups]
    index = first_index
    start = time.time()
    device = next(model.parameters()).device
    progress = tqdm(range(steps), desc=f"stage {stage}: {'adapt' if with_attention else 'align'}", unit="step")
    for step in progress:
        scale = min(1.0, (step + 1) / config.warmup) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * scale
        samples = answer_batch(train, focus, index, config)
        index += config.batch
        inputs, labels = collate(processor, samples, with_answers=True)
        inputs, labels = on_device(inputs, device), labels.to(device)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = answer_loss(model, inputs, labels)
        optimizer.zero_grad()
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
        entry = {"stage": stage, "step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - start, 1)}
        if (step + 1) % config.eval_every == 0 or step == steps - 1:
            entry["val"] = quick_accuracy(model, processor, val, config.eval_samples)
            progress.write(f"stage {stage} step {step + 1}: loss {loss.item():.3f} val {entry['val']}")
            if config.progress_file:
                Path(config.progress_file).write_text(json.dumps(log + [entry], indent=1))
        log.append(entry)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return index


def polish(
    model, processor, train_set, val_set, config: TrainConfig, log: list, *, first_index: int, focus=None
) -> int:
    """Stage 3: continue from the stage-2 weights *as shipped* (fp16-rounded, so a run resumed
    from ``organism.safetensors`` is the same computation) with a fresh warm-up and cosine
    cycle at ``polish_lr_scale`` times the stage-2 rates, over all question kinds."""
    from .build import apply_trained_state

    if not config.polish_steps:
        return first_index
    apply_trained_state(model, trainable_state(model, with_attention=True))
    return train_answers(
        model,
        processor,
        train_set,
        val_set,
        config,
        steps=config.polish_steps,
        stage=3,
        with_attention=True,
        log=log,
        first_index=first_index,
        lr_scale=config.polish_lr_scale,
        focus=focus,
    )


def train(config: TrainConfig | None = None, out_dir: Path = WEIGHTS_DIR) -> dict:
    """Run all stages; write ``organism-frozen.safetensors``, ``organism.safetensors`` and
    ``training_log.json`` into ``out_dir``. Returns the log."""
    config = config or TrainConfig()
    from safetensors.torch import save_file

    from ...data.synthetic import SyntheticVQA

    device = training_device(config.device)  # before any work: one clear line when there is no such device
    torch.manual_seed(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.progress_file is None:
        config.progress_file = str(out_dir / "training_progress.json")
    model, processor = build_organism(config.tower, seed=config.seed, attn_implementation="sdpa")
    model.to(device)
    processor.tokenizer.padding_side = "right"
    train_set = SyntheticVQA("train", seed=config.seed, image_size=config.tower.image_size)
    val_set = SyntheticVQA("val", seed=config.seed, image_size=config.tower.image_size)
    focus = None
    if config.focus_fraction > 0 and config.focus_kinds:
        focus = SyntheticVQA("train", seed=config.seed, image_size=config.tower.image_size, kinds=config.focus_kinds)
    log: list = []
    started = time.time()
    pretrain_tower(model, processor, train_set, config, log)
    align_projector_to_words(model, processor, train_set, config, log)
    t0 = time.time() - started
    index = train_answers(
        model,
        processor,
        train_set,
        val_set,
        config,
        steps=config.align_steps,
        stage=1,
        with_attention=False,
        log=log,
        first_index=100_000,
        focus=focus,
    )
    t1 = time.time() - started
    meta = {"config": json.dumps(asdict(config)), "variant": "organism-frozen"}
    save_file(trainable_state(model, with_attention=False), str(out_dir / "organism-frozen.safetensors"), metadata=meta)
    index = train_answers(
        model,
        processor,
        train_set,
        val_set,
        config,
        steps=config.adapt_steps,
        stage=2,
        with_attention=True,
        log=log,
        first_index=index,
        focus=focus,
    )
    meta["variant"] = "organism"
    save_file(trainable_state(model, with_attention=True), str(out_dir / "organism.safetensors"), metadata=meta)
    t_polish = time.time()
    polish(model, processor, train_set, val_set, config, log, first_index=index, focus=focus)
    t_polish = time.time() - t_polish
    t2 = time.time() - started
    save_file(trainable_state(model, with_attention=True), str(out_dir / "organism.safetensors"), metadata=meta)
    summary = {
        "config": asdict(config),
        "seconds": {
            "tower": round(t0, 1),
            "align": round(t1 - t0, 1),
            "adapt": round(t2 - t1, 1),
            "polish": round(t_polish, 1),
            "total": round(t2, 1),
        },
        "torch": torch.__version__,
        "device_name": device_name(device),
        "log": log,
    }
    (out_dir / "training_log.json").write_text(json.dumps(summary, indent=1))
    Path(config.progress_file).unlink(missing_ok=True)
    return summary
