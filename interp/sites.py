"""The site registry: every hook point's facts in one table.

A *site* is a kind of place in the forward pass (``resid_pre``, ``attn_pattern``, ...); a
hook name (:mod:`interp.hooks`) is a site at a layer. Everything that needs to know about a
site reads its row here: the hook-name parser and the forward order (:mod:`interp.hooks`),
the nnsight access (which module's input or output holds the value, whether it is split
per head, whether it may be replaced: :mod:`interp.interventions.runtime`), the fast path
(which sites it recomputes and so can edit or patch: :mod:`interp.engine.prefix`,
:mod:`interp.interventions.patch`), batch-row cutting, the activation cache's short names
and what ``run_with_cache`` leaves out unless asked.

A new site whose value is one module's input or output is one row; a value computed from
others (``attn_pattern``, ``result``) also needs its wiring in the runtime's read/write.
"""

from __future__ import annotations

from dataclasses import dataclass

#: where a site lies in the forward, in order
STAGES = ("embed", "vision", "projector", "decoder", "final_norm")


@dataclass(frozen=True)
class Site:
    """One site's facts.

    Attributes:
        key: the site's short key (``"resid_pre"``).
        name: its hook name, ``{l}`` standing for the layer (``"blocks.{l}.hook_resid_pre"``).
        stage: where it lies in the forward (one of :data:`STAGES`).
        order: its place inside a decoder layer (decoder sites), else 0.
        module: the module whose input or output is the value (``block``, ``attn``, ``q``, ``k``,
            ``v``, ``o``, ``mid_norm``, ``mlp``, ``embed``, ``projector``, ``final_norm``,
            ``vision_block``); empty for a computed value.
        io: ``"input"``, ``"output"`` or ``"computed"``.
        writable: whether an intervention may replace the value.
        per_head: whether the value is read as ``(batch, seq, heads, d)``.
        token_axis: whether the value runs ``(batch, seq, ...)`` (a batch row is one sample's).
        restartable: whether the fast path recomputes it (so it can be edited or patched there).
        short: TransformerLens' short name (``cache["pattern", 5]``), or None.
        cached_by_default: whether ``run_with_cache`` with no filter records it.
    """

    key: str
    name: str
    stage: str
    module: str
    io: str
    order: float = 0.0
    writable: bool = True
    per_head: bool = False
    token_axis: bool = True
    restartable: bool = False
    short: str | None = None
    cached_by_default: bool = True

    @property
    def layered(self) -> bool:
        """Whether the name carries a layer index."""
        return "{l}" in self.name

    def hook_name(self, layer: int | None) -> str:
        return self.name.format(l=layer) if self.layered else self.name


REGISTRY: tuple[Site, ...] = (
    Site("embed", "hook_embed", "embed", "embed", "output"),
    Site(
        "vision_resid_post",
        "vision.blocks.{l}.hook_resid_post",
        "vision",
        "vision_block",
        "output",
        token_axis=False,
        short="vision_resid_post",
    ),
    Site("projected", "vision.hook_projected", "projector", "projector", "output", token_axis=False),
    Site("resid_pre", "blocks.{l}.hook_resid_pre", "decoder", "block", "input", 0, restartable=True, short="resid_pre"),
    Site("q", "blocks.{l}.attn.hook_q", "decoder", "q", "output", 1, per_head=True, restartable=True, short="q"),
    Site("k", "blocks.{l}.attn.hook_k", "decoder", "k", "output", 2, per_head=True, restartable=True, short="k"),
    Site("v", "blocks.{l}.attn.hook_v", "decoder", "v", "output", 3, per_head=True, restartable=True, short="v"),
    Site(
        "attn_pattern",
        "blocks.{l}.attn.hook_pattern",
        "decoder",
        "",
        "computed",
        4,
        writable=False,
        token_axis=False,
        short="pattern",
    ),
    Site("z", "blocks.{l}.attn.hook_z", "decoder", "o", "input", 5, per_head=True, restartable=True, short="z"),
    Site(
        "result",
        "blocks.{l}.attn.hook_result",
        "decoder",
        "",
        "computed",
        6,
        writable=False,
        per_head=True,
        short="result",
        cached_by_default=False,
    ),
    Site("attn_out", "blocks.{l}.hook_attn_out", "decoder", "attn", "output", 7, restartable=True, short="attn_out"),
    Site(
        "resid_mid", "blocks.{l}.hook_resid_mid", "decoder", "mid_norm", "input", 8, writable=False, short="resid_mid"
    ),
    Site("mlp_out", "blocks.{l}.hook_mlp_out", "decoder", "mlp", "output", 9, restartable=True, short="mlp_out"),
    Site(
        "resid_post",
        "blocks.{l}.hook_resid_post",
        "decoder",
        "block",
        "output",
        10,
        restartable=True,
        short="resid_post",
    ),
    Site("final_norm", "ln_final.hook_normalized", "final_norm", "final_norm", "output"),
)


def sites() -> dict[str, Site]:
    """``{key: Site}`` of :data:`REGISTRY` (read at every call: the table is the one place)."""
    return {row.key: row for row in REGISTRY}


def site(key: str) -> Site:
    """The row of site ``key`` (KeyError if there is none)."""
    return sites()[key]


def keys(**facts) -> tuple[str, ...]:
    """The keys of the sites with the given facts, in forward order: ``keys(restartable=True)``."""
    rows = [s for s in REGISTRY if all(getattr(s, fact) == value for fact, value in facts.items())]
    return tuple(s.key for s in sorted(rows, key=forward_key))


def forward_key(row: Site) -> tuple[int, float]:
    """Where a site lies in the forward: its stage, then its place inside a decoder layer."""
    return STAGES.index(row.stage), row.order


__all__ = ["REGISTRY", "STAGES", "Site", "forward_key", "keys", "site", "sites"]
