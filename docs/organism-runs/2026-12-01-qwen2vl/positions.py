"""Where a Qwen organism's image tokens are, as its tower and its LM can see it (the numbers in README.md).

    python docs/organism-runs/2026-12-01-qwen2vl/positions.py WEIGHTS.safetensors

1. Spatial accuracy on the test split by axis ("left of" / "above"), greedy.
2. Does the tower's merged feature (what the merger reads) say where the token is? A ridge
   classifier (closed form, standardised features) of each token's row and column, fit on the
   tokens of 320 training scenes and scored on 160 test scenes (96 px: a 6x6 grid, chance 1/6).
3. The M-RoPE angle an image row or column can give the LM: the largest rotary frequency of its
   section times the grid's extent (from the model's config).
"""

from __future__ import annotations

import sys

import torch

from interp import load
from interp.data.synthetic import SyntheticVQA, is_correct
from interp.models.organism import organism_dir
from interp.models.organism.evaluate import generate_answers
from interp.models.organism.train_qwen2vl import _grids, image_inputs, merged_features


def spatial_by_axis(model, processor) -> dict:
    test = SyntheticVQA("test", seed=0, image_size=96)
    samples = [s for s in (test[i] for i in range(len(test))) if s.kind == "spatial"]
    answers = generate_answers(model, processor, [s.image for s in samples], [s.question for s in samples])
    out = {}
    for relation in ("left of", "above"):
        right = [is_correct(a, s.answer) for a, s in zip(answers, samples) if relation in s.question]
        out[relation] = {"accuracy": round(sum(right) / len(right), 3), "n": len(right)}
    return out


def token_features(model, processor, dataset, n: int):
    features, rows, cols = [], [], []
    with torch.no_grad():
        for start in range(0, n, 32):
            inputs = image_inputs(processor, [dataset[j].image for j in range(start, min(n, start + 32))])
            features.append(merged_features(model.model.visual, inputs).double())
            for r, c in _grids(inputs):
                grid_r, grid_c = torch.meshgrid(torch.arange(r), torch.arange(c), indexing="ij")
                rows.append(grid_r.flatten())
                cols.append(grid_c.flatten())
    return torch.cat(features), torch.cat(rows), torch.cat(cols)


def ridge_accuracy(x_fit, y_fit, x_score, y_score, alpha: float = 10.0) -> float:
    # closed-form ridge on one-hot targets (scikit-learn's RidgeClassifier; not installed here)
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    def design(x):
        return torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    a, b = design(x_fit), design(x_score)
    targets = torch.nn.functional.one_hot(y_fit, int(max(y_fit.max(), y_score.max())) + 1).double()
    w = torch.linalg.solve(a.T @ a + alpha * torch.eye(a.shape[1], dtype=a.dtype), a.T @ targets)
    return float(((b @ w).argmax(1) == y_score).double().mean())


def rope_extent(config, grid: int) -> dict:
    text = config.text_config if hasattr(config, "text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rope = text.rope_parameters
    t, h, _ = rope["mrope_section"]
    inv = [rope["rope_theta"] ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    return {"row_radians": round(inv[t] * (grid - 1), 4), "column_radians": round(inv[t + h] * (grid - 1), 5)}


def main(weights: str) -> None:
    vlm = load(str(organism_dir("organism-qwen2vl", weights=weights)))
    model, processor = vlm.model, vlm.processor
    print("spatial by axis:", spatial_by_axis(model, processor))
    fit = token_features(model, processor, SyntheticVQA("train", seed=0, image_size=96), 320)
    score = token_features(model, processor, SyntheticVQA("test", seed=0, image_size=96), 160)
    for name, k in (("row", 1), ("column", 2)):
        print(f"probe {name}: {ridge_accuracy(fit[0], fit[k], score[0], score[k]):.3f} (chance {1 / 6:.3f})")
    print("M-RoPE extent over an 8-token side:", rope_extent(model.config, 8))


if __name__ == "__main__":
    main(sys.argv[1])
