import torch, interp
from interp import AttentionKnockout
from interp.data.synthetic import SyntheticVQA
from interp.analysis.teacher import answer_token_ids
vlm = interp.load("organism")
data = SyntheticVQA("test", seed=0, image_size=96)
samples = [data[i] for i in range(60) if data[i].kind in ("attribute", "identity")][:16]
tok = vlm.processor.tokenizer
conds = {"none": [], "last@24": [AttentionKnockout("last", "image", [24])],
         "question@24": [AttentionKnockout("question", "image", [24])],
         "both@24": [AttentionKnockout("last", "image", [24]), AttentionKnockout("question", "image", [24])],
         "both@23-25": [AttentionKnockout("last", "image", [23, 24, 25]), AttentionKnockout("question", "image", [23, 24, 25])],
         "text@24": [AttentionKnockout("text", "image", [24])]}
right = {k: 0 for k in conds}
for s in samples:
    p = vlm.prepare(s.image, s.question)
    target = answer_token_ids(tok, p.prompt, s.answer)[0]
    for name, items in conds.items():
        right[name] += int(vlm.run(p, *items).logits[0].argmax()) == target
print({k: f"{v}/{len(samples)}" for k, v in right.items()}, flush=True)
