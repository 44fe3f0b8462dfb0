"""Report sections (:mod:`interp.analysis.sections`): the registry and their rows in the run store."""

from __future__ import annotations

import json

import pytest

from interp.analysis import sections
from interp.analysis.reproduce import ReproduceConfig
from interp.analysis.sections import SECTIONS, SectionContext, section
from interp.cli import main
from interp.outputs import SettingsMismatchError

from ..conftest import tiny_vlm

RUN = ["reproduce", "--model", "tiny:llava", "--limit", "2", "--patching", "2", "--lens", "2", "--n-boot", "50"]


def _ctx(samples, config, vlm=None) -> SectionContext:
    return SectionContext(vlm, samples, [], config, None, None, "")


def test_registry_order_needs_and_switches():
    assert list(SECTIONS)[:5] == ["patching", "attribution", "image_lens", "method_ablation", "localisation"]
    config = ReproduceConfig()
    synthetic = type("Synthetic", (), {"counterfactual_pairs": lambda *a, **k: [], "labelled_samples": lambda *a: []})()
    assert SECTIONS["patching"].applies(_ctx(synthetic, config))
    assert not SECTIONS["patching"].applies(_ctx([], config))  # a plain list offers no counterfactuals
    assert SECTIONS["attribution"].applies(_ctx(synthetic, config))  # on the patching section's pairs
    assert not SECTIONS["attribution"].applies(_ctx(synthetic, ReproduceConfig(patching_pairs=0)))
    estimate_only = ReproduceConfig(patching_exact=0)
    assert not SECTIONS["patching"].applies(_ctx(synthetic, estimate_only))
    assert SECTIONS["attribution"].applies(_ctx(synthetic, estimate_only))
    assert not SECTIONS["image_lens"].applies(_ctx(synthetic, ReproduceConfig(lens_samples=0)))
    assert not SECTIONS["method_ablation"].applies(_ctx(synthetic, config))  # off unless seeds are given
    assert SECTIONS["method_ablation"].applies(_ctx([], ReproduceConfig(ablation_seeds=1)))
    plain = tiny_vlm("llava")
    assert not SECTIONS["localisation"].applies(_ctx([], config, plain))  # no planted layers in its config


