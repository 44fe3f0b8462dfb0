"""``interp organism card --planted``: evaluate the planted-fusion variants and write their card.

Every number in the card is measured here on the test split (accuracy, blind accuracy, the
text->image attention mass per layer, the knockouts) or read from the variants' training logs.
"""

from __future__ import annotations

import json
from pathlib import Path

#: the ground-truth bars a planted organism must meet (issue: planted fusion layers)
BARS = {
    "accuracy": 0.90,  # test accuracy at least
    "kind": 0.75,  # every question kind at least
    "blind": 0.5,  # blind accuracy at most
    "outside_mass": 1e-3,  # mean text->image mass at every layer outside S at most
    "outside_knockout": 0.01,  # |accuracy change| with text->image cut outside S at most
}


def bars_met(result: dict) -> dict[str, bool]:
    """Which of :data:`BARS` one variant's evaluation meets (the inside-S knockout: at most the blind
    accuracy plus 0.05)."""
    return {
        "accuracy": result["accuracy"] >= BARS["accuracy"],
        "every kind": min(result["per_kind"].values()) >= BARS["kind"],
        "blind": result["blind_accuracy"] <= BARS["blind"],
        "outside-S mass": result["outside_mass_max"] <= BARS["outside_mass"],
        "outside-S knockout": abs(result["knockout_outside_accuracy"] - result["accuracy"]) <= BARS["outside_knockout"],
        "inside-S knockout": result["knockout_inside_accuracy"] <= result["blind_accuracy"] + 0.05,
    }


def mass_figure(results: dict[str, dict], path: Path) -> None:
    """Text->image attention mass per layer, one line per variant, S shaded."""
    from matplotlib.figure import Figure  # pyplot-free: no backend is chosen or switched

    fig = Figure(figsize=(7.5, 3.2))
    axes = fig.subplots()
    for name, result in results.items():
        mass = result["text_image_mass"]
        (line,) = axes.plot(range(len(mass)), [max(m, 1e-7) for m in mass], "o-", ms=3, label=name)
        for layer in result["planted_layers"]:
            axes.axvspan(layer - 0.4, layer + 0.4, color=line.get_color(), alpha=0.12)
    axes.axhline(BARS["outside_mass"], color="grey", ls="--", lw=0.8, label="bar outside S (1e-3)")
    axes.set(yscale="log", xlabel="decoder layer", ylabel="mean text->image attention mass")
    axes.set_title("where text reads the image (shaded: the planted layers S)")
    axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _row(name: str, result: dict, log: dict | None, size: int) -> list[str]:
    met = bars_met(result)
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in result["per_kind"].items())
    lines = [
        f"## {name}",
        "",
        f"- planted layers S: {result['planted_layers']}",
        f"- test accuracy {result['accuracy']:.3f} (n={result['n']}); per kind: {kinds}",
        f"- blind accuracy (blank image) {result['blind_accuracy']:.3f}",
        f"- text->image attention mass outside S: at most {result['outside_mass_max']:.2e} "
        f"(mean over text queries after the image and heads, {result['mass_samples']} prompts)",
        f"- text->image cut at every layer outside S: accuracy {result['knockout_outside_accuracy']:.3f}; "
        f"inside S: {result['knockout_inside_accuracy']:.3f}",
    ]
    for window, value in result.get("knockout_window_accuracy", {}).items():
        lines.append(f"- text->image cut in window {window} alone: accuracy {value:.3f}")
    lines.append("- bars: " + ", ".join(f"{bar} {'met' if ok else 'NOT met'}" for bar, ok in met.items()))
    lines.append(f"- shipped: `{name}.safetensors`, {size / 2**20:.1f} MB (LoRA factors, fp16)")
    if log is not None:
        config = log["config"]
        lines.append(
            f"- trained in {log['seconds'] / 60:.0f} min on {log['device_name']} (torch {log['torch']}): "
            f"`interp organism train --planted {name} --seed {config['seed']} --block-steps "
            f"{config['block_steps']} --release-steps {config['release_steps']} --lora-rank {config['rank']}`"
        )
    return lines + [""]


def write_planted_card(
    results: dict[str, dict], logs: dict[str, dict | None], weights: dict[str, Path], out: Path
) -> Path:
    """Write ``MODEL_CARD.md`` and ``text_image_mass.png`` into ``out``; returns the card's path.

    Args:
        results: per variant, ``interp organism eval --json`` of the test split (with its verification).
        logs: per variant, its ``training_log.json`` (None when unknown).
        weights: per variant, its shipped weights file.
        out: the card's directory.

    Returns:
        The card's path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mass_figure(results, out / "text_image_mass.png")
    lines = [
        "# Planted-fusion organisms",
        "",
        "Variants of the LLaVA organism whose text positions read the image tokens only at known decoder "
        "layers S: each is the shipped `organism` plus low-rank changes (rank-r LoRA factors) to every "
        "layer's attention q/k/v/o, merged at load time into a plain HF checkpoint (`planted_layers` in "
        "its `config.json` and in the weights' metadata). Trained in two phases from the shipped organism: "
        "text->image attention cut outside S while learning, then released with a penalty on the attention "
        "mass text queries put on image keys outside S (`interp/models/organism/planted.py`).",
        "",
        "Measured by `interp organism card --planted` on the synthetic test split; `interp organism eval "
        "--variant NAME --json` gives the same fields (`planted_layers`, `text_image_mass`, the knockouts).",
        "",
        "![text->image attention mass per layer](text_image_mass.png)",
        "",
    ]
    for name, result in results.items():
        lines += _row(name, result, logs.get(name), Path(weights[name]).stat().st_size)
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (out / "test_results.json").write_text(json.dumps(results, indent=1))
    return path
