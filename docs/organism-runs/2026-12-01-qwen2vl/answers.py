"""What a Qwen organism's weights file answers to the kinds that need more than one token read.

    python docs/organism-runs/2026-12-01-qwen2vl/answers.py WEIGHTS.safetensors [N]

Among the first N (default 300) questions of the validation split, the counting, existence and
spatial ones are answered greedily; per kind it prints the count, the accuracy and the
(truth, answer) pairs with their counts: a model that answers one word whatever the image shows
it at a glance.
"""

from __future__ import annotations

import collections
import sys

from interp import load
from interp.data.synthetic import SyntheticVQA, is_correct
from interp.models.organism import organism_dir
from interp.models.organism.evaluate import generate_answers

KINDS = ("counting", "existence", "spatial")


def main(weights: str, n: int = 300) -> None:
    vlm = load(str(organism_dir("organism-qwen2vl", weights=weights)))
    dataset = SyntheticVQA("val", seed=0, image_size=96)
    samples = [s for s in (dataset[i] for i in range(min(n, len(dataset)))) if s.kind in KINDS]
    answers = generate_answers(vlm.model, vlm.processor, [s.image for s in samples], [s.question for s in samples])
    for kind in KINDS:
        pairs = [(s.answer, a.strip().lower()) for s, a in zip(samples, answers) if s.kind == kind]
        accuracy = sum(is_correct(a, truth) for truth, a in pairs) / len(pairs)
        print(f"{kind:<10} n={len(pairs):<4} accuracy {accuracy:.3f}  (truth, answer): "
              + ", ".join(f"{t}->{a} x{c}" for (t, a), c in sorted(collections.Counter(pairs).items())))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300)
