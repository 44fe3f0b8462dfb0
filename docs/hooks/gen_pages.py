"""MkDocs hook: the pages that are generated from the code, never copied by hand.

``mkdocs.yml`` loads this file (``hooks:``). On every build it adds, as virtual files:

* ``reference/cli.md``: ``format_help()`` of ``interp`` and of every subcommand of
  ``interp.cli.build_parser()`` (nested ones included), at a fixed width;
* ``reference/hooks.md``: the hook-name table of the site registry ``interp.sites.REGISTRY``;
* ``reference/api.md``: one mkdocstrings block per name in ``interp.__all__``;
* the committed notebooks (``notebooks/*.ipynb``, rendered by mkdocs-jupyter with their outputs,
  never executed), the organism model cards with their loss curves, ``CONTRIBUTING.md`` and the
  committed figures of the main job (``figures/*.png``).

``tests/test_docs.py`` imports this module to check the CLI page against the parser.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    from mkdocs.plugins import event_priority
except ImportError:  # the page generators also run without MkDocs (tests/test_docs.py)

    def event_priority(priority: float):
        return lambda function: function


ROOT = Path(__file__).resolve().parents[2]

#: the width the CLI help is rendered at (argparse reads it from $COLUMNS)
HELP_WIDTH = 100

#: what each site's value is (the registry holds the facts; a site missing here still gets a row)
SITE_VALUES = {
    "embed": "token embeddings (`embed_tokens` output)",
    "vision_resid_post": "output of vision-tower block `l` (the tower's own layout)",
    "projected": "projector / merger output: the image features that replace the image tokens",
    "resid_pre": "input of decoder layer `l`",
    "q": "query projection (batch, seq, heads, d_head), before rotary embedding",
    "k": "key projection (batch, seq, heads, d_head), before rotary embedding",
    "v": "value projection (batch, seq, heads, d_head)",
    "attn_pattern": "attention probabilities (batch, heads, query, key), equal to HF eager",
    "z": "per-head attention output before `o_proj` (batch, seq, heads, d_head)",
    "result": "each head's contribution after `o_proj` (batch, seq, heads, d_model)",
    "attn_out": "attention module output",
    "resid_mid": "residual between attention and MLP",
    "mlp_out": "MLP output",
    "resid_post": "output of decoder layer `l`",
    "final_norm": "final norm output",
}

#: the committed notebooks (rendered with their outputs by mkdocs-jupyter; never executed)
NOTEBOOKS = "notebooks"
#: the organisms' model cards: page name under organisms/ -> the card's folder in the package
MODEL_CARDS = {
    "llava": "interp/models/organism/weights",
    "qwen2vl": "interp/models/organism/weights/qwen2vl",
    "planted": "interp/models/organism/weights/planted",
}

#: figures of committed run logs shown on the results page (the run-log folders are not pages)
RUN_FIGURES = {
    "patching_heads_colour.png": "docs/patching-heads/patching_heads_colour.png",
    "method_ablation_organism.png": "docs/method-ablation/2026-12-01/organism/method_ablation.png",
    "localisation_matrix.png": "docs/localisation/2026-12-07/localisation_matrix.png",
}


@contextmanager
def help_width(columns: int = HELP_WIDTH) -> Iterator[None]:
    """argparse wraps help at ``$COLUMNS``: fix it so the page does not depend on the terminal."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = "interp"
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(command, one-line help, parser)`` for ``parser`` and every subcommand below it, in order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias of a subcommand already listed
                continue
            seen.add(id(sub))
            command = f"{prefix} {name}"
            yield command, helps.get(name, ""), sub
            yield from subcommands(sub, command)


def cli_help() -> list[tuple[str, str, str]]:
    """``(command, one-line help, format_help())`` of ``interp`` and each of its subcommands."""
    from interp.cli import build_parser

    with help_width():
        parser = build_parser()
        rows = [("interp", parser.description or "", parser.format_help())]
        rows += [(command, summary, sub.format_help()) for command, summary, sub in subcommands(parser)]
    return rows


def anchor(command: str) -> str:
    return command.replace(" ", "-")


