"""VQA benchmark metrics, defined once, identical to lmms-eval's.

Every metric has a per-sample scoring function (its fields go into each JSONL row
of an evaluation run) and an aggregate over those rows. The definitions follow
lmms-eval (``lmms_eval/tasks/<task>/utils.py``, ``tasks/_task_utils/vqa_eval_metric.py``,
``api/metrics.py``) number for number, quirks included; where lmms-eval departs from
a benchmark's original evaluation script that is noted below and, where it matters,
the original is reported too.

==========  ==========================================  ==============================
task        per-sample field(s)                         aggregate (lmms-eval name)
==========  ==========================================  ==============================
textvqa     ``vqa_accuracy`` (EvalAI normalisation)     mean (``exact_match``)
vqav2       ``vqa_accuracy`` (punctuation/digits only)  mean (``exact_match``)
okvqa       ``vqa_accuracy`` (EvalAI normalisation)     mean (``exact_match``)
vizwiz      ``vqa_accuracy`` (EvalAI normalisation)     mean (``exact_match``)
gqa         ``exact_match``                             mean (``exact_match``)
docvqa      ``anls``                                    mean (``anls``)
pope        ``prediction``, ``parsed``, ``correct``     ``pope_accuracy`` ... (below)
mme         ``pred_label``, ``correct``                 ``mme_perception_score``,
                                                        ``mme_cognition_score``
synthetic   ``correct``                                 ``accuracy``, ``per_kind``
==========  ==========================================  ==============================

VQA accuracy
    Answers are normalised as EvalAI does (:func:`normalize_vqa_answer`): lower case;
    punctuation removed, or replaced by a space when it sits inside a word (all of it
    removed if the text has a comma between two digits, so ``"1,000"`` -> ``"1000"``);
    periods removed unless a digit follows (``"2.5"`` stays, ``"5."`` -> ``"5"``);
    number words zero..ten (and ``none``) -> digits; articles a/an/the dropped;
    apostrophe-less contractions restored (``"dont"`` -> ``"don't"``). Then, with the
    10 human answers, the accuracy is the mean over the 10 leave-one-out subsets of 9
    of ``min(1, #matches / 3)``: 0, 1, 2, 3, >=4 matching humans give 0, 0.3, 0.6, 0.9,
    1.0. TextVQA, OK-VQA and VizWiz run lmms-eval's full ``EvalAIAnswerProcessor``,
    which first deletes every ``,`` and ``?`` and splits ``'s`` off (``"it's"`` ->
    ``"it 's"``); lmms-eval's VQAv2 skips that step (``tokenize=False`` here).
    Differences from the official VQA evaluation script, as in lmms-eval: the official
    script normalises only when the 10 answers disagree (so ``"Yes."`` scores 0 against
    ten ``"yes"``), lmms-eval always does; lmms-eval's VQAv2 leaves out one answer
    *dict* per subset, which equals leaving out one index because every dict carries a
    distinct ``answer_id``. Two bugs shared by both are kept for identical numbers: the
    period regex's look-behind is written as a look-ahead (``(?!<=\\d)``), so only the
    digit *after* a period protects it, and ``re.UNICODE`` is passed as the ``count``
    of ``re.sub``, so at most 32 periods are removed.
ANLS (DocVQA)
    ``1 - min over answers of lev(a, p) / max(len(a), len(p))`` on lower-cased,
    whitespace-collapsed strings, set to 0 below 0.5. As lmms-eval: the lengths are
    those of the *raw* strings (before stripping/collapsing whitespace) and a score of
    exactly 0.5 is kept; the DocVQA RRC script uses the normalised lengths and zeroes
    0.5. Levenshtein distance is computed here (answers are short; no dependency).
GQA exact match
    lower case, every ``string.punctuation`` character deleted, then string equality
    (HF ``evaluate``'s exact_match with ignore_case and ignore_punctuation; no strip).
POPE
    lmms-eval scores ``response.lower().strip() == answer``; precision counts only
    replies that are exactly "yes", recall only exact "yes"/"no"; its
    ``pope_yes_ratio`` is the share of *ground-truth* "yes" (0.5 on POPE). lmms-eval
    does not parse the reply. The ``pope_paper_*`` metrics reproduce POPE's own script
    (also LLaVA's ``eval_pope.py``): keep the first sentence, drop commas, answer
    "no" if the words contain ``No``, ``no`` or ``not``, else "yes"; its yes-ratio is
    the share of *predicted* "yes".
MME
    The reply is parsed as lmms-eval (after Otter): lower, strip, drop periods; "yes"/
    "no" as is, "y"/"n", else "yes"/"no" found in its first 4 characters, else
    "other". Per subtask: acc (per question, %) + acc+ (per image, % with both
    questions right); perception and cognition scores are the sums over their
    subtasks (perception max 2000, cognition max 800). lmms-eval asserts two questions
    per image; here an image with another count (a ``--limit`` cut) still counts, and
    ``incomplete_images`` says how many there were.
"""

