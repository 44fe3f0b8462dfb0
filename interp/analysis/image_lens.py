"""The image-token lens: what each image token "says" at each layer.

Each image token's residual stream (``blocks.{l}.hook_resid_pre`` by default: layer 0 is
what the projector feeds the language model) goes through the model's final norm and
unembedding (:func:`interp.engine.prefix.unembed`, one call per sample for all layers
stacked) and its top-k tokens are read off (Neo et al., ICLR 2025, "Towards interpreting
visual information processing in VLMs").

On the synthetic benchmark each cell has ground truth (:meth:`Sample.patch_labels`: the
colour and shape of the object covering it, or background), so the lens can be scored:

* ``colour_topk`` / ``shape_topk``: the cell's colour / shape word is among the top-k tokens
  (a token counts as the word when it decodes to it, with or without a leading space);
* ``colour_top1`` / ``shape_top1``: it is the top token;
* ``colour_class`` / ``shape_class``: among the words of that attribute only (the six
  colours / four shapes, each by the first token of ``" word"``), the cell's is the largest.

Accuracies are over object cells (background cells carry ``colour == "background"``),
averaged per sample, with bootstrap CIs over samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import InterpError
from ..hooks import hook_name
from ..interventions import RecordResidual
from ..interventions.base import resolve_layers
from .items import as_items
from ..engine.unembedding import unembed
from .stats import per_layer_ci

LENS_SITES = ("resid_pre", "resid_post")
METRICS = ("colour_topk", "colour_top1", "colour_class", "shape_topk", "shape_top1", "shape_class")


#: float32 logits the lens holds at once: layers are unembedded in chunks within it (on a 7B model
#: one 1920x1080 image's tokens take ~1.6 GB of logits a layer)
LENS_LOGITS_BYTES = 1 << 30


def _read_off(vlm, hidden: torch.Tensor, k: int, colour_ids, shape_ids, max_bytes: int):
    """Per layer and image token: the top-k token ids and the colour / shape word picked, from
    ``hidden`` ``[layers, n_img, d]``, unembedding as many layers per call as ``max_bytes`` allows."""
    per_layer = hidden.shape[1] * vlm.adapter.text_config(vlm.config).vocab_size * 4
    step = max(1, int(max_bytes) // max(1, per_layer))
    parts = []
    for start in range(0, hidden.shape[0], step):
        logits = unembed(vlm, hidden[start : start + step].to(vlm.device, vlm.dtype)).cpu()
        parts.append(
            (logits.topk(k, dim=-1).indices, logits[..., colour_ids].argmax(-1), logits[..., shape_ids].argmax(-1))
        )
        del logits
    return tuple(torch.cat(column) for column in zip(*parts))


def _entries(samples, limit):
    """``[(item, sample or None)]``: samples that know their cells' labels keep them."""
    from ..data.capabilities import OffersCellLabels

    if isinstance(samples, OffersCellLabels):
        raw = samples.labelled_samples(limit)
    elif isinstance(samples, (list, tuple)) and samples and all(hasattr(s, "patch_labels") for s in samples):
        raw = list(samples[:limit] if limit is not None else samples)
    else:
        return [(item, None) for item in as_items(samples, limit)]
    if not raw:
        raise InterpError("no samples for the image-token lens")
    return list(zip(as_items(raw), raw))


def _word_ids(tokenizer, words) -> list[int]:
    return [tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in words]


def image_token_lens(
    vlm,
    samples: Any,
    *,
    layers: Any = "all",
    site: str = "resid_pre",
    k: int = 5,
    limit: int | None = None,
    min_fraction: float = 0.1,
    remote: bool | str | None = None,
    progress: bool = True,
    max_logits_bytes: int = LENS_LOGITS_BYTES,
    resume: str | Path | None = None,
) -> pd.DataFrame:
    """One row per (item, layer, cell): ``row``, ``col``, ``top`` (the top-k tokens, decoded),
    ``top1``; with synthetic samples also the cell's ``colour`` and ``shape`` (ground truth
    from ``patch_labels(rows, cols, min_fraction=...)``) and the scores in :data:`METRICS`.
    Layers are unembedded together up to ``max_logits_bytes`` of float32 logits at a time
    (at least one layer per call). ``resume``: a JSON Lines file (:class:`interp.outputs.RowLog`)
    that gets one fsynced record per finished sample; samples already in it are not run again."""
    from ..outputs import logged_units

    if site not in LENS_SITES:
        raise InterpError(f"the image-token lens reads {' or '.join(LENS_SITES)}, not {site!r}")
    if k < 1:
        raise InterpError(f"k={k}: read at least the top token")
    entries = _entries(samples, limit)
    reader = _LensReader(vlm, resolve_layers(layers, vlm.n_layers), site, k, min_fraction, max_logits_bytes, remote)
    rows = logged_units(
        resume,
        tqdm(entries, desc="image-token lens", unit="sample", disable=not progress),
        lambda entry: entry[0].id,
        lambda entry: reader.rows(*entry),
    )
    frame = pd.DataFrame(rows)
    frame.attrs.update({"model": vlm.name, "site": site, "k": k, "n_layers": vlm.n_layers})
    return frame


