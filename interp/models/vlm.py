"""The loaded model: an nnsight wrapper, its processor and its family adapter, together."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Any, cast
from collections.abc import Sequence

import torch

from ..errors import HookNameError, InterpError
from ..hooks import all_hook_names, check_layer, parse_hook_name, read_only
from ..inputs import Prepared, from_inputs, prepare
from ..interventions.runtime import SiteAccess, envoy_at
from .adapters.base import FamilyAdapter

_ATTENTION_OP = re.compile(r"^attention_interface_(\d+)$")


def find_attention_op(attn_envoy) -> str:
    """The name of the attention-function call in an attention module's source.

    HF attention modules call ``attention_interface(self, q, k, v, mask, ...)``;
    nnsight numbers each binding and call of that name. The call is the last one.
    """
    calls = {name: match for name in attn_envoy.source.names if (match := _ATTENTION_OP.match(name))}
    if not calls:
        raise InterpError(
            f"cannot find the attention function call in {type(attn_envoy._module).__name__}; "
            "attention hooks need a transformers attention module that calls `attention_interface`"
        )
    return max(calls, key=lambda name: int(calls[name].group(1)))


#: the synthetic scenes' side for a dynamic-resolution tower (Qwen2-VL's): LLaVA-1.5's input size,
#: so the benchmark's images are the same size on every real model
DYNAMIC_SCENE_SIZE = 336


class VLM:
    """One loaded vision-language model.

    Made by :func:`interp.load`. Its ``nnsight`` attribute is the
    :class:`nnsight.TransformersModel` (use it for your own traces), ``processor`` the
    HF processor, ``adapter`` the family adapter.

    Args:
        nnsight_model: the :class:`nnsight.TransformersModel` wrapping the HF model.
        processor: the HF processor.
        adapter: the family adapter (where the layers, attention and image tokens are).
        name: a display name; default: the config's ``_name_or_path``, else the family's.
        remote: the default of every run's ``remote`` (see :func:`interp.load`).

    Raises:
        InterpError: the attention modules do not call ``attention_interface`` (the
            attention hooks need it).

    Example:
        ```python
        vlm = interp.load("tiny:llava")
        sample = vlm.prepare("cat.png", "What colour is the cat?")
        result = vlm.run(sample, interp.RecordAttention(layers="all"), generate=True)
        with vlm.trace(sample):
            resid = vlm.read("blocks.1.hook_resid_post").save()
        ```
    """

    def __init__(self, nnsight_model, processor, adapter: FamilyAdapter, *, name: str = "", remote: bool | str = False):
        self.nnsight = nnsight_model
        self.processor = processor
        self.adapter = adapter
        self.name = name or getattr(self.config, "_name_or_path", "") or adapter.name
        self.remote = remote
        #: passes run so far, by kind (clean_forward, full_forward, generate, restart_forward,
        #: layer_forwards, layer_token_rows): analyses report the difference over their run
        self.counts: Counter = Counter()
        layers = envoy_at(self.nnsight, adapter.layers_path)
        self.access = SiteAccess(
            adapter.site_paths(),
            find_attention_op(getattr(layers[0], adapter.attn_name)),
            adapter.head_dim(self.config),
        )
        # nnsight instruments a module's source on first access; doing it now for every
        # attention module means a trace that reads q_proj before the attention call of a
        # layer still finds that call instrumented (else: out of order)
        for index in range(len(layers)):
            _ = getattr(layers[index], adapter.attn_name).source

    # -- the model -----------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The underlying HF model (``...ForConditionalGeneration``)."""
        return self.nnsight._module

    @property
    def config(self):
        return self.model.config

    @property
    def weights_id(self) -> str | None:
        """What tells these weights from others under the same name, for a run's identity: the
        organism's model directory (named by the weights file's digest) or a hub checkpoint's
        revision; None when nothing does (a local directory, a model built in memory)."""
        from .organism import weights_id

        source = str(getattr(self.config, "_name_or_path", "") or "")
        if source and (organism := weights_id(source)):
            return organism
        commit = getattr(self.config, "_commit_hash", None)
        return f"{source}@{commit}" if commit else None

    @property
    def scene_size(self) -> int:
        """Side in pixels of the synthetic benchmark's scenes for this model, one rule for every
        command: the tower's fixed input size; for a dynamic-resolution tower the organisms'
        training size where this is an organism, else :data:`DYNAMIC_SCENE_SIZE`."""
        from ..data.synthetic import DEFAULT_IMAGE_SIZE
        from .organism import weights_id

        fixed = getattr(getattr(self.config, "vision_config", None), "image_size", None)
        if isinstance(fixed, int) and fixed > 0:
            return fixed
        if weights_id(str(getattr(self.config, "_name_or_path", "") or "")):
            return DEFAULT_IMAGE_SIZE
        return DYNAMIC_SCENE_SIZE

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers(self.config)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover - a model always has parameters
            return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return self.adapter.image_token_id(self.config)

    @property
    def attn_implementation(self) -> str:
        implementation = getattr(self.adapter.text_config(self.config), "_attn_implementation", None)
        return cast(str, implementation or getattr(self.config, "_attn_implementation", "eager"))

    def layer(self, index: int):
        """The nnsight envoy of decoder layer ``index`` (range-checked)."""
        return envoy_at(self.nnsight, self.adapter.layers_path)[check_layer(index, self.n_layers)]

    @property
    def layers(self):
        return envoy_at(self.nnsight, self.adapter.layers_path)

    @property
    def n_vision_layers(self) -> int:
        """Blocks in the vision tower (0 when the family's path is absent)."""
        return self.adapter.n_vision_layers(self.model)

    def hook_names(self) -> list[str]:
        """Every hook name of this model, in forward order (see :mod:`interp.hooks`).

        Returns:
            The names, vision tower and projector included.
        """
        return all_hook_names(self.n_layers, self.n_vision_layers)

    def check_sites(self, bound) -> None:
        """One clear line for a bound intervention's site this model does not have."""
        n_vision = None
        for item in bound:
            for layer, site in item.sites():
                if site == "vision_resid_post":
                    n_vision = self.n_vision_layers if n_vision is None else n_vision
                    if n_vision == 0:
                        raise HookNameError(
                            f"{self.adapter.name} has no vision tower at {self.adapter.vision_layers_path}"
                        )
                    check_layer(layer, n_vision, "vision-tower blocks")
                elif site == "projected":
                    try:
                        self.adapter.resolve(self.model, "projector")
                    except AttributeError:
                        raise HookNameError(
                            f"{self.adapter.name} has no projector at {self.adapter.projector_path}"
                        ) from None

    # -- inputs --------------------------------------------------------------

    def prepare(self, images: Any, question: str, *, prompt: str | None = None) -> Prepared:
        """Chat-templated model inputs for ``question`` about ``images``, with image geometry.

        Args:
            images: one image or a list: a file path, a PIL image or an HxWx3 array.
            question: the question (a non-empty string).
            prompt: the full prompt text (image placeholders included), used instead of
                the chat template.

        Returns:
            The :class:`~interp.inputs.Prepared` prompt.

        Raises:
            InputError: no image, an unreadable image, an empty question, inputs the
                processor rejects, or a prompt longer than the model takes.
        """
        return prepare(
            self.processor,
            self.adapter,
            self.config,
            images,
            question,
            prompt=prompt,
            dtype=self.dtype,
            device=self.device if not self.remote else None,
        )

    def from_inputs(self, inputs: dict) -> Prepared:
        """Wrap ready-made processor outputs (validated; image tokens located).

        Args:
            inputs: the processor's output (a dict of tensors).

        Returns:
            The :class:`~interp.inputs.Prepared` prompt.

        Raises:
            InputError: inputs missing, inconsistent, or without image tokens.
        """
        return from_inputs(dict(inputs), self.adapter, self.config)

    def decode(self, ids: torch.Tensor) -> list[str]:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # -- running -------------------------------------------------------------

    def trace_kwargs(self, remote: bool | str | None) -> dict:
        if remote is None:
            remote = self.remote
        if not remote:
            return {}
        if remote is True:
            from ..validate import ndif_api_key

            ndif_api_key()
        _register_for_remote()
        return {"remote": remote}

    def trace(self, prepared: Prepared | dict, *, remote: bool | str | None = None, **kwargs):
        """``with vlm.trace(prepared):`` — an nnsight trace over the prepared inputs.

        Inside it, :meth:`read` and :meth:`write` reach hook points by name, in forward order.

        Args:
            prepared: the prompt (:meth:`prepare`), or a dict of model inputs.
            remote: as in :meth:`run`.
            **kwargs: passed to nnsight's ``trace``.

        Returns:
            The nnsight tracing context.

        Raises:
            InputError: an input the forward needs is missing.
        """
        inputs = prepared.inputs if isinstance(prepared, Prepared) else prepared
        self.adapter.check_inputs(inputs)
        return self.nnsight.trace(dict(inputs), **self.trace_kwargs(remote), **kwargs)

    def run(
        self,
        prepared: Prepared,
        *interventions,
        generate: bool = False,
        max_new_tokens: int = 16,
        remote: bool | str | None = None,
        **generate_kwargs,
    ):
        """Run interventions (or a Plan) in one pass; see :class:`interp.interventions.Plan`.

        Args:
            prepared: the prompt (:meth:`prepare`).
            *interventions: interventions, lists of them or plans, applied in order.
            generate: generate greedily instead of one prefill forward.
            max_new_tokens: tokens to generate (1 or more).
            remote: run on NDIF (True) or nnsight's local simulation of it (``"local"``);
                None: the model's default.
            **generate_kwargs: passed to the model's ``generate``.

        Returns:
            The run's :class:`~interp.engine.plan.RunResult`: recordings, logits, and when
                generating the new tokens and their text.

        Raises:
            InputError: ``prepared`` is not a Prepared, or a bad ``max_new_tokens``.
            InterpError: an intervention does not fit the model or the prompt.
        """
        from .. import validate
        from ..engine.plan import Plan

        prepared = validate.prepared(prepared)
        if generate:
            validate.max_new_tokens(max_new_tokens)
        return Plan(*interventions).run(
            self,
            prepared,
            generate=generate,
            max_new_tokens=max_new_tokens,
            remote=remote,
            **generate_kwargs,
        )

    def read(self, hook_name: str):
        """Inside ``with vlm.trace(...)``: the value at a TransformerLens-style hook name.

        ``attn.hook_pattern`` is computed from the attention call's queries and keys
        (equal to HF eager attention probabilities). Read hook points in forward order
        (``vlm.hook_names()`` lists them in that order).

        Args:
            hook_name: a hook name (see :func:`interp.all_hook_names`).

        Returns:
            The value there (an nnsight proxy: ``.save()`` it to keep it after the trace).

        Raises:
            HookNameError: an unknown hook name.
            LayerIndexError: its layer is out of range.
            InterpError: the trace has already run past that hook point.
        """
        from ..interventions.runtime import attention_probs

        point = parse_hook_name(hook_name, self.n_layers, self.n_vision_layers)
        with _named_order_errors(point.name):
            value = self.access.read(self.nnsight, point.layer, point.site)
        return attention_probs(value) if point.site == "attn_pattern" else value

    def write(self, hook_name: str, value) -> None:
        """Inside a trace: replace the value at a hook name (not the read-only ones:
        ``attn.hook_pattern``, ``attn.hook_result``, ``hook_resid_mid``).

        Args:
            hook_name: a hook name (see :func:`interp.all_hook_names`).
            value: the replacement, shaped like the value there.

        Raises:
            HookNameError: an unknown hook name.
            LayerIndexError: its layer is out of range.
            InterpError: a read-only hook point, or the trace has already run past it.
        """
        point = parse_hook_name(hook_name, self.n_layers, self.n_vision_layers)
        if point.site == "attn_pattern":
            raise InterpError("attn.hook_pattern is read-only; use AttentionKnockout to change attention")
        if read_only(point.site):
            raise InterpError(f"{point.name} is read-only")
        with _named_order_errors(point.name):
            self.access.write(self.nnsight, point.layer, point.site, value)

    def run_with_cache(
        self,
        prepared: Prepared,
        names_filter=None,
        *,
        remote: bool | str | None = None,
        remove_batch_dim: bool = False,
        use_attn_result: bool = False,
    ):
        """TransformerLens' ``run_with_cache``: one clean pass, every selected hook point cached.

        Args:
            prepared: the prompt (``vlm.prepare``).
            names_filter: None (every hook), a name, a list of names, or ``fn(name) -> bool``.
            remote: as in :meth:`run`.
            remove_batch_dim: drop the batch axis of one prompt.
            use_attn_result: with None or a function as the filter, also cache each head's
                ``attn.hook_result`` (``[batch, seq, heads, d_model]``: on a 7B model ~0.1 GB a
                layer per 1,000 tokens, as TransformerLens leaves it out unless asked).

        Returns:
            The pair ``(logits, cache)``: the logits at every position ``[batch, seq, vocab]``
                and an :class:`~interp.cache.ActivationCache`.

        Raises:
            HookNameError: a name in ``names_filter`` is unknown, or it matches none.
        """
        from ..engine.hooked import run_with_cache

        return run_with_cache(
            self,
            prepared,
            names_filter,
            remote=remote,
            remove_batch_dim=remove_batch_dim,
            use_attn_result=use_attn_result,
        )

    def run_with_hooks(self, prepared: Prepared, fwd_hooks=(), *, remote: bool | str | None = None):
        """TransformerLens' ``run_with_hooks``: one pass with hook functions at hook points.

        Args:
            prepared: the prompt (``vlm.prepare``).
            fwd_hooks: ``(name or filter, fn)`` pairs; ``fn(activation, hook)`` runs at each
                matching hook point (in the order given) and a returned tensor replaces the
                activation (``None`` leaves it).
            remote: as in :meth:`run`.

        Returns:
            The logits at every position, ``[batch, seq, vocab]``.

        Raises:
            InterpError: an entry is not a pair, a hook function is not callable, or it
                returns a replacement of the wrong shape (or for a read-only hook point).
            HookNameError: a name is unknown, or a filter matches none.

        Example:
            ```python
            def zero_image(activation, hook):
                activation = activation.clone()
                activation[:, sample.image_positions] = 0
                return activation

            logits = vlm.run_with_hooks(sample, fwd_hooks=[("blocks.2.hook_resid_pre", zero_image)])
            ```
        """
        from ..engine.hooked import run_with_hooks

        return run_with_hooks(self, prepared, fwd_hooks, remote=remote)

    def __repr__(self) -> str:
        return (
            f"VLM({self.name!r}, family={self.adapter.name}, layers={self.n_layers}, attn={self.attn_implementation})"
        )


@contextlib.contextmanager
def _named_order_errors(name: str):
    """nnsight's out-of-order error names an internal module path; say the hook name."""
    try:
        yield
    except Exception as error:
        if type(error).__name__ == "OutOfOrderError":
            raise InterpError(
                f"{name} was read after the model had already run past it: inside one trace, read "
                "hook points in forward order (vlm.hook_names() lists them in that order)"
            ) from None
        raise


def _register_for_remote() -> None:
    """Ship this package's code by value with remote requests (NDIF does not have it)."""
    import nnsight

    import interp

    nnsight.register(interp)


__all__: Sequence[str] = ["VLM", "find_attention_op"]
