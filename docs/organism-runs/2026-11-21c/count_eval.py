"""Diagnostic: counting accuracy of an organism weights file, with a confusion table."""
import sys, collections, torch
from safetensors.torch import load_file
from interp.models.organism.build import build_organism, apply_trained_state, TowerSpec
from interp.models.organism.evaluate import generate_answers
from interp.data.synthetic import SyntheticVQA, is_correct, normalize_answer
torch.set_num_threads(1)
path, n = sys.argv[1], int(sys.argv[2])
model, processor = build_organism(TowerSpec())
apply_trained_state(model, load_file(path))
ds = SyntheticVQA("test", seed=0, kinds=("counting",), length=n)
samples = list(ds)
preds = generate_answers(model, processor, [s.image for s in samples], [s.question for s in samples])
conf = collections.Counter()
by_q = collections.Counter(); tot_q = collections.Counter()
for s, p in zip(samples, preds):
    conf[(s.answer, normalize_answer(p).split()[0] if p.strip() else "")] += 1
    q = "shape" if "objects" not in s.question else "colour"
    tot_q[q] += 1; by_q[q] += is_correct(p, s.answer)
print("accuracy", sum(is_correct(p, s.answer) for s, p in zip(samples, preds)) / n)
print({q: round(by_q[q] / tot_q[q], 3) for q in tot_q})
for k, v in sorted(conf.items()): print(k, v)