class _LensReader:
    """Reads one sample's image tokens off through the unembedding, layer by layer."""

    def __init__(self, vlm, layer_list, site, k, min_fraction, max_logits_bytes, remote):
        from ..data.synthetic import COLOURS, SHAPES

        self.vlm, self.layer_list, self.k = vlm, layer_list, k
        self.min_fraction, self.max_logits_bytes, self.remote = min_fraction, max_logits_bytes, remote
        self.names = [hook_name(layer, site) for layer in layer_list]
        self.tokenizer = getattr(vlm.processor, "tokenizer", vlm.processor)
        self.colour_ids = torch.tensor(_word_ids(self.tokenizer, COLOURS))
        self.shape_ids = torch.tensor(_word_ids(self.tokenizer, SHAPES))
        self.decoded: dict[int, str] = {}

    def word(self, token: int) -> str:
        if token not in self.decoded:
            self.decoded[token] = self.tokenizer.decode([token]).strip().lower()
        return self.decoded[token]

    def rows(self, item, sample) -> list[dict]:
        """One row per (layer, cell) of ``item`` (scored against ``sample``'s labels when given)."""
        vlm = self.vlm
        prepared = vlm.prepare(item.image, item.question)
        run = vlm.run(prepared, RecordResidual(self.names, positions="image"), remote=self.remote)
        hidden = torch.cat([run.record(name, layer) for layer, name in zip(self.layer_list, self.names)])
        top, colour_pick, shape_pick = _read_off(
            vlm, hidden, self.k, self.colour_ids, self.shape_ids, self.max_logits_bytes
        )  # [layers, n_img, ...]
        grid = prepared.grid
        column = {int(p): i for i, p in enumerate(prepared.image_positions.tolist())}
        truth = None if sample is None else sample.patch_labels(grid.rows, grid.cols, min_fraction=self.min_fraction)
        rows = []
        for li, layer in enumerate(self.layer_list):
            for r in range(grid.rows):
                for c in range(grid.cols):
                    position = int(grid.positions[r, c])
                    if position < 0:
                        continue
                    j = column[position]
                    words = [self.word(int(t)) for t in top[li, j]]
                    entry = {"item": item.id, "layer": layer, "row": r, "col": c, "top": words, "top1": words[0]}
                    if truth is not None:
                        entry.update(_scores(words, truth, r, c, int(colour_pick[li, j]), int(shape_pick[li, j])))
                    rows.append(entry)
        return rows


def _scores(words: list[str], truth, r: int, c: int, colour_pick: int, shape_pick: int) -> dict:
    """A cell's ground truth and whether the lens read it (object cells only)."""
    from ..data.synthetic import COLOUR_CLASSES, COLOURS, SHAPE_CLASSES, SHAPES

    colour = COLOUR_CLASSES[int(truth[0][r, c])]
    shape = SHAPE_CLASSES[int(truth[1][r, c])]
    entry: dict = {"colour": colour, "shape": shape, "object": colour != "background"}
    if colour != "background":
        entry.update(
            {
                "colour_topk": colour in words,
                "colour_top1": words[0] == colour,
                "colour_class": COLOURS[colour_pick] == colour,
                "shape_topk": shape in words,
                "shape_top1": words[0] == shape,
                "shape_class": SHAPES[shape_pick] == shape,
            }
        )
    return entry