def cli_page() -> str:
    rows = cli_help()
    lines = [
        "# Command line",
        "",
        "Generated from `interp.cli.build_parser()` when the site is built: each section is that",
        "command's `--help`, verbatim.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{command}`](#{anchor(command)}) | {summary} |" for command, summary, _ in rows]
    for command, _, text in rows:
        lines += ["", f"## `{command}` {{#{anchor(command)}}}", "", "```text", text.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def hooks_page() -> str:
    from interp.sites import REGISTRY, STAGES, forward_key

    def flag(value: bool) -> str:
        return "yes" if value else "no"

    lines = [
        "# Hook names",
        "",
        "Generated from the site registry `interp.sites.REGISTRY` when the site is built, in forward",
        "order (stages: " + ", ".join(f"`{s}`" for s in STAGES) + "). `{l}` stands for the layer;",
        "`vlm.hook_names()` lists a loaded model's names, `interp hooks --model M` those of a config.",
        "",
        "* **writable**: an intervention (or `vlm.write`) may replace the value; the others are read-only.",
        "* **per head**: the value is read as `(batch, seq, heads, d)`.",
        "* **fast path**: the captured-prefix executor recomputes it, so it can be edited or patched",
        "  there (`PatchActivations` on the fast sweep).",
        '* **short**: TransformerLens\' short name, as in `cache["pattern", 5]`.',
        "* **cached**: `run_with_cache` with no `names_filter` records it.",
        "",
        "| hook name | key | value | module (io) | writable | per head | fast path | short | cached |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(REGISTRY, key=forward_key):
        module = f"`{row.module}` ({row.io})" if row.module else f"({row.io})"
        short = f"`{row.short}`" if row.short else ""
        lines.append(
            f"| `{row.name}` | `{row.key}` | {SITE_VALUES.get(row.key, '')} | {module} | {flag(row.writable)} "
            f"| {flag(row.per_head)} | {flag(row.restartable)} | {short} | {flag(row.cached_by_default)} |"
        )
    lines += [
        "",
        "Adding a site is one row in `interp/sites.py`: see [Extending](../extending.md#a-hook-site).",
    ]
    return "\n".join(lines) + "\n"


def api_names() -> list[tuple[str, str]]:
    """``(public name, dotted path of its definition)`` for every name in ``interp.__all__``.

    The names are resolved by importing them (some are bound only on first use, which a static
    reader cannot follow), so the page documents each where it is defined.
    """
    import interp

    return [
        (name, f"{obj.__module__}.{obj.__qualname__}") for name in interp.__all__ for obj in [getattr(interp, name)]
    ]


def api_page() -> str:
    lines = [
        "# Python API",
        "",
        "Every name in `interp.__all__` (generated from it when the site is built), documented from",
        "its docstring. `import interp` is light: these names load on first use.",
        "Beyond them, see the modules named in [Concepts](../concepts.md) and the guides.",
        "",
        "| name | defined in |",
        "|---|---|",
    ]
    names = api_names()
    lines += [f"| [`interp.{name}`](#{path}) | `{path.rsplit('.', 1)[0]}` |" for name, path in names]
    for _, path in names:
        lines += ["", f"::: {path}"]
    return "\n".join(lines) + "\n"


def model_card(folder: str) -> str:
    text = (ROOT / MODEL_CARDS[folder] / "MODEL_CARD.md").read_text()
    source = f"{MODEL_CARDS[folder]}/MODEL_CARD.md"
    first, _, rest = text.partition("\n")
    note = f"\n\n*Included from `{source}`, written by `interp organism card`.*\n"
    # the card's figures sit beside it in the package; in the site, beside this page
    for figure in sorted((ROOT / MODEL_CARDS[folder]).glob("*.png")):
        rest = rest.replace(f"]({figure.name})", f"]({folder}-{figure.name})")
    return first + note + rest


def generated_pages() -> dict[str, str]:
    """``{page path: markdown}`` of the generated pages."""
    pages = {
        "reference/cli.md": cli_page(),
        "reference/hooks.md": hooks_page(),
        "reference/api.md": api_page(),
        "contributing.md": (ROOT / "CONTRIBUTING.md").read_text(),
    }
    pages.update({f"organisms/{folder}.md": model_card(folder) for folder in MODEL_CARDS})
    return pages


def copied_files() -> dict[str, Path]:
    """``{path in the site: committed file}``: notebooks, loss curves and the main job's figures."""
    files = {f"{NOTEBOOKS}/{path.name}": path for path in sorted((ROOT / NOTEBOOKS).glob("*.ipynb"))}
    files.update(
        {
            f"organisms/{folder}-{figure.name}": figure
            for folder, src in MODEL_CARDS.items()
            for figure in sorted((ROOT / src).glob("*.png"))
        }
    )
    files.update({f"figures/{path.name}": path for path in sorted((ROOT / "figures").glob("*.png"))})
    files.update(
        {f"figures/compare/{path.name}": path for path in sorted((ROOT / "figures" / "compare").glob("*.png"))}
    )
    files.update({f"results/{name}": ROOT / src for name, src in RUN_FIGURES.items()})
    return files


# runs before mkdocs-jupyter's on_files, so that the notebooks added here are rendered as pages
@event_priority(100)
def on_files(files, config):
    """Add the generated pages and the copied files to the site's files (``mkdocs.structure.files.Files``)."""
    from mkdocs.structure.files import File

    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    for path, source in copied_files().items():
        if path.startswith(f"{NOTEBOOKS}/"):  # a plain file of the repository: mkdocs-jupyter reads it from disk
            files.append(
                File(
                    path,
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
        else:
            files.append(File.generated(config, path, abs_src_path=str(source)))
    return files
