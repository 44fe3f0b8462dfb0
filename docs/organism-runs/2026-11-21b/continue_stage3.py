"""Run stage 3 (``polish``) of ``interp organism train`` on a run whose process ended after
stage 2 (the run of 2026-11-21b was started before stage 3 existed in the recipe).

``polish`` starts from the stage-2 weights rounded to fp16 — exactly what
``organism.safetensors`` holds after stage 2 — with a fresh optimizer and the data stream
continuing at the index stage 2 stopped at, so this is the same computation as the
single-process ``interp organism train``.

    python docs/organism-runs/2026-11-21b/continue_stage3.py RUN_DIR
"""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interp.data.synthetic import SyntheticVQA
from interp.models.organism.build import TowerSpec, apply_trained_state, build_organism, trainable_state
from interp.models.organism.train import TrainConfig, polish

run = Path(sys.argv[1])
summary = json.loads((run / "training_log.json").read_text())
saved = dict(summary["config"])
saved["tower"] = TowerSpec(**saved["tower"])
config = TrainConfig(**{**asdict(TrainConfig()), **saved})  # stage-3 settings: today's defaults
config.progress_file = str(run / "training_progress.json")
torch.manual_seed(config.seed)
model, processor = build_organism(config.tower, seed=config.seed, attn_implementation="sdpa")
processor.tokenizer.padding_side = "right"
apply_trained_state(model, load_file(str(run / "organism.safetensors")))
train_set = SyntheticVQA("train", seed=config.seed, image_size=config.tower.image_size)
val_set = SyntheticVQA("val", seed=config.seed, image_size=config.tower.image_size)
first_index = 100_000 + config.batch * (config.align_steps + config.adapt_steps)
log = summary["log"]
start = time.time()
polish(model, processor, train_set, val_set, config, log, first_index=first_index)
seconds = time.time() - start
meta = {"config": json.dumps(asdict(config)), "variant": "organism"}
save_file(trainable_state(model, with_attention=True), str(run / "organism.safetensors"), metadata=meta)
summary["config"] = asdict(config)
summary["seconds"]["adapt"] = round(summary["seconds"]["adapt"] + seconds, 1)
summary["seconds"]["total"] = round(summary["seconds"]["total"] + seconds, 1)
summary["seconds"]["polish"] = round(seconds, 1)
summary["log"] = log
(run / "training_log.json").write_text(json.dumps(summary, indent=1))
Path(config.progress_file).unlink(missing_ok=True)
print(json.dumps(summary["seconds"]))
