import re
from interp.models.organism.train_qwen2vl import QwenTrainConfig, train_qwen2vl

# stage 0 of run1 (identical config and seed): its entries from run1's console log
pattern = re.compile(r"stage 0 step (\d+) \((\d+) px\): loss ([\d.]+) token accuracy ([\d.]+) "
                     r"shape on objects ([\d.]+) centres exact ([\d.]+)")
tower_log = []
for line in open("/work/qwen-run/run1/train.log", errors="replace"):
    m = pattern.search(line)
    if m:
        step, size, loss, acc, shape, centre = m.groups()
        tower_log.append({"stage": 0, "step": int(step) - 1, "image_size": int(size), "loss": float(loss),
                          "patch_accuracy": float(acc), "object_shape_accuracy": float(shape),
                          "centre_exact": float(centre)})
config = QwenTrainConfig(seed=0, time_budget_min=19.5, checkpoint_dir="/work/qwen-run/run2/checkpoints")
print(train_qwen2vl(config, "/work/qwen-run/run2", tower_from="/work/qwen-run/run1/checkpoints/stage2-step300.safetensors",
                    tower_log=tower_log)["seconds"])
