"""The analyses' choices and defaults, in one light module: the code and the CLI's options
both read them from here (the CLI without importing torch)."""

#: the paper's masking factor: image-token hidden states x 1e-9 ("~0"; bfloat16 and float32 hold it,
#: in float16 it underflows to exactly 0, which reports state)
PAPER_MASK_SCALE = 1e-9

#: the masking sweep's default conditions (see :mod:`interp.analysis.sweep`)
SWEEP_VARIANTS = ("single", "window", "cumulative", "knockout_last", "knockout_question")
#: every condition the sweep knows: the defaults and the all-text knockout (every text position
#: after the image blocked from the image; the localisation benchmark runs it)
KNOWN_VARIANTS = SWEEP_VARIANTS + ("knockout_text",)
#: layers a masking window / knockout span covers (capped at the last layer)
DEFAULT_WINDOW = 3
#: how a condition is scored: teacher-forced exact greedy match, or generation + the item's metric
SCORINGS = ("teacher", "generate")
#: execution: the fast path where it applies, always fast (error if not), or full passes
MODES = ("auto", "fast", "naive")
#: ``interp reproduce``'s clean-pass batch size when the model is on an accelerator (on the CPU: 1)
GPU_BATCH_SIZE = 8
