"""``interp organism train --arch qwen2_vl``: the Qwen2-VL organism's seeded recipe.

The LLaVA organism's recipe (:mod:`.train`), adapted to Qwen2-VL's tower:

0. **Tower pre-training**: Qwen's 2-D-RoPE ViT learns dense per-token (colour, shape)
   labels and object-centre marks of the synthetic scenes. The labels live on the merged
   grid (one per LM token, a 2x2 block of patches); the heads read the block's four patch
   features concatenated, exactly what the merger reads. Steps alternate between the
   ``tower_sizes`` (96 px: 6x6 tokens, 128 px: 8x8), so the tower is trained for
   dynamic resolution like a real Qwen2-VL encoder.
0b. **Merger to words**: the 2x2 merger (Qwen's projector) regressed onto SmolLM2's
   embeddings of each token's words (`` red`` + `` circle``, + `` object`` on a centre).
1. **Alignment**: the merger trained on answers through the frozen LM.
2. **Adaptation**: merger + the LM's q/k/v/o (LoRA, or in full with ``attention="full"`` as
   the LLaVA organism trains them) + the q/k/v biases (Qwen2's, zero in SmolLM2) on answers.
3. **Polish**: a second, gentler cosine cycle of stage 2.

Answer batches draw ``focus_fraction`` from counting and spatial questions, as for LLaVA.
Only the weights that differ from SmolLM2 are written (``organism-qwen2vl.safetensors``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .qwen2vl import MERGE, QwenTowerSpec, build_qwen_organism, trainable_state
from .weight_deltas import adapters, add_full_attention, add_lora
from .train import (
    answer_batch,
    answer_loss,
    device_name,
    on_device,
    quick_accuracy,
    training_device,
    word_embedding,
    word_targets,
)

VARIANT = "organism-qwen2vl"


@dataclass
class QwenTrainConfig:
    seed: int = 0
    tower_steps: int = 900
    tower_batch: int = 24
    tower_lr: float = 1e-3
    tower_sizes: tuple[int, ...] = (96, 96, 96, 128)  # cycled per step: dynamic resolution
    words_steps: int = 100
    words_lr: float = 2e-3
    align_steps: int = 0  # stage 1 (merger only, LM frozen); 0 goes straight to adaptation
    adapt_steps: int = 700
    batch: int = 8
    # the merger is already word-aligned by stage 0b: a high rate here lets its outputs grow
    # far past the embeddings' scale (seen at 1e-3: norms 8x the words', answers at chance)
    lr_projector: float = 1e-4
    lr_lora: float = 1e-3
    lr_bias: float = 1e-3
    # "lora": low-rank factors on q/k/v/o (lora_rank, lora_alpha, lr_lora); "full": every q/k/v/o
    # weight trained (lr_attention, the LLaVA organism's rate), shipped as int8 codes of its change
    attention: str = "lora"
    lr_attention: float = 3e-4
    lora_rank: int = 32
    lora_alpha: float = 64.0
    polish_steps: int = 0
    polish_lr_scale: float = 0.5
    centre_weight: float = 4.0
    # Absolute position. Qwen's ViT has only relative (2-D RoPE) positions, and in the LM the
    # M-RoPE column section holds the lowest rotary frequencies (with SmolLM2's head_dim 64 and
    # theta 1e5, 0.005 rad across an 8-token row; rows 0.4 rad), so neither side sees where a token
    # is: "left of" / "above" stay at chance (run 3: 0.57 / 0.59 on the test split). Real Qwen2-VL
    # towers learn it from grounding data; here stage 0 gains a head regressing each token's
    # (row, column) centre in [0, 1] with this loss weight (0: no head, the runs before it), and
    # ``position_words`` adds `` right``-minus-`` left`` and `` below``-minus-`` above`` embeddings,
    # scaled by the centre's offset from the image's middle, to stage 0b's word targets.
    position_weight: float = 0.0
    position_words: bool = False
    focus_kinds: tuple[str, ...] = ("counting", "spatial")
    focus_fraction: float = 0.25
    warmup: int = 10
    grad_clip: float = 1.0
    bf16: bool = False  # bfloat16 autocast: only worth it on CPUs with native bf16 matmuls (or a GPU)
    #: where the model trains ("cpu", "cuda", "cuda:1", ...); not part of a resumable state's settings,
    #: though a run resumed on another device goes on with that device's float rounding
    device: str = "cpu"
    eval_every: int = 60
    eval_samples: int = 48
    # wall-clock budget (minutes, from the start) for stage 2: once its warm-up has been
    # timed, adapt_steps shrinks to what fits; the log records the steps actually run, and
    # ``--adapt-steps N`` with no budget repeats the run exactly (the warm-up does not
    # depend on the step count)
    time_budget_min: float | None = None
    # where stages 2 and 3 write, at every evaluation, the weights (``stageS-stepN.safetensors``) and a
    # resumable state (``stageS-resume.pt``: trained tensors, optimizer, step, data position)
    checkpoint_dir: str | None = None
    progress_file: str | None = None
    tower: QwenTowerSpec = field(default_factory=QwenTowerSpec)

    def __post_init__(self):
        if self.attention not in ("lora", "full"):
            raise ValueError(f"attention={self.attention!r}: 'lora' or 'full'")


def lr_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% over the remaining steps. The warm-up is
    independent of ``steps``, so a run that fixes its step count after the warm-up is
    the same computation as one given that count from the start."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * 0.9 + 0.1


def image_inputs(processor, images) -> dict:
    """``pixel_values`` (patches, 3*2*p*p) and ``image_grid_thw`` of a list of images."""
    out = processor.image_processor(images=images, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def merged_features(visual, inputs: dict) -> torch.Tensor:
    """The tower's patch outputs grouped as the merger reads them: one row of
    ``4 * embed_dim`` per LM token, images in order, each row-major over its merged grid."""
    hidden = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1] * MERGE * MERGE)


def token_targets(samples, grids: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Per-LM-token labels (colour, shape, centre) of a batch, concatenated like the tokens."""
    colour, shape, centre, position = [], [], [], []
    for sample, (rows, cols) in zip(samples, grids):
        c, s = sample.patch_labels(rows, cols)
        colour.append(c.flatten())
        shape.append(s.flatten())
        centre.append(sample.centre_mask(rows, cols).flatten().long())
        position.append(token_positions(rows, cols))
    return {
        "colour": torch.cat(colour),
        "shape": torch.cat(shape),
        "centre": torch.cat(centre),
        "position": torch.cat(position),
    }


