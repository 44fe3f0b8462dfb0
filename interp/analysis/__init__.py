"""The paper's analyses as functions returning tidy pandas DataFrames.

=========================== ===============================================================
:func:`masking_sweep`        accuracy / answer log-prob with image tokens masked per layer
:func:`attention_maps`       last-token attention over the image at every layer (long table)
:func:`relevant_mass`        attention share on the ground-truth relevant region per layer
:func:`persistent_noise`     irrelevant cells that stay in the top-k across most layers
:func:`layer_distances`      JSD / Hellinger of each layer's image attention to a reference
:func:`early_output`         logit-lens accuracy per layer
:func:`contrastive_eval`     contrastive attention masking vs. the greedy baseline
:func:`patching_sweep`       counterfactual activation patching per layer, site and position group
:func:`image_token_lens`     each image token's residual through the unembedding, scored per cell
:func:`reproduce`            all of the above, figures and a report
=========================== ===============================================================
"""

from .attention import attention_maps, layer_distances, noise_mass, noise_summary, persistent_noise, relevant_mass
from .contrastive import compare_to_baseline, contrastive_eval
from .image_lens import image_token_lens, lens_accuracy
from .items import Item, as_items
from .logit_lens import early_output
from .patching import patching_effects, patching_sweep, run_patched
from .reproduce import ReproduceConfig, reproduce
from .stats import bootstrap_mean_ci, detect_fusion, layer_effects, mcnemar_exact, paired_bootstrap_diff, per_layer_ci
from .sweep import masking_sweep
from .teacher import teacher_force

__all__ = [
    "Item",
    "ReproduceConfig",
    "as_items",
    "attention_maps",
    "bootstrap_mean_ci",
    "compare_to_baseline",
    "contrastive_eval",
    "detect_fusion",
    "early_output",
    "image_token_lens",
    "layer_distances",
    "layer_effects",
    "lens_accuracy",
    "masking_sweep",
    "patching_effects",
    "patching_sweep",
    "run_patched",
    "mcnemar_exact",
    "noise_mass",
    "noise_summary",
    "paired_bootstrap_diff",
    "per_layer_ci",
    "persistent_noise",
    "relevant_mass",
    "reproduce",
    "teacher_force",
]
