"""Memory the engine may use, and what its held tensors take: the arithmetic in one place.

The fast sweep's generation scoring keeps every decoded condition's prompt keys and values
(one copy per condition and layer) until it decodes them; :func:`decode_batch_for` sizes
the slices of conditions decoded together so that what they hold fits a share of the free
memory of every device the decoder layers live on.
"""

from __future__ import annotations

import os
from collections import Counter

import torch

#: the share of free memory the held keys/values of one decoding slice may take
DECODE_MEMORY_SHARE = 0.5
#: copies of a slice's keys/values alive at once at worst (the restart's, the decoder's
#: batch while it is assembled, the cache's growth by one token)
KV_COPIES = 2


def free_bytes(device: torch.device) -> int:
    """Bytes free on ``device`` now: the CUDA driver's figure, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def layer_devices(vlm) -> Counter:
    """How many decoder layers live on each device (a device map may spread them)."""
    return Counter(next(layer.parameters()).device for layer in vlm.adapter.resolve(vlm.model, "layers"))


def kv_bytes(vlm, tokens: int, layers: int | None = None) -> int:
    """Bytes of one sequence's keys and values over ``tokens`` tokens in ``layers`` decoder
    layers (default: all) at the model's dtype."""
    per_token = vlm.adapter.kv_bytes_per_token(vlm.config, vlm.dtype)
    return per_token * tokens * (vlm.n_layers if layers is None else layers)


def decode_batch_for(vlm, tokens: int, *, share: float = DECODE_MEMORY_SHARE, free: dict | None = None) -> int:
    """How many conditions may decode together: their keys and values over ``tokens`` tokens
    (prompt and new tokens), :data:`KV_COPIES` times, within ``share`` of each device's free
    memory (``free``: bytes per device, default: measured now); at least 1."""
    fits = []
    for device, layers in layer_devices(vlm).items():
        available = free_bytes(device) if free is None else free[device]
        fits.append(conditions_within(available, kv_bytes(vlm, tokens, layers), share))
    return max(1, min(fits, default=1))


def conditions_within(free: int, per_condition: int, share: float = DECODE_MEMORY_SHARE) -> int:
    """How many conditions' keys/values (``per_condition`` bytes each, :data:`KV_COPIES` times) fit
    ``share`` of ``free`` bytes; at least 1."""
    return max(1, int(share * free) // max(1, KV_COPIES * per_condition))


def resolve_decode_batch(vlm, decode_batch: int | str | None, tokens: int) -> int | None:
    """``decode_batch`` as the sweep uses it: an int as given, None for all conditions at once,
    ``"auto"`` sized by :func:`decode_batch_for`."""
    if decode_batch == "auto":
        return decode_batch_for(vlm, tokens)
    return None if decode_batch is None else int(decode_batch)