def lens_accuracy(frame: pd.DataFrame, metrics=METRICS, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (metric, layer): accuracy over object cells, averaged per sample, with a
    bootstrap CI over samples (columns ``metric, layer, mean, low, high, n`` (samples))."""
    if "object" not in frame:
        raise InterpError("the lens has no ground truth to score: run it on synthetic samples")
    cells = frame[frame.object]
    if cells.empty:
        raise InterpError("no object cells to score")
    parts = []
    for metric in metrics:
        per_item = cells.groupby(["item", "layer"])[metric].mean().reset_index()
        ci = per_layer_ci(per_item, metric, by=("layer",), n_boot=n_boot, seed=seed)
        ci.insert(0, "metric", metric)
        parts.append(ci)
    return pd.concat(parts, ignore_index=True)


def lens_word_grid(frame: pd.DataFrame, item: str, layer: int, column: str = "top1") -> np.ndarray:
    """One item's ``column`` (the top token by default) at ``layer`` on its image grid."""
    cells = frame[(frame.item == item) & (frame.layer == layer)]
    if cells.empty:
        raise InterpError(f"no lens rows for item {item!r} at layer {layer}")
    grid = np.full((int(cells.row.max()) + 1, int(cells.col.max()) + 1), "", dtype=object)
    grid[cells.row.values, cells.col.values] = cells[column].values
    return grid


def lens_section(
    vlm,
    samples: Any,
    out_dir=None,
    *,
    n: int = 60,
    layers: Any = "all",
    figure_layers=None,
    k: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
    remote: bool | str | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
) -> tuple[dict, list[str]]:
    """The image-token lens for a report: ``(dict for report.json, markdown lines)``;
    writes ``image_lens.csv`` (without the top-k lists), ``image_lens_accuracy`` and
    ``image_lens_words`` into ``out_dir`` when given. ``resume``: see :func:`image_token_lens`."""
    import json
    from pathlib import Path

    from ..inputs import load_image
    from ..plotting import patching as figures

    frame = image_token_lens(vlm, samples, layers=layers, k=k, limit=n, remote=remote, progress=progress, resume=resume)
    scored = "object" in frame
    accuracy = lens_accuracy(frame, n_boot=n_boot, seed=seed) if scored else None
    layer_list = sorted(frame.layer.unique())
    figure_layers = figure_layers or sorted({layer_list[int(round(x))] for x in np.linspace(0, len(layer_list) - 1, 4)})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame.drop(columns=["top"]).to_csv(out / "image_lens.csv", index=False)
        if accuracy is not None:
            from ..data.synthetic import COLOURS, SHAPES

            figures.lens_accuracy_curve(
                accuracy,
                metrics=["colour_class", "shape_class", "colour_topk", "shape_topk"],
                chance={"colour_class": 1 / len(COLOURS), "shape_class": 1 / len(SHAPES)},
                out_dir=out,
                title=f"{vlm.name}: image-token lens (n={frame.item.nunique()})",
            )
        entries = _entries(samples, 1)  # the figure shows the first sample
        item, sample = entries[0]
        grids = {layer: lens_word_grid(frame, item.id, layer) for layer in figure_layers}
        truth = None
        if scored:
            cells = frame[(frame.item == item.id) & (frame.layer == figure_layers[0])]
            truth = np.full(grids[figure_layers[0]].shape, "", dtype=object)
            truth[cells.row.values, cells.col.values] = np.where(cells.object, cells.colour, "")
        figures.lens_words(
            load_image(item.image), grids, truth=truth, question=f"{item.question} ({item.answers[0]})", out_dir=out
        )
    report = {
        "n_samples": int(frame.item.nunique()),
        "k": k,
        "site": frame.attrs["site"],
        "accuracy": json.loads(accuracy.to_json(orient="records")) if accuracy is not None else None,
        "figure_layers": [int(l) for l in figure_layers],
    }
    return report, lens_markdown(report)


def lens_markdown(report: dict) -> list[str]:
    lines = [
        "## Image-token lens",
        "",
        f"Each image token's residual at the input of each layer through the final norm and unembedding, "
        f"{report['n_samples']} samples; scored on object cells against the cell's colour and shape words "
        f"(class = the right word is the largest among the colour / shape words; top-{report['k']} = among the "
        f"{report['k']} largest tokens of the whole vocabulary). Accuracy with 95% bootstrap CIs over samples.",
        "",
    ]
    if not report["accuracy"]:
        return lines + ["No ground truth (not synthetic samples): the lens was not scored.", ""]
    table = pd.DataFrame(report["accuracy"])
    metrics = ["colour_class", "shape_class", "colour_topk", "shape_topk", "colour_top1", "shape_top1"]
    lines += ["| layer | " + " | ".join(m.replace("_", " ") for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for layer, part in table.groupby("layer"):
        values = part.set_index("metric")
        lines.append(
            f"| {layer} | "
            + " | ".join(
                f"{values.loc[m, 'mean']:.2f} [{values.loc[m, 'low']:.2f}, {values.loc[m, 'high']:.2f}]"
                for m in metrics
            )
            + " |"
        )
    return lines + ["", "Figures: image_lens_accuracy, image_lens_words (PNG and PDF).", ""]