from __future__ import annotations

import re
import statistics
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "MME_CATEGORIES",
    "anls",
    "exact_match",
    "levenshtein",
    "mean_of",
    "mme_aggregate",
    "mme_parse",
    "mme_score",
    "normalize_vqa_answer",
    "pope_aggregate",
    "pope_parse",
    "pope_score",
    "synthetic_aggregate",
    "synthetic_score",
    "vqa_accuracy",
    "WCD_RULES",
    "wcd_aggregate",
    "wcd_process_text",
    "wcd_score",
]

# -- EvalAI answer normalisation -------------------------------------------------------

# EvalAI's contraction table (pairs "without with"); the capitalised keys can never
# match after lower-casing and "somebody'd" -> "somebodyd" is a typo of the original;
# both are kept so that results are identical.
_CONTRACTION_PAIRS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't
hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't  havent haven't
hed he'd  hed've he'd've  he'dve he'd've  hes he's  howd how'd  howll how'll  hows how's
Id've I'd've  I'dve I'd've  Im I'm  Ive I've  isnt isn't  itd it'd  itd've it'd've
it'dve it'd've  itll it'll  let's let's  maam ma'am  mightnt mightn't
mightnt've mightn't've  mightn'tve mightn't've  mightve might've  mustnt mustn't
mustve must've  neednt needn't  notve not've  oclock o'clock  oughtnt oughtn't
ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at  shant shan't  shed've she'd've
she'dve she'd've  she's she's  shouldve should've  shouldnt shouldn't
shouldnt've shouldn't've  shouldn'tve shouldn't've  somebody'd somebodyd
somebodyd've somebody'd've  somebody'dve somebody'd've  somebodyll somebody'll
somebodys somebody's  someoned someone'd  someoned've someone'd've
someone'dve someone'd've  someonell someone'll  someones someone's
somethingd something'd  somethingd've something'd've  something'dve something'd've
somethingll something'll  thats that's  thered there'd  thered've there'd've
there'dve there'd've  therere there're  theres there's  theyd they'd
theyd've they'd've  they'dve they'd've  theyll they'll  theyre they're
theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've  weve we've
werent weren't  whatll what'll  whatre what're  whats what's  whatve what've
whens when's  whered where'd  wheres where's  whereve where've  whod who'd
whod've who'd've  who'dve who'd've  wholl who'll  whos who's  whove who've
whyll why'll  whyre why're  whys why's  wont won't  wouldve would've
wouldnt wouldn't  wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all
yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've  y'alld've y'all'd've
y'all'dve y'all'd've  youd you'd  youd've you'd've  you'dve you'd've  youll you'll
youre you're  youve you've
"""
_WORDS = _CONTRACTION_PAIRS.split()
CONTRACTIONS: Mapping[str, str] = dict(zip(_WORDS[0::2], _WORDS[1::2]))
NUMBER_WORDS: Mapping[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# A period not followed by a digit. (The original pattern, ``(?!<=\d)(\.)(?!\d)``, meant
# a look-behind too but wrote a look-ahead that is always true at a period.)
_PERIOD = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")
_PERIOD_SUB_COUNT = re.UNICODE  # passed as `count` by the original (a bug): 32 periods at most


def _process_punctuation(text: str) -> str:
    strip_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if strip_all or mark + " " in text or " " + mark in text else " ")
    return _PERIOD.sub("", out, count=_PERIOD_SUB_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(text: str, *, tokenize: bool = True) -> str:
    """EvalAI's answer normalisation, as lmms-eval applies it.

    ``tokenize=True`` is lmms-eval's ``EvalAIAnswerProcessor()(text)`` (TextVQA,
    OK-VQA, VizWiz): lower case, delete ``,`` and ``?``, split off ``'s``, then the
    punctuation and digit/article steps. ``tokenize=False`` is the VQAv2 path (and the
    official VQA script's): only the punctuation and digit/article steps.
    """
    text = str(text)
    if tokenize:
        text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


def vqa_accuracy(response: str, answers: Sequence[str], *, tokenize: bool = True) -> float:
    """VQA accuracy of one reply against the human answers (normally 10).

    Mean over the leave-one-out subsets (one per answer) of ``min(1, matches / 3)``,
    after :func:`normalize_vqa_answer` of the reply and of every answer.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    prediction = normalize_vqa_answer(response, tokenize=tokenize)
    truths = [normalize_vqa_answer(answer, tokenize=tokenize) for answer in answers]
    matches = sum(truth == prediction for truth in truths)
    per_subset = [min(1.0, (matches - (truth == prediction)) / 3) for truth in truths]
    return statistics.mean(per_subset)


# -- exact match (GQA) -------------------------------------------------------------------

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(response: str, target: str) -> float:
    """1.0 if equal after lower-casing and deleting ASCII punctuation (no strip)."""
    return float(str(response).lower().translate(_DROP_PUNCTUATION) == str(target).lower().translate(_DROP_PUNCTUATION))


# -- ANLS (DocVQA) -------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, char_b in enumerate(b, start=1):
        current = [j]
        for i, char_a in enumerate(a, start=1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(response: str, answers: Sequence[str], *, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one reply (lmms-eval's definition)."""
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer")
    response = str(response)
    prediction = " ".join(response.strip().lower().split())
    distances = []
    for answer in answers:
        answer = str(answer)
        truth = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(response.upper()))
        distances.append(0.0 if length == 0 else levenshtein(truth, prediction) / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


# -- POPE ------------------------------------------------------------------------------------


def pope_parse(response: str) -> str:
    """POPE's own yes/no reading of a reply (first sentence; "no"/"No"/"not" -> no)."""
    text = str(response)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_score(response: str, answer: str) -> dict:
    """Per-sample POPE fields: lmms-eval's ``prediction``/``correct``, POPE's ``parsed``/``parsed_correct``."""
    prediction = str(response).lower().strip()
    truth = str(answer).lower().strip()
    parsed = pope_parse(response)
    return {
        "prediction": prediction,
        "parsed": parsed,
        "ground_truth": truth,
        "correct": float(prediction == truth),
        "parsed_correct": float(parsed == truth),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def _binary_yes_no(predictions: Sequence[str], truths: Sequence[str]) -> dict:
    tp = sum(p == "yes" and t == "yes" for p, t in zip(predictions, truths))
    fp = sum(p == "yes" and t == "no" for p, t in zip(predictions, truths))
    fn = sum(p == "no" and t == "yes" for p, t in zip(predictions, truths))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1_score": f1}


def pope_aggregate(rows: Sequence[Mapping]) -> dict:
    """lmms-eval's five POPE numbers (``pope_*``) and POPE's own (``pope_paper_*``)."""
    if not rows:
        return {}
    truths = [row["ground_truth"] for row in rows]
    predictions = [row["prediction"] for row in rows]
    parsed = [row["parsed"] for row in rows]
    lmms = _binary_yes_no(predictions, truths)
    paper = _binary_yes_no(parsed, truths)
    n_truth_yes, n_truth_no = truths.count("yes"), truths.count("no")
    return {
        "pope_accuracy": mean_of(rows, "correct"),
        "pope_precision": lmms["precision"],
        "pope_recall": lmms["recall"],
        "pope_f1_score": lmms["f1_score"],
        "pope_yes_ratio": _ratio(n_truth_yes, n_truth_yes + n_truth_no),
        "pope_paper_accuracy": mean_of(rows, "parsed_correct"),
        "pope_paper_precision": paper["precision"],
        "pope_paper_recall": paper["recall"],
        "pope_paper_f1_score": paper["f1_score"],
        "pope_paper_yes_ratio": parsed.count("yes") / len(parsed),
    }


# -- MME -------------------------------------------------------------------------------------

MME_CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "perception": (
        "existence",
        "count",
        "position",
        "color",
        "posters",
        "celebrity",
        "scene",
        "landmark",
        "artwork",
        "OCR",
    ),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}


def mme_parse(response: str) -> str:
    """ "yes", "no" or "other" (lmms-eval's reading, after Otter)."""
    text = str(response).lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_score(response: str, answer: str) -> dict:
    truth = str(answer).lower().strip().replace(".", "")
    label = mme_parse(response)
    return {"pred_label": label, "correct": float(label == truth)}


def mme_aggregate(rows: Sequence[Mapping]) -> dict:
    """Per-subtask acc / acc+ / score and the perception and cognition totals.

    Rows need ``category``, ``image_id`` (the two questions of an image share it) and
    ``correct``.
    """
    if not rows:
        return {}
    by_image: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:  # categories and images in order of first appearance, as lmms-eval
        by_image[row["category"]][row["image_id"]].append(float(row["correct"]))
    categories: dict[str, dict] = {}
    incomplete = 0
    for category, images in by_image.items():
        acc = [sum(scores) / len(scores) * 100.0 for scores in images.values()]
        acc_plus = [float(all(s == 1.0 for s in scores)) * 100.0 for scores in images.values()]
        total = sum(a + p for a, p in zip(acc, acc_plus))
        incomplete += sum(len(scores) != 2 for scores in images.values())
        categories[category] = {
            "acc": sum(acc) / len(acc),
            "acc_plus": sum(acc_plus) / len(acc_plus),
            "score": total / len(images),
            "images": len(images),
        }
    perception = [c for c in categories if c in MME_CATEGORIES["perception"]]
    cognition = [c for c in categories if c not in MME_CATEGORIES["perception"]]
    return {
        "mme_perception_score": sum(categories[c]["score"] for c in perception),
        "mme_cognition_score": sum(categories[c]["score"] for c in cognition),
        "categories": categories,
        "incomplete_images": incomplete,
    }


# -- the synthetic benchmark -----------------------------------------------------------------


def synthetic_score(response: str, answer: str) -> float:
    """1.0 if :func:`interp.data.synthetic.is_correct` (the organism's own metric)."""
    from .synthetic import is_correct

    return float(is_correct(response, answer))


def synthetic_aggregate(rows: Sequence[Mapping]) -> dict:
    """``accuracy`` and ``per_kind`` accuracy (rows need ``correct`` and ``kind``)."""
    if not rows:
        return {}
    kinds = sorted({row["kind"] for row in rows})
    return {
        "accuracy": mean_of(rows, "correct"),
        "per_kind": {kind: mean_of([r for r in rows if r["kind"] == kind], "correct") for kind in kinds},
    }


# -- the authors' lenient metrics (season1blue/WCD, methods/utils/get_score.py) -------------------------

#: the rules of the authors' ``get_score.py`` (a benchmark names its own: ``Benchmark.wcd_rule``)
WCD_RULES = ("word_overlap", "exact_x0.3", "answer_word_in_prediction", "substring")
#: the rules whose loops skip a question answered only "unanswerable"
_SKIPS_UNANSWERABLE = frozenset({"word_overlap", "exact_x0.3"})


def wcd_process_text(text: str) -> str:
    """The authors' ``process_text``: EvalAI's punctuation step, then lower case, number words
    -> digits (``none`` -> ``0``), articles dropped, contractions restored — the same tables
    and quirks as :func:`normalize_vqa_answer` with ``tokenize=False`` (no ``,``/``?``
    deletion, no ``'s`` split, no newline handling)."""
    return _process_digits_and_articles(_process_punctuation(str(text)))


def _words(text: str) -> list[str]:
    return wcd_process_text(text).split(" ")


def wcd_score(task: str, prediction: str, answers: Sequence[str] | str) -> float | None:
    """The authors' per-question score (0 or 100; 0, 30, 60, 90 or 100 for VQAv2/OK-VQA), or
    ``None`` for a question their evaluation skips.

    ==========================  ===============================================================
    textvqa, vizwiz             100 if any word of the normalised prediction is among the words
                                of the normalised answers (``evaluate_textvqa``)
    vqav2, okvqa                ``100 * min(0.3 * n, 1)``, n = answers equal to the prediction
                                after normalisation (``evaluate_okvqa``; a single match scores 30)
    gqa                         100 if any word of the (single) answer is a word of the
                                prediction (``evaluate_gqa``); several answers: any of them
    docvqa                      100 if the raw prediction is a substring of an answer or an answer
                                of it (``evaluate_docvqa``; case-sensitive, no normalisation)
    ==========================  ===============================================================

    Quirks kept: textvqa/vizwiz/vqav2/okvqa skip a question whose answers are all
    ``"unanswerable"`` (their loops ``continue``; here ``None``, left out of the mean); the
    word split is on single spaces, so an empty prediction is the word ``""``, which
    matches only an answer that normalises to nothing (e.g. ``"the"``); on DocVQA an empty
    prediction is a substring of every answer and scores 100. Their ``_eval.py`` actually
    scores DocVQA with the textvqa rule (``evaluate_textvqa``); ``get_score.py``'s
    ``evaluate_docvqa`` is the substring rule used here.
    """
    from .tasks import wcd_tasks

    rules = wcd_tasks()
    if task not in rules:
        from ..errors import InterpError

        raise InterpError(f"no WCD metric for task {task!r}; the authors' get_score.py scores {', '.join(rules)}")
    rule = rules[task]
    answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
    if rule in _SKIPS_UNANSWERABLE and set(answers) == {"unanswerable"}:
        return None
    prediction = str(prediction)
    if rule == "word_overlap":
        union = {word for answer in answers for word in _words(answer)}
        return 100.0 if any(word in union for word in _words(prediction)) else 0.0
    if rule == "exact_x0.3":
        predicted = _words(prediction)
        matches = sum(predicted == _words(answer) for answer in answers)
        return 100.0 * min(0.3 * matches, 1.0)
    if rule == "answer_word_in_prediction":
        predicted = _words(prediction)
        return 100.0 if any(word in predicted for answer in answers for word in _words(answer)) else 0.0
    return 100.0 if any(prediction in answer or answer in prediction for answer in answers) else 0.0


def wcd_aggregate(task: str, rows: Sequence[Mapping]) -> dict:
    """``{"wcd_score": mean over the scored rows, "wcd_n": how many, "wcd_skipped": ...}`` from
    evaluation rows (their ``filtered_resps[0]`` and ``target``)."""
    scores = [wcd_score(task, row["filtered_resps"][0], row["target"]) for row in rows]
    kept = [s for s in scores if s is not None]
    return {
        "wcd_score": sum(kept) / len(kept) if kept else float("nan"),
        "wcd_n": len(kept),
        "wcd_skipped": len(scores) - len(kept),
    }


# -- helpers ----------------------------------------------------------------------------------


def mean_of(rows: Iterable[Mapping], field: str) -> float:
    """Mean of one numeric field over rows (as lmms-eval's ``mean`` aggregation)."""
    values = [float(row[field]) for row in rows]
    return sum(values) / len(values) if values else float("nan")
