"""``wcd_score`` against the authors' get_score.py rules, on hand-worked cases of every task."""

from __future__ import annotations

import pytest

from interp.data.metrics import wcd_aggregate, wcd_process_text, wcd_score
from interp.errors import InterpError


def test_process_text_by_hand():
    assert wcd_process_text("The Coca-Cola bottle!") == "coca cola bottle"  # '-' inside a word -> space
    assert wcd_process_text("Two dogs, a cat") == "2 dogs cat"  # ", " -> removed, number word, article
    assert wcd_process_text("none") == "0"  # their number map has none -> 0
    assert wcd_process_text("dont stop") == "don't stop"
    assert wcd_process_text("1,000.") == "1000"  # digit,digit strips every mark
    assert wcd_process_text("It's") == "it's"  # no 's split (unlike lmms-eval)


def test_textvqa_and_vizwiz_word_overlap():
    for task in ("textvqa", "vizwiz"):
        assert wcd_score(task, "The Coca-Cola bottle", ["coca cola", "pepsi"]) == 100
        assert wcd_score(task, "a dog", ["cat", "kitten"]) == 0
        assert wcd_score(task, "two", ["2"]) == 100  # number words
        assert wcd_score(task, "none", ["0"]) == 100  # ... including none -> 0
        assert wcd_score(task, "the cat", ["a cat"]) == 100  # articles dropped
        # empty predictions: the word "" matches only an answer that normalises to nothing
        assert wcd_score(task, "", ["cat"]) == 0
        assert wcd_score(task, "", ["the"]) == 100
        assert wcd_score(task, "a", ["the", "dog"]) == 100
    assert wcd_score("vizwiz", "dog", ["unanswerable"] * 10) is None  # skipped, not 0
    assert wcd_score("vizwiz", "unanswerable", ["unanswerable", "dog"]) == 100
    assert wcd_score("textvqa", "x", ["unanswerable", "unanswerable"]) is None


def test_vqav2_and_okvqa_the_03_factor():
    answers = ["2", "2", "two", "3", "three", "3", "4", "many", "2 dogs", "3"]
    for task in ("vqav2", "okvqa"):
        assert wcd_score(task, "Two", answers) == pytest.approx(90.0)  # 3 exact matches x 0.3
        assert wcd_score(task, "3", answers) == pytest.approx(100.0)  # 4 matches, capped
        assert wcd_score(task, "4", answers) == pytest.approx(30.0)  # one match already scores 30
        assert wcd_score(task, "5", answers) == 0
        assert wcd_score(task, "2 dogs", answers) == pytest.approx(30.0)  # exact, not word overlap
        assert wcd_score(task, "the red car", ["red car", "car"]) == pytest.approx(30.0)
        assert wcd_score(task, "", ["a", "cat"]) == pytest.approx(30.0)  # "" equals the emptied "a"
        assert wcd_score(task, "yes", ["unanswerable"] * 3) is None


def test_gqa_answer_word_in_prediction():
    assert wcd_score("gqa", "on the left side", "left") == 100
    assert wcd_score("gqa", "right", "left") == 0
    assert wcd_score("gqa", "No.", "no") == 100
    assert wcd_score("gqa", "left", "left side") == 100  # any answer word suffices
    assert wcd_score("gqa", "", "the") == 100  # empty answer word is in [""]
    assert wcd_score("gqa", "unanswerable", ["unanswerable"]) == 100  # GQA skips nothing


def test_docvqa_substring_rule():
    assert wcd_score("docvqa", "12", ["$12.00"]) == 100
    assert wcd_score("docvqa", "The total is 42", ["42"]) == 100
    assert wcd_score("docvqa", "Total", ["total"]) == 0  # raw, case-sensitive
    assert wcd_score("docvqa", "", ["anything"]) == 100  # an empty reply is a substring of every answer
    assert wcd_score("docvqa", "41", ["42", "forty two"]) == 0


def test_aggregate_leaves_skipped_questions_out():
    rows = [
        {"filtered_resps": ["dog"], "target": ["dog"]},
        {"filtered_resps": ["cat"], "target": ["dog"]},
        {"filtered_resps": ["x"], "target": ["unanswerable"] * 10},
    ]
    assert wcd_aggregate("vizwiz", rows) == {"wcd_score": 50.0, "wcd_n": 2, "wcd_skipped": 1}


def test_unknown_task_is_one_line():
    with pytest.raises(InterpError, match="no WCD metric for task 'pope'"):
        wcd_score("pope", "yes", ["yes"])


def test_each_benchmark_declares_its_rule_and_primary_metric():
    """The authors' get_score.py scores six tasks, each by one rule; the analyses read each
    benchmark's primary per-sample field from its own score."""
    from interp.data.metrics import WCD_RULES
    from interp.data.tasks import TASKS, Doc, wcd_tasks

    assert wcd_tasks() == {
        "textvqa": "word_overlap",
        "vqav2": "exact_x0.3",
        "okvqa": "exact_x0.3",
        "vizwiz": "word_overlap",
        "gqa": "answer_word_in_prediction",
        "docvqa": "substring",
    }
    metadata = {"category": "existence", "image_id": "x", "kind": "colour"}
    for name, benchmark in TASKS.items():
        assert benchmark.wcd_rule is None or benchmark.wcd_rule in WCD_RULES
        doc = Doc(doc_id="1", question="What?", targets=("yes",) * 10, image=None, metadata=metadata)
        assert benchmark.primary_metric in benchmark.score(doc, "yes"), name