def test_a_registered_section_lands_in_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(sections, "SECTIONS", dict(SECTIONS))

    @section("items_seen", enabled=lambda ctx: True)
    def _seen(ctx):
        log = ctx.run.section_log("items_seen", {"what": "ids"})
        log.write_text("".join(json.dumps({"key": item.id}) + "\n" for item in ctx.items))
        return {"ids": [item.id for item in ctx.items]}, ["## Items seen", ""]

    out = tmp_path / "run"
    assert main(RUN[:5] + ["--patching", "0", "--lens", "0", "--n-boot", "50", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["items_seen"]["ids"]) == 2
    assert "## Items seen" in (out / "report.md").read_text()
    assert json.loads((out / "rows" / "items_seen.settings.json").read_text()) == {"what": "ids"}


def test_sections_resume_from_the_store_and_refuse_other_settings(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(RUN + ["--out", str(out)]) == 0
    first = json.loads((out / "report.json").read_text())
    for name in ("patching", "attribution", "image_lens"):
        assert len((out / "rows" / f"{name}.jsonl").read_text().splitlines()) == 2  # one line per pair / sample
    assert first["attribution"]["agreement"]  # scored against the patching section's exact rows

    def never(*args, **kwargs):
        raise AssertionError("a finished unit was computed again")

    from interp.analysis import attribution, image_lens, patching

    monkeypatch.setattr(image_lens._LensReader, "rows", never)
    monkeypatch.setattr(patching, "_patch_pair", never)
    monkeypatch.setattr(attribution, "_attribute_pair", never)
    assert main(RUN + ["--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    for name in ("patching", "attribution", "image_lens"):
        assert json.dumps(again[name], sort_keys=True) == json.dumps(first[name], sort_keys=True)
    # another seed draws other pairs: the section's rows are refused, nothing rewritten
    before = (out / "rows" / "patching.jsonl").read_bytes()
    with pytest.raises(SettingsMismatchError, match="section patching"):
        _run_raw(out, seed=1)
    assert (out / "rows" / "patching.jsonl").read_bytes() == before


def test_exact_patching_runs_on_the_first_pairs_and_attribution_on_all(tmp_path):
    """The validation subset: its exact rows are those of a run patching every pair exactly."""
    runs = {}
    for exact in ("1", "3"):
        out = tmp_path / f"exact{exact}"
        args = RUN[:5] + ["--limit", "3", "--patching", "3", "--patching-exact", exact, "--lens", "0"]
        assert main(args + ["--n-boot", "50", "--out", str(out)]) == 0
        runs[exact] = out
    rows = {
        k: [json.loads(line) for line in (out / "rows" / "patching.jsonl").read_text().splitlines()]
        for k, out in runs.items()
    }
    assert len(rows["1"]) == 1 and len(rows["3"]) == 3
    assert rows["1"][0] == rows["3"][0]  # the same pair, the same numbers
    for out in runs.values():
        assert len((out / "rows" / "attribution.jsonl").read_text().splitlines()) == 3
    report = json.loads((runs["1"] / "report.json").read_text())
    assert report["patching"]["n_pairs"] == 1 and report["patching"]["validation_of"] == 3
    assert report["attribution"]["n_pairs"] == 3 and report["attribution"]["agreement"][0]["n_pairs"] == 1
    assert "validation_of" not in json.loads((runs["3"] / "report.json").read_text())["patching"]
    assert "first 1 of the run's 3 pairs" in (runs["1"] / "report.md").read_text()


def _run_raw(out, seed: int) -> None:
    """The reproduce call the CLI makes, without its one-line error handling (to see the error's class)."""
    import interp
    from interp.analysis.reproduce import reproduce
    from interp.data.synthetic import SyntheticVQA

    vlm = interp.load("tiny:llava")
    config = ReproduceConfig(patching_pairs=2, lens_samples=2, n_boot=50, seed=seed, progress=False)
    data = SyntheticVQA("test", image_size=vlm.scene_size)
    reproduce(vlm, data, out, dataset="synthetic:test", limit=2, config=config)


def test_image_encodings_per_question_pair_and_sample(tmp_path):
    """Counted with a forward hook on the vision tower: the core phases encode each question's image
    once for its clean pass and twice for the crop baseline's two-image prompt (image and crop),
    plus the two example answers; exact patching and attribution at most twice per pair each
    (source and base); the image-token lens once per sample."""
    import interp
    from interp.analysis.reproduce import reproduce
    from interp.data.synthetic import SyntheticVQA

    vlm = interp.load("tiny:llava")
    first_block = vlm.adapter.resolve(vlm.model, "vision_layers")[0]
    encoded = []
    handle = first_block.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    data = SyntheticVQA("test", image_size=vlm.scene_size)

    def count(name: str, **sections) -> int:
        encoded.clear()
        config = ReproduceConfig(n_boot=50, progress=False, **sections)
        reproduce(vlm, data, tmp_path / name, dataset="synthetic:test", limit=3, config=config)
        return sum(encoded)

    try:
        core = count("core", patching_pairs=0, lens_samples=0)
        exact = count("exact", patching_pairs=3, patching_exact=3, patching_cell_pairs=0, lens_samples=0)
        estimate = count("estimate", patching_pairs=3, patching_exact=0, lens_samples=0)
        lens = count("lens", patching_pairs=0, lens_samples=3)
    finally:
        handle.remove()
    assert core == 3 + 2 * 3 + 2
    assert exact - core <= 2 * 3 + 2 * 3  # exact patching and attribution, each on 3 pairs
    assert estimate - core <= 2 * 3
    assert lens - core <= 3
