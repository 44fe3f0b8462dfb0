"""Benchmark metrics against hand-worked numbers (lmms-eval's definitions, quirks included)."""

from __future__ import annotations

import pytest

from interp.data.metrics import (
    anls,
    exact_match,
    levenshtein,
    mme_aggregate,
    mme_parse,
    mme_score,
    normalize_vqa_answer,
    pope_aggregate,
    pope_parse,
    pope_score,
    synthetic_aggregate,
    synthetic_score,
    vqa_accuracy,
)

# -- EvalAI normalisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # articles go, wherever they are
        ("The dog", "dog"),
        ("a cat", "cat"),
        ("an apple on the table", "apple on table"),
        # number words zero..ten (and "none") become digits, others stay
        ("Two", "2"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("two dogs", "2 dogs"),
        # contractions without apostrophe are restored; capitalised table keys never match
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("Im", "im"),
        ("somebody'd", "somebodyd"),
        # a period goes unless a digit follows it
        ("2.5", "2.5"),
        ("5.", "5"),
        ("a.m.", "am"),
        (".5 liters", ".5 liters"),
        ("yes.", "yes"),
        # commas and question marks are deleted by the tokenising step
        ("1,000", "1000"),
        ("red, white", "red white"),
        ("what?", "what"),
        # "'s" is split off by the tokenising step
        ("it's", "it 's"),
        ("man's hat", "man 's hat"),
        # punctuation inside a word becomes a space, next to a space it disappears
        ("black-and-white", "black and white"),
        ("black - white", "black white"),
        ("(yes)", "yes"),
        ("yes!", "yes"),
        ("t-shirt", "t shirt"),
        ("  Surf\tboard\n", "surf board"),
    ],
)
def test_evalai_normalisation(text, expected):
    assert normalize_vqa_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # the VQAv2 path has no tokenising step: commas and "'s" are left to the punctuation rules
        ("it's", "it's"),
        ("red,blue", "red blue"),
        ("red, blue", "red blue"),
        # a comma between digits makes every punctuation mark vanish instead of becoming a space
        ("1,000", "1000"),
        ("1,000 (approx)", "1000 approx"),
        ("what?", "what"),
        ("Two.", "2"),
    ],
)
def test_vqav2_normalisation(text, expected):
    assert normalize_vqa_answer(text, tokenize=False) == expected


# -- VQA accuracy -------------------------------------------------------------------------


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, expected):
    # with m matching humans: m subsets see m-1 matches, 10-m subsets see m
    answers = ["two"] * matches + ["three"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


def test_vqa_accuracy_duplicates_and_normalisation():
    answers = ["Yes", "yes.", "yes", "no", "No", "nope", "yes", "YES!", "maybe", "no"]
    # "yes" after normalisation 5 times: every subset has >= 4 matches
    assert vqa_accuracy("Yes.", answers) == 1.0
    # "no" 3 times: 3 subsets see 2 (2/3), 7 see 3 (1) -> 0.9
    assert vqa_accuracy("no", answers) == pytest.approx(0.9)
    # lmms-eval normalises even when all ten humans agree (the official script would give 0)
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # fewer than 10 answers: leave-one-out over what there is: (1/3 + 1/3 + 2/3) / 3
    assert vqa_accuracy("a", ["a", "a", "b"]) == pytest.approx(4 / 9)
    with pytest.raises(ValueError):
        vqa_accuracy("a", [])


def test_vqa_accuracy_tokenisation_differs_between_tasks():
    # TextVQA/OK-VQA/VizWiz delete commas ("redblue"); VQAv2 turns them into spaces
    assert vqa_accuracy("red,blue", ["red blue"] * 10) == 0.0
    assert vqa_accuracy("red,blue", ["red blue"] * 10, tokenize=False) == 1.0


# -- exact match, ANLS ------------------------------------------------------------------------


def test_exact_match():
    assert exact_match("Yes", "yes") == 1.0
    assert exact_match("yes.", "yes") == 1.0
    assert exact_match("t-shirt", "tshirt") == 1.0
    assert exact_match("left side", "left") == 0.0
    assert exact_match(" yes", "yes") == 0.0  # no strip, as lmms-eval
    assert exact_match("2", "two") == 0.0  # no number words


@pytest.mark.parametrize(
    "a, b, distance", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0), ("flaw", "lawn", 2), ("abc", "", 3)]
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_anls():
    assert anls("Edward R. Shannon", ["edward r. shannon"]) == 1.0
    # "edward shannon" vs "edward r. shannon": 3 deletions over 17 characters
    assert anls("Edward Shannon", ["Edward R. Shannon"]) == pytest.approx(1 - 3 / 17)
    assert anls("Edward Shannon", ["Edward R. Shannon", "Edward Shannon"]) == 1.0  # best answer counts
    assert anls("x", ["abcd"]) == 0.0  # similarity 0 < 0.5
    assert anls("ab", ["abcd"]) == 0.5  # exactly 0.5 is kept (lmms-eval; the RRC script zeroes it)
    assert anls("a", ["abcd"]) == 0.0  # 0.25 < 0.5
    # lengths are the raw strings' (lmms-eval): 1 edit over len(" abc  ") = 6, not 3
    assert anls(" abc  ", ["abd"]) == pytest.approx(1 - 1 / 6)
    assert anls("", [""]) == 1.0


# -- POPE --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, parsed",
    [
        ("Yes, there is a dog.", "yes"),
        ("No, there is not.", "no"),
        ("There is not a dog", "no"),
        ("No.", "no"),
        ("yes", "yes"),
        ("NO", "yes"),
        ("Not at all", "yes"),  # case-sensitive, as POPE's script
        ("I see a dog. No cat", "yes"),  # only the first sentence counts
    ],
)
def test_pope_parse(reply, parsed):
    assert pope_parse(reply) == parsed


def test_pope_aggregate_hand_counts():
    pairs = [("yes", "yes"), ("yes", "Yes."), ("yes", "no"), ("no", "no"), ("no", "yes"), ("no", "Not at all")]
    rows = [pope_score(reply, truth) for truth, reply in pairs]
    assert [r["correct"] for r in rows] == [1, 0, 0, 1, 0, 0]
    assert [r["parsed"] for r in rows] == ["yes", "yes", "no", "no", "yes", "yes"]
    result = pope_aggregate(rows)
    # lmms-eval: exact "yes"/"no" only. TP = 1, FP = 1, FN = 1; yes-ratio of the ground truth
    assert result["pope_accuracy"] == pytest.approx(2 / 6)
    assert result["pope_precision"] == pytest.approx(0.5)
    assert result["pope_recall"] == pytest.approx(0.5)
    assert result["pope_f1_score"] == pytest.approx(0.5)
    assert result["pope_yes_ratio"] == pytest.approx(0.5)
    # POPE's script on parsed replies: TP = 2, FP = 2, FN = 1, 4 of 6 predicted yes
    assert result["pope_paper_accuracy"] == pytest.approx(3 / 6)
    assert result["pope_paper_precision"] == pytest.approx(0.5)
    assert result["pope_paper_recall"] == pytest.approx(2 / 3)
    assert result["pope_paper_f1_score"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result["pope_paper_yes_ratio"] == pytest.approx(4 / 6)


# -- MME ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, label",
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("y", "yes"),
        ("n", "no"),
        ("x", "other"),
        ("Yes, there is", "yes"),
        ("Not sure", "no"),
        ("I think yes", "other"),
        ("nope", "no"),
        ("", "other"),
    ],
)
def test_mme_parse(reply, label):
    assert mme_parse(reply) == label


def test_mme_acc_plus_and_totals():
    def rows(category, image, replies_truths):
        return [
            {**mme_score(reply, truth), "category": category, "image_id": f"{category}/{image}"}
            for reply, truth in replies_truths
        ]

    data = (
        rows("existence", "a.jpg", [("Yes", "Yes"), ("No", "No")])  # both right: 100 + 100
        + rows("existence", "b.jpg", [("Yes", "Yes"), ("Yes", "No")])  # one right: 50 + 0
        + rows("count", "c.jpg", [("no", "Yes"), ("maybe", "No")])  # none right: 0 + 0
        + rows("code_reasoning", "d.png", [("yes.", "Yes"), ("n", "No")])  # cognition, both right: 200
    )
    result = mme_aggregate(data)
    existence = result["categories"]["existence"]
    assert existence["acc"] == pytest.approx(75.0)
    assert existence["acc_plus"] == pytest.approx(50.0)
    assert existence["score"] == pytest.approx(125.0)
    assert result["categories"]["count"]["score"] == 0.0
    assert result["mme_perception_score"] == pytest.approx(125.0)
    assert result["mme_cognition_score"] == pytest.approx(200.0)
    assert result["incomplete_images"] == 0
    # an image cut to one question by --limit still counts, and is reported
    partial = mme_aggregate(data + rows("count", "e.jpg", [("Yes", "Yes")]))
    assert partial["categories"]["count"]["score"] == pytest.approx(100.0)  # (0 + 200) / 2
    assert partial["incomplete_images"] == 1


# -- the synthetic benchmark ------------------------------------------------------------------------


def test_synthetic_score_is_the_organism_metric():
    assert synthetic_score("Red.", "red") == 1.0
    assert synthetic_score("two", "2") == 1.0
    assert synthetic_score("red circle", "red") == 1.0  # first word
    assert synthetic_score("the circle is red", "red") == 0.0
    rows = [
        {"correct": 1.0, "kind": "counting"},
        {"correct": 0.0, "kind": "counting"},
        {"correct": 1.0, "kind": "spatial"},
    ]
    assert synthetic_aggregate(rows) == {
        "accuracy": pytest.approx(2 / 3),
        "per_kind": {"counting": 0.5, "spatial": 1.0},
    }