def token_positions(rows: int, cols: int) -> torch.Tensor:
    """``float[rows * cols, 2]``: each merged token's (row, column) centre as a fraction of the
    image's height and width, row-major like the tokens (so a 6x6 and an 8x8 grid share a scale)."""
    r = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    c = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)


def position_words(model, tokenizer) -> torch.Tensor:
    """``float[2, hidden]``: SmolLM2's embeddings of `` below`` minus `` above`` (row axis) and of
    `` right`` minus `` left`` (column axis), the words the spatial questions are asked in."""

    def word(text: str) -> torch.Tensor:
        return word_embedding(model, tokenizer, text)

    return torch.stack([word("below") - word("above"), word("right") - word("left")])


def _grids(inputs) -> list[tuple[int, int]]:
    return [(int(h) // MERGE, int(w) // MERGE) for _, h, w in inputs["image_grid_thw"].tolist()]


def _scene_batch(datasets: dict, size: int, start: int, n: int):
    return [datasets[size][start + i] for i in range(n)]


def pretrain_tower(model, processor, datasets: dict, config: QwenTrainConfig, log: list) -> None:
    from ...data.synthetic import COLOURS, SHAPES

    visual = model.model.visual
    width = config.tower.embed_dim * MERGE * MERGE
    heads = torch.nn.ModuleDict(
        {
            "colour": torch.nn.Linear(width, len(COLOURS) + 1),
            "shape": torch.nn.Linear(width, len(SHAPES) + 1),
            "centre": torch.nn.Linear(width, 2),
        }
    )
    if config.position_weight > 0:  # created only then: the runs without it draw the same random numbers
        heads["position"] = torch.nn.Linear(width, 2)
    device = next(visual.parameters()).device
    heads.to(device)
    blocks = [p for n, p in visual.named_parameters() if not n.startswith("merger.")]
    params = blocks + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.tower_lr, weight_decay=0.05)
    centre_weights = torch.tensor([1.0, config.centre_weight], device=device)
    visual.train()
    start, index = time.time(), 0
    progress = tqdm(range(config.tower_steps), desc="stage 0: tower", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = config.tower_lr * lr_scale(step, config.tower_steps, 30)
        size = config.tower_sizes[step % len(config.tower_sizes)]
        samples = _scene_batch(datasets, size, index, config.tower_batch)
        index += config.tower_batch
        inputs = image_inputs(processor, [s.image for s in samples])
        target = on_device(token_targets(samples, _grids(inputs)), device)
        features = merged_features(visual, on_device(inputs, device))
        logits_c, logits_s, logits_m = (heads[k](features) for k in ("colour", "shape", "centre"))
        loss = (
            torch.nn.functional.cross_entropy(logits_c, target["colour"])
            + torch.nn.functional.cross_entropy(logits_s, target["shape"])
            + torch.nn.functional.cross_entropy(logits_m, target["centre"], weight=centre_weights)
        )
        if config.position_weight > 0:
            where = heads["position"](features)
            loss = loss + config.position_weight * torch.nn.functional.mse_loss(where, target["position"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        right = (logits_c.argmax(-1) == target["colour"]) & (logits_s.argmax(-1) == target["shape"])
        accuracy = float(right.float().mean())
        progress.set_postfix(loss=f"{loss.item():.3f}", token_acc=f"{accuracy:.3f}")
        if step % 25 == 0 or step >= config.tower_steps - len(config.tower_sizes):
            on_object = target["colour"] > 0
            shape_accuracy = float((logits_s.argmax(-1) == target["shape"])[on_object].float().mean())
            exact = (logits_m.argmax(-1) == target["centre"]).reshape(len(samples), -1).all(-1)
            entry = {
                "stage": 0,
                "step": step,
                "image_size": size,
                "loss": loss.item(),
                "patch_accuracy": accuracy,
                "object_shape_accuracy": shape_accuracy,
                "centre_exact": float(exact.float().mean()),
                "seconds": round(time.time() - start, 1),
            }
            if config.position_weight > 0:  # mean absolute offset per axis from the true token, in tokens
                rows, cols = _grids(inputs)[0]
                off = (where.detach() - target["position"]).abs() * torch.tensor([rows, cols], device=device)
                entry["position_error_tokens"] = round(float(off.mean()), 4)
            log.append(entry)
            progress.write(
                f"stage 0 step {step + 1} ({size} px): loss {loss.item():.3f} token accuracy {accuracy:.3f} "
                f"shape on objects {shape_accuracy:.3f} centres exact {entry['centre_exact']:.3f}"
            )
    visual.eval()


def align_merger_to_words(model, processor, datasets: dict, config: QwenTrainConfig, log: list) -> None:
    visual = model.model.visual
    colours, shapes, marker = word_targets(model, processor.tokenizer)
    where_words = position_words(model, processor.tokenizer) if config.position_words else None
    optimizer = torch.optim.AdamW(visual.merger.parameters(), lr=config.words_lr, weight_decay=0.0)
    start, index = time.time(), 80_000
    progress = tqdm(range(config.words_steps), desc="stage 0b: merger to words", unit="step")
    for step in progress:
        size = config.tower_sizes[step % len(config.tower_sizes)]
        samples = _scene_batch(datasets, size, index, config.tower_batch)
        index += config.tower_batch
        inputs = image_inputs(processor, [s.image for s in samples])
        labels = on_device(token_targets(samples, _grids(inputs)), marker.device)
        inputs = on_device(inputs, marker.device)
        with torch.no_grad():
            hidden = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
        target = colours[labels["colour"]] + shapes[labels["shape"]] + labels["centre"][:, None].float() * marker
        if where_words is not None:  # -0.5 .. 0.5 of each axis' word difference: where the token is
            target = target + (labels["position"] - 0.5) @ where_words
        output = visual.merger(hidden)
        loss = torch.nn.functional.mse_loss(output, target) / target.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step % 25 == 0 or step == config.words_steps - 1:
            log.append({"stage": 0.5, "step": step, "loss": loss.item(), "seconds": round(time.time() - start, 1)})
            progress.write(f"stage 0b step {step + 1}: relative error {loss.item():.4f}")


def collate(processor, samples):
    """Right-padded batch with every input Qwen2-VL needs; labels cover the answer and ``<|im_end|>``."""
    from ...inputs import chat_messages

    tokenizer = processor.tokenizer
    rows, labels = [], []
    for sample in samples:
        prompt = processor.apply_chat_template(chat_messages(sample.question, 1), add_generation_prompt=True)
        prompt_ids = processor(images=[sample.image], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        answer_ids = tokenizer(sample.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_t = torch.full((len(rows), width), -100)
    for i, (row, label) in enumerate(zip(rows, labels)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        label_t[i, : len(label)] = torch.tensor(label)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    mm_types = (input_ids == image_id).long()
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mm_token_type_ids": mm_types,
        **image_inputs(processor, [s.image for s in samples]),
    }
    return inputs, label_t


def _groups(model, config: QwenTrainConfig, *, adapt: bool) -> list[dict]:
    groups = [{"params": list(model.model.visual.merger.parameters()), "lr": config.lr_projector}]
    if adapt:
        lm = model.model.language_model
        adapted = [p for _, _, adapter in adapters(model) for p in adapter.trained_parameters()]
        biases = [p for n, p in lm.named_parameters() if ".self_attn." in n and n.endswith(".bias")]
        rate = config.lr_attention if config.attention == "full" else config.lr_lora
        groups += [{"params": adapted, "lr": rate}, {"params": biases, "lr": config.lr_bias}]
    return groups


#: settings that may differ between a run and its resumption (where files go, not what trains)
RESUME_FREE = ("checkpoint_dir", "progress_file", "time_budget_min", "device")
#: settings only the polish stage reads: a stage-2 state continues under any of them (so a run
#: may gain a polish stage when it is resumed); a stage-3 state needs them as they were
POLISH_ONLY = ("polish_steps", "polish_lr_scale")


def _resume_identity(config: QwenTrainConfig | dict, stage: int) -> dict:
    fields = config if isinstance(config, dict) else json.loads(json.dumps(asdict(config)))
    free = RESUME_FREE + (POLISH_ONLY if stage == 2 else ())
    return {k: v for k, v in fields.items() if k not in free}


def _restore(resume: dict, groups: list, optimizer, names: dict) -> None:
    """Put a resumable state's trained tensors, optimizer state and random state back."""
    with torch.no_grad():
        for group in groups:
            for parameter in group["params"]:
                parameter.copy_(resume["params"][names[id(parameter)]])
    optimizer.load_state_dict(resume["optimizer"])
    torch.set_rng_state(resume["rng"])


def _budgeted_steps(config: QwenTrainConfig, step: int, steps: int, per_step: float, left: float) -> int:
    """The steps that fit the time left after ``step`` (at least one past the warm-up)."""
    # an evaluation (forward only) costs about half a training step per batch of samples
    eval_share = 0.5 * config.eval_samples / config.batch / config.eval_every
    fit = int(left / (per_step * (1 + eval_share)))
    return max(config.warmup + 1, min(steps, step + 1 + fit))


def _save_checkpoint(model, config: QwenTrainConfig, stage: int, step: int, state: dict) -> None:
    """The trained tensors after ``step`` and the stage's resumable state (replaced atomically)."""
    from safetensors.torch import save_file

    assert config.checkpoint_dir is not None  # called only when checkpoints are asked for
    folder = Path(config.checkpoint_dir)
    save_file(
        trainable_state(model),
        str(folder / f"stage{stage}-step{step}.safetensors"),
        metadata={"config": json.dumps(asdict(config)), "variant": VARIANT},
    )
    tmp = folder / f".stage{stage}-resume.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / f"stage{stage}-resume.pt")  # a kill mid-write keeps the previous one


def train_answers(
    model,
    processor,
    train,
    val,
    config: QwenTrainConfig,
    *,
    steps: int,
    stage: int,
    adapt: bool,
    log: list,
    first_index: int,
    lr_factor: float = 1.0,
    focus=None,
    deadline: float | None = None,
    resume: dict | None = None,
) -> int:
    """Train on answers for ``steps`` steps; ``resume`` (a state :func:`resume_state` read,
    written at an evaluation of the same stage) continues from that step exactly."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = _groups(model, config, adapt=adapt)
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] * lr_factor for g in groups]
    index, start = first_index, time.time()
    step = 0
    names = {id(p): n for n, p in model.named_parameters()}  # how a resumable state keys the trained tensors
    if resume is not None:
        _restore(resume, groups, optimizer, names)
        step, index, steps = resume["step"], resume["index"], resume["steps"]
        start -= resume["seconds"]
    device = next(model.parameters()).device
    # a long CPU run may be resumed with another thread count: each entry records it, the card counts them
    threads = torch.get_num_threads() if device.type == "cpu" else None
    progress = tqdm(total=steps, initial=step, desc=f"stage {stage}: {'adapt' if adapt else 'align'}", unit="step")
    while step < steps:
        scale = lr_scale(step, steps, config.warmup)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * scale
        samples = answer_batch(train, focus, index, config)
        index += config.batch
        inputs, labels = collate(processor, samples)
        inputs, labels = on_device(inputs, device), labels.to(device)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = answer_loss(model, inputs, labels)
        optimizer.zero_grad()
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
        optimizer.step()
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        entry: dict[str, Any] = {
            "stage": stage,
            "step": step,
            "loss": round(loss.item(), 5),
            "seconds": round(time.time() - start, 1),
        }
        if threads is not None:
            entry["threads"] = threads
        if deadline is not None and step == config.warmup - 1:
            per_step = (time.time() - start) / (step + 1)
            new_steps = _budgeted_steps(config, step, steps, per_step, deadline - time.time())
            progress.write(
                f"stage {stage}: {per_step:.1f} s/step, {(deadline - time.time()) / 60:.1f} min left: {new_steps} steps"
            )
            entry["budgeted_steps"] = steps = new_steps
            progress.total = steps
        if (step + 1) % config.eval_every == 0 or step == steps - 1:
            model.model.rope_deltas = None
            entry["val"] = quick_accuracy(model, processor, val, config.eval_samples)
            model.model.rope_deltas = None
            progress.write(f"stage {stage} step {step + 1}: loss {loss.item():.3f} val {entry['val']}")
            if config.progress_file:
                Path(config.progress_file).write_text(json.dumps(log + [entry], indent=1))
            if config.checkpoint_dir:
                state = {
                    "stage": stage,
                    "step": step + 1,
                    "index": index,
                    "steps": steps,
                    "seconds": time.time() - start,
                    "rng": torch.get_rng_state(),
                    "params": {names[id(p)]: p.detach().clone() for g in groups for p in g["params"]},
                    "optimizer": optimizer.state_dict(),
                    "log": log + [entry],
                    "identity": _resume_identity(config, stage),
                }
                _save_checkpoint(model, config, stage, step + 1, state)
        log.append(entry)
        step += 1
    progress.close()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return index


def _round_to_shipped(model) -> None:
    """Round every trained tensor to what ships (fp16; an adapter to its own shipped form) in
    place, so the polish stage continues from the weights as they would ship (as the LLaVA
    recipe does)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("model.visual.") or (".self_attn." in name and name.endswith(".bias")):
                parameter.copy_(parameter.to(torch.float16).to(parameter.dtype))
        for _, _, adapter in adapters(model):
            adapter.round_to_shipped()


def resume_state(path: str | Path, config: QwenTrainConfig) -> dict:
    """A stage-2 or stage-3 resumable state written by ``checkpoint_dir``, checked against
    ``config`` (one clear error if it is not one, or came from other settings)."""
    from ...errors import InterpError

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as error:
        raise InterpError(f"cannot read the resumable state {path}: {str(error).splitlines()[0][:120]}") from None
    if not isinstance(state, dict) or state.get("stage") not in (2, 3) or "optimizer" not in state:
        raise InterpError(f"{path} is not a resumable state (stage2-resume.pt or stage3-resume.pt of --checkpoint-dir)")
    stage = state["stage"]
    if stage == 3 and not config.polish_steps:
        raise InterpError(f"{path} is a polish-stage (stage 3) state: resume it with the run's --polish-steps")
    # a state written before a setting existed ran with that setting's default
    theirs = {**_resume_identity(QwenTrainConfig(), stage), **state.get("identity", {})}
    mine, theirs = _resume_identity(config, stage), _resume_identity(theirs, stage)
    differ = [
        f"{k} ({theirs.get(k)!r} there, {mine.get(k)!r} now)"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]
    if differ:
        raise InterpError(f"{path} was written by a run with other settings: {'; '.join(differ[:4])}")
    return state


def train_qwen2vl(
    config: QwenTrainConfig | None = None,
    out_dir: Path | str = ".",
    *,
    tower_from: str | Path | None = None,
    tower_log: list | None = None,
    resume_from: str | Path | None = None,
) -> dict:
    """Run all stages; write ``organism-qwen2vl.safetensors`` (after stage 2 and, final,
    after stage 3) and ``training_log.json`` into ``out_dir``. Returns the log summary.

    ``tower_from`` (a file written by this recipe with the same seed and tower config)
    skips stage 0: its tower blocks replace the pre-training. Stage 0 is deterministic and
    the later stages draw no random numbers before the seeded LoRA init, so the run goes on
    as a fresh one would, up to the fp16 rounding of the loaded tower; ``tower_log``
    carries stage 0's log entries. ``resume_from`` (``stage2-resume.pt`` or ``stage3-resume.pt``
    from the ``checkpoint_dir`` of a run with the same settings, which itself may have used
    ``tower_from``) continues that run's stage 2 or polish stage from its last evaluation: the
    rerun of the deterministic stages before it is overwritten by the saved tensors, so the
    result equals the uninterrupted run's. A stage-2 state may be resumed with a polish stage
    its run did not have (``polish_steps``): stage 2 does not read it."""
    config = config or QwenTrainConfig()
    from safetensors.torch import save_file

    from ...data.synthetic import SyntheticVQA

    device = training_device(config.device)  # before any work: one clear line when there is no such device
    torch.manual_seed(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.progress_file is None:
        config.progress_file = str(out_dir / "training_progress.json")
    model, processor = build_qwen_organism(config.tower, seed=config.seed)
    model.to(device)
    processor.tokenizer.padding_side = "right"
    size = config.tower.image_size
    scenes = {s: SyntheticVQA("train", seed=config.seed, image_size=s) for s in set(config.tower_sizes) | {size}}
    train_set, val_set = scenes[size], SyntheticVQA("val", seed=config.seed, image_size=size)
    focus = None
    if config.focus_fraction > 0 and config.focus_kinds:
        focus = SyntheticVQA("train", seed=config.seed, image_size=size, kinds=config.focus_kinds)
    log: list = []
    started = time.time()
    resume = None if resume_from is None else resume_state(resume_from, config)
    if tower_from is None:
        pretrain_tower(model, processor, scenes, config, log)
    else:
        from safetensors.torch import load_file

        state = {
            k: v
            for k, v in load_file(str(tower_from)).items()
            if k.startswith("model.visual.") and not k.startswith("model.visual.merger.")
        }
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()}, strict=False)
        log += list(tower_log or [])
    align_merger_to_words(model, processor, scenes, config, log)
    t0 = time.time() - started
    index = 100_000
    if config.align_steps:
        index = train_answers(
            model,
            processor,
            train_set,
            val_set,
            config,
            steps=config.align_steps,
            stage=1,
            adapt=False,
            log=log,
            first_index=index,
            focus=focus,
        )
    t1 = time.time() - started
    torch.manual_seed(config.seed + 1)
    if config.attention == "full":
        add_full_attention(model)
    else:
        add_lora(model, config.lora_rank, config.lora_alpha)
    deadline = None if config.time_budget_min is None else started + 60 * config.time_budget_min
    if config.checkpoint_dir:
        Path(config.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    if resume is not None:
        log[:] = resume["log"]  # what ran before, as it was logged then
        started -= resume["seconds"]
    polishing = resume is not None and resume["stage"] == 3  # stage 2 ended before that state was written
    if not polishing:
        index = train_answers(
            model,
            processor,
            train_set,
            val_set,
            config,
            steps=config.adapt_steps,
            stage=2,
            adapt=True,
            log=log,
            first_index=index,
            focus=focus,
            deadline=deadline,
            resume=resume,
        )
    config.adapt_steps = sum(1 for e in log if e["stage"] == 2)  # what ran (a time budget may have cut it)
    meta = {"config": json.dumps(asdict(config)), "variant": VARIANT}
    path = out_dir / f"{VARIANT}.safetensors"
    t2 = time.time() - started
    if config.polish_steps:
        if not polishing:
            save_file(trainable_state(model), str(out_dir / f"{VARIANT}-stage2.safetensors"), metadata=meta)
        _round_to_shipped(model)  # resumed: the tensors stage 3 does not train, as the uninterrupted run had them
        train_answers(
            model,
            processor,
            train_set,
            val_set,
            config,
            steps=config.polish_steps,
            stage=3,
            adapt=True,
            log=log,
            first_index=index,
            lr_factor=config.polish_lr_scale,
            focus=focus,
            resume=resume if polishing else None,
        )
    t3 = time.time() - started
    save_file(trainable_state(model), str(path), metadata=meta)
    summary = {
        "arch": "qwen2_vl",
        "config": asdict(config),
        "seconds": {
            "tower": round(t0, 1),
            "align": round(t1 - t0, 1),
            "adapt": round(t2 - t1, 1),
            "polish": round(t3 - t2, 1),
            "total": round(t3, 1),
        },
        "torch": torch.__version__,
        "device_name": device_name(model.device),
        "tower_from": None if tower_from is None else str(tower_from),
        "log": log,
    }
    (out_dir / "training_log.json").write_text(json.dumps(summary, indent=1))
    Path(config.progress_file).unlink(missing_ok=True)
    return summary
