"""An offline byte-level tokenizer for tiny random test models.

Byte-level BPE with no merges: every UTF-8 byte is a token, so any text
round-trips, plus the family's special tokens (image placeholders, separators).
Built from code, never downloaded.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BASE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def chat_template(image_placeholder: str, *, bos: str = "") -> str:
    """A minimal chat template that puts ``image_placeholder`` where each image goes."""
    return (
        bos + "{% for message in messages %}<|{{ message['role'] }}|>\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder + "{% else %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )


def byte_tokenizer(special_tokens=(), *, template: str | None = None, **named_specials) -> PreTrainedTokenizerFast:
    """A tokenizer with 256 byte tokens, the base specials, then ``special_tokens``.

    ``named_specials`` become tokenizer attributes (e.g. ``image_token="<image>"``),
    which several HF processors read off the tokenizer.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(BASE_SPECIALS)}
    for token in alphabet:
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    extra = [t for t in dict.fromkeys([*special_tokens, *named_specials.values()]) if t not in vocab]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=named_specials or None,
    )
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer
