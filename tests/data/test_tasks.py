"""Benchmark loaders: tiny fixtures in each official format and as local HF copies.

The builders write a few questions per benchmark with tiny images whose colour
identifies them, in the official layout and with the column names of the lmms-lab
copies lmms-eval uses; the tests check what the loaders read against the hand-written
content, and every error case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from interp.data.synthetic import SyntheticVQA
from interp.data.tasks import (
    TASKS,
    DataFormatError,
    DataNotFoundError,
    EmptyTaskError,
    MissingImageError,
    TaskDataError,
    UnknownTaskError,
    load_task,
)

from ..conftest import colour, save_image, write_pope

ANSWERS_A = [
    "coca cola",
    "coca cola",
    "coke",
    "coca cola",
    "coca-cola",
    "coca cola",
    "pepsi",
    "coca cola",
    "coke",
    "cola",
]
ANSWERS_B = ["two", "2", "2", "two", "3", "2", "2", "two", "2", "2"]


def pixel(doc) -> tuple[int, int, int]:
    return doc.load_image().getpixel((0, 0))


def close(a, b, tol=6) -> bool:  # JPEG is lossy
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def write_json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


# -- HF copies -------------------------------------------------------------------------------------


def hf_dataset(columns: dict, images: list[int] | None = None):
    """A datasets.Dataset with ``columns`` and, if given, an ``image`` column of fixture images."""
    import datasets

    data = dict(columns)
    if images is not None:
        data["image"] = [Image.new("RGB", (12, 10), colour(i)) for i in images]
    return datasets.Dataset.from_dict(data)


def save_hf(dataset, directory: Path, split: str, how: str) -> Path:
    """Save as ``save_to_disk`` of a DatasetDict (how="disk") or as Hub-style parquet (how="parquet")."""
    import datasets
    from datasets import Image as ImageFeature

    if "image" in dataset.column_names:
        dataset = dataset.cast_column("image", ImageFeature())
    if how == "disk":
        datasets.DatasetDict({split: dataset}).save_to_disk(str(directory))
    else:
        (directory / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(directory / "data" / f"{split}-00000-of-00001.parquet"))
    return directory


# -- official-format builders ------------------------------------------------------------------------


def write_textvqa(root: Path) -> Path:
    data = [
        {
            "question_id": 34602,
            "question": "what brand is this BOTTLE?",
            "image_id": "img_a",
            "answers": ANSWERS_A,
            "image_classes": ["Bottle"],
            "set_name": "val",
        },
        {
            "question_id": 34603,
            "question": "how many cans?",
            "image_id": "img_b",
            "answers": ANSWERS_B,
            "set_name": "val",
        },
    ]
    write_json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})
    save_image(root / "train_images" / "img_a.jpg", 1)
    save_image(root / "train_images" / "img_b.jpg", 2)
    return root


def _coco_vqa(root: Path, questions: str, annotations: str) -> Path:
    qs = [
        {"question_id": 262148000, "image_id": 262148, "question": "What colour is the bus?"},
        {"question_id": 42000, "image_id": 42, "question": "How many cats?"},
    ]
    answers = [
        [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(ans)]
        for ans in (["red"] * 7 + ["orange"] * 3, ANSWERS_B)
    ]
    anns = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "answers": a,
            "answer_type": t,
            "question_type": "what",
            "multiple_choice_answer": m,
        }
        for q, a, t, m in zip(qs, answers, ["other", "number"], ["red", "2"])
    ]
    write_json(root / questions, {"questions": qs})
    write_json(root / annotations, {"annotations": list(reversed(anns))})  # order comes from the questions
    save_image(root / "val2014" / "COCO_val2014_000000262148.jpg", 3)
    save_image(root / "val2014" / "COCO_val2014_000000000042.jpg", 4)
    return root


def write_vqav2(root: Path) -> Path:
    return _coco_vqa(root, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json")


def write_okvqa(root: Path) -> Path:
    return _coco_vqa(root, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json")


def write_vizwiz(root: Path) -> Path:
    entries = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "what is THIS?",
            "answer_type": "other",
            "answerable": 1,
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in ANSWERS_A],
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "Which color?",
            "answer_type": "unanswerable",
            "answerable": 0,
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
        },
    ]
    write_json(root / "Annotations" / "val.json", entries)
    save_image(root / "val" / "VizWiz_val_00000000.jpg", 5)
    save_image(root / "val" / "VizWiz_val_00000001.jpg", 6)
    return root


def write_gqa(root: Path) -> Path:
    questions = {
        "20968379": {
            "imageId": "n288870",
            "question": "Is the tray on the left?",
            "answer": "yes",
            "fullAnswer": "Yes, the tray is on the left.",
            "types": {"structural": "verify"},
        },
        "201640614": {
            "imageId": "n179136",
            "question": "What is the man holding?",
            "answer": "racket",
            "fullAnswer": "The man is holding a racket.",
        },
    }
    write_json(root / "testdev_balanced_questions.json", questions)
    save_image(root / "images" / "n288870.jpg", 7)
    save_image(root / "images" / "n179136.jpg", 8)
    return root


def write_docvqa(root: Path) -> Path:
    data = [
        {
            "questionId": 52212,
            "question": "Whose signature is given?",
            "image": "documents/txpn0095_1.png",
            "docId": 1968,
            "ucsf_document_id": "txpn0095",
            "ucsf_document_page_no": "1",
            "answers": ["Edward R. Shannon", "Edward Shannon"],
            "data_split": "val",
            "question_types": ["handwritten"],
        },
        {
            "questionId": 52213,
            "question": "What is the date?",
            "image": "documents/abc_2.png",
            "docId": 1969,
            "answers": ["June 1, 1976"],
            "data_split": "val",
        },
    ]
    write_json(root / "val_v1.0.json", {"dataset_name": "docvqa", "dataset_split": "val", "data": data})
    save_image(root / "documents" / "txpn0095_1.png", 9)
    save_image(root / "documents" / "abc_2.png", 10)
    return root


def write_mme(root: Path) -> Path:
    base = root / "MME_Benchmark_release_version"
    # side by side ("flat"): existence/<img>.jpg + existence/<img>.txt, "question\tanswer"
    save_image(base / "existence" / "000000006040.jpg", 13)
    (base / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n\n"
    )
    # images/ + questions_answers_YN/ ("split"), a .png image
    save_image(base / "artwork" / "images" / "10002.png", 14)
    (base / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (base / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Does this artwork exist in the form of painting? Please answer yes or no.\tYes\n"
        "Does this artwork exist in the form of glassware? Please answer yes or no.\tNo\n"
    )
    # the eval tool's three-column lines (image, question, answer, trailing tab)
    save_image(base / "code_reasoning" / "0020.png", 15)
    (base / "code_reasoning" / "0020.txt").write_text(
        "0020.png\tWill the code print 5? Please answer yes or no.\tNo\t\n"
        "0020.png\tWill the code print 6? Please answer yes or no.\tYes\t\n"
    )
    return root


# -- official formats ---------------------------------------------------------------------------------


def test_registry_lists_every_benchmark():
    assert list(TASKS) == ["textvqa", "vqav2", "okvqa", "vizwiz", "gqa", "docvqa", "pope", "mme", "synthetic"]


def test_textvqa_official(tmp_path):
    task = load_task("textvqa", write_textvqa(tmp_path))
    assert task.split == "validation" and "official" in task.source
    assert [d.doc_id for d in task] == [34602, 34603]
    doc = task[0]
    assert doc.targets == tuple(ANSWERS_A) and doc.metadata["image_id"] == "img_a"
    assert close(pixel(doc), colour(1))
    # lmms-eval capitalises the question (lower-casing the rest), then the suffix on a new line
    assert task.prompt(doc) == "What brand is this bottle?\nAnswer the question using a single word or phrase."
    assert task.prompt(doc, "") == "What brand is this bottle?"
    # coca cola 5 times after normalisation ("coca-cola" -> "coca cola"): 6 humans -> 1.0
    assert task.score(doc, "Coca Cola.") == {"vqa_accuracy": 1.0}
    assert task.score(doc, "coke") == {"vqa_accuracy": pytest.approx(0.6)}
    assert task.score(task[1], "Two") == {"vqa_accuracy": 1.0}


@pytest.mark.parametrize("name, writer", [("vqav2", write_vqav2), ("okvqa", write_okvqa)])
def test_coco_vqa_official(tmp_path, name, writer):
    task = load_task(name, writer(tmp_path))
    assert [d.doc_id for d in task] == [262148000, 42000]
    doc = task[0]
    assert doc.question == "What colour is the bus?"
    assert doc.targets == ("red",) * 7 + ("orange",) * 3
    assert doc.metadata == {
        "image_id": 262148,
        "answer_type": "other",
        "question_type": "what",
        "multiple_choice_answer": "red",
    }
    assert close(pixel(doc), colour(3)) and close(pixel(task[1]), colour(4))
    assert task.score(doc, "orange")["vqa_accuracy"] == pytest.approx(0.9)
    assert task.score(task[1], "3")["vqa_accuracy"] == pytest.approx(0.3)


def test_okvqa_and_vizwiz_default_to_lmms_eval_unanswerable_prompt(tmp_path):
    task = load_task("okvqa", write_okvqa(tmp_path))
    assert task.prompt(task[0]) == (
        "What colour is the bus?\nWhen the provided information is insufficient, "
        "respond with 'Unanswerable'.\nAnswer the question using a single word or phrase."
    )


def test_vizwiz_official(tmp_path):
    task = load_task("vizwiz", write_vizwiz(tmp_path))
    assert [d.doc_id for d in task] == ["VizWiz_val_00000000", "VizWiz_val_00000001"]
    assert task[1].targets == ("unanswerable",) * 10
    assert task[1].metadata == {"answer_type": "unanswerable", "answerable": 0}
    assert close(pixel(task[1]), colour(6))
    assert task.prompt(task[0], "").startswith("What is this?")
    assert task.score(task[1], "Unanswerable")["vqa_accuracy"] == 1.0


def test_gqa_official(tmp_path):
    task = load_task("gqa", write_gqa(tmp_path))
    assert task.split == "testdev"
    assert [d.doc_id for d in task] == ["20968379", "201640614"]
    assert task[0].targets == ("yes",) and task[0].metadata["image_id"] == "n288870"
    assert close(pixel(task[1]), colour(8))
    assert task.score(task[1], "Racket.") == {"exact_match": 1.0}
    assert task.score(task[1], "a racket") == {"exact_match": 0.0}


def test_docvqa_official(tmp_path):
    task = load_task("docvqa", write_docvqa(tmp_path))
    assert [d.doc_id for d in task] == [52212, 52213]
    assert task[0].targets == ("Edward R. Shannon", "Edward Shannon")
    assert task.benchmark.max_new_tokens == 32
    assert close(pixel(task[0]), colour(9))
    assert task.score(task[0], "edward shannon") == {"anls": 1.0}
    assert task.score(task[1], "June 1 1976")["anls"] == pytest.approx(1 - 1 / 12)


def test_pope_official_splits(tmp_path):
    root = write_pope(tmp_path)
    task = load_task("pope", root)
    assert task.split == "all"
    assert [d.doc_id for d in task] == [
        "adversarial-1",
        "adversarial-2",
        "popular-1",
        "popular-2",
        "random-1",
        "random-2",
    ]
    assert task[0].question == "Is there a snowboard in the image? "
    assert task.prompt(task[0], "") == "Is there a snowboard in the image?"  # stripped
    assert close(pixel(task[1]), colour(12))
    random = load_task("pope", root, split="random")
    assert [d.doc_id for d in random] == ["random-1", "random-2"]
    assert random[1].metadata == {"category": "random", "image_source": "COCO_val2014_000000210789"}
    assert random.score(random[1], "No")["correct"] == 1.0


def test_mme_official_layouts(tmp_path):
    task = load_task("mme", write_mme(tmp_path))
    ids = [d.doc_id for d in task]
    assert ids == [
        "existence/000000006040.jpg#0",
        "existence/000000006040.jpg#1",
        "artwork/10002.png#0",
        "artwork/10002.png#1",
        "code_reasoning/0020.png#0",
        "code_reasoning/0020.png#1",
    ]
    assert [d.targets[0] for d in task] == ["Yes", "No", "Yes", "No", "No", "Yes"]
    assert task[2].metadata == {"category": "artwork", "image_id": "artwork/10002.png"}
    assert close(pixel(task[2]), colour(14)) and close(pixel(task[5]), colour(15))
    # lmms-eval swaps the question's own yes/no instruction for the suffix
    assert task.prompt(task[0]) == "Is there a train in this image?\nAnswer the question using a single word or phrase."
    assert task.prompt(task[0], "") == "Is there a train in this image? Please answer yes or no."
    rows = [task.score(d, reply) for d, reply in zip(task, ["Yes", "No", "Yes", "Yes", "No", "yes"])]
    result = task.aggregate(rows)
    assert result["categories"]["artwork"]["score"] == pytest.approx(50.0)  # acc 50 + acc+ 0
    assert result["mme_perception_score"] == pytest.approx(250.0)  # existence 200 + artwork 50
    assert result["mme_cognition_score"] == pytest.approx(200.0)


def test_synthetic_task_wraps_the_benchmark():
    task = load_task("synthetic", limit=6)
    samples = SyntheticVQA("test", seed=0)[:6]
    assert [d.doc_id for d in task] == [s.id for s in samples]
    assert [d.targets for d in task] == [(s.answer,) for s in samples]
    assert task[3].metadata == {"kind": samples[3].kind, "boxes": [list(b) for b in samples[3].boxes]}
    assert task[2].load_image().tobytes() == samples[2].image.tobytes()
    assert task.benchmark.prompt_suffix == "" and task.prompt(task[0]) == samples[0].question
    assert task.score(task[0], samples[0].answer.upper() + ".") == {"correct": 1.0, "kind": samples[0].kind}
    assert [d.doc_id for d in load_task("synthetic", split="val", limit=2)] == ["val-000000", "val-000001"]


# -- local HF copies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["disk", "parquet"])
def test_textvqa_hf_copy_equals_official(tmp_path, how):
    official = load_task("textvqa", write_textvqa(tmp_path / "official"))
    columns = {
        "image_id": ["img_a", "img_b"],
        "question_id": [34602, 34603],
        "question": [d.question for d in official],
        "answers": [list(d.targets) for d in official],
        "ocr_tokens": [["coca", "cola"], []],
        "set_name": ["val", "val"],
    }
    root = save_hf(hf_dataset(columns, images=[1, 2]), tmp_path / "hf", "validation", how)
    task = load_task("textvqa", root)
    assert "HF copy" in task.source
    assert [(d.doc_id, d.question, d.targets) for d in task] == [(d.doc_id, d.question, d.targets) for d in official]
    assert pixel(task[1]) == colour(2)  # PNG-encoded by datasets: lossless


@pytest.mark.parametrize("name", ["vqav2", "okvqa"])
def test_coco_vqa_hf_copies(tmp_path, name):
    answers = ["red"] * 7 + ["orange"] * 3
    answer_column = (
        [[{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]]
        if name == "vqav2"
        else [answers]
    )  # lmms-lab/VQAv2 keeps dicts, OK-VQA strings
    columns = {
        "question_id": [262148000],
        "question": ["What colour is the bus?"],
        "answers": answer_column,
        "image_id": [262148],
        "answer_type": ["other"],
        "question_type": ["what"],
    }
    split = "validation" if name == "vqav2" else "val2014"
    task = load_task(name, save_hf(hf_dataset(columns, images=[3]), tmp_path, split, "parquet"))
    assert task[0].doc_id == 262148000 and task[0].targets == tuple(answers)
    assert task[0].metadata == {"image_id": 262148, "answer_type": "other", "question_type": "what"}
    assert task.score(task[0], "Orange")["vqa_accuracy"] == pytest.approx(0.9)


def test_vizwiz_hf_copy(tmp_path):
    columns = {
        "question_id": ["VizWiz_val_00000000"],
        "question": ["What is this?"],
        "answers": [ANSWERS_A],
        "category": ["other"],
    }
    task = load_task("vizwiz", save_hf(hf_dataset(columns, images=[5]), tmp_path, "val", "disk"))
    assert task[0].doc_id == "VizWiz_val_00000000" and task[0].metadata == {"answer_type": "other"}
    assert task[0].targets == tuple(ANSWERS_A) and pixel(task[0]) == colour(5)


def test_gqa_hf_copy_with_separate_image_config(tmp_path):
    instructions = hf_dataset(
        {
            "id": ["20968379", "201640614"],
            "imageId": ["n288870", "n_missing"],
            "question": ["Is the tray on the left?", "What is the man holding?"],
            "answer": ["yes", "racket"],
            "fullAnswer": ["Yes.", "A racket."],
        }
    )
    images = hf_dataset({"id": ["n999", "n288870"]}, images=[0, 7])
    save_hf(instructions, tmp_path / "testdev_balanced_instructions", "testdev", "parquet")
    save_hf(images, tmp_path / "testdev_balanced_images", "testdev", "disk")
    task = load_task("gqa", tmp_path)
    assert [d.doc_id for d in task] == ["20968379", "201640614"]
    assert pixel(task[0]) == colour(7)  # found through imageId -> the images config
    with pytest.raises(MissingImageError, match="n_missing"):
        task[1].load_image()
    with pytest.raises(MissingImageError, match="1 of 2 gqa images are missing"):
        load_task("gqa", tmp_path, check_images=True)


def test_gqa_hf_copy_needs_the_image_config(tmp_path):
    instructions = hf_dataset({"id": ["1"], "imageId": ["n1"], "question": ["q?"], "answer": ["yes"]})
    save_hf(instructions, tmp_path / "testdev_balanced_instructions", "testdev", "disk")
    with pytest.raises(DataNotFoundError, match="testdev_balanced_images"):
        load_task("gqa", tmp_path)


def test_docvqa_hf_copy_in_its_config_directory(tmp_path):
    columns = {
        "questionId": ["52212"],
        "question": ["Whose signature is given?"],
        "question_types": [["handwritten"]],
        "docId": [1968],
        "ucsf_document_id": ["txpn0095"],
        "ucsf_document_page_no": ["1"],
        "answers": [["Edward R. Shannon", "Edward Shannon"]],
        "data_split": ["val"],
    }
    save_hf(hf_dataset(columns, images=[9]), tmp_path / "DocVQA", "validation", "parquet")
    save_hf(
        hf_dataset({"questionId": ["1"], "question": ["other config"], "answers": [["x"]]}, images=[0]),
        tmp_path / "InfographicVQA",
        "validation",
        "parquet",
    )
    task = load_task("docvqa", tmp_path)
    assert len(task) == 1 and task[0].doc_id == 52212 and task[0].question == "Whose signature is given?"
    assert task[0].metadata == {"docId": 1968, "question_types": ["handwritten"]}


def test_pope_hf_copy_filters_categories(tmp_path):
    columns = {
        "id": ["0", "1", "2", "3"],
        "question_id": ["1", "2", "1", "1"],
        "question": ["Is there a dog in the image?"] * 4,
        "answer": ["yes", "no", "no", "yes"],
        "image_source": ["COCO_val2014_000000310196"] * 4,
        "category": ["adversarial", "adversarial", "popular", "random"],
    }
    root = save_hf(hf_dataset(columns, images=[0, 1, 2, 3]), tmp_path, "test", "parquet")
    assert [d.doc_id for d in load_task("pope", root)] == ["adversarial-1", "adversarial-2", "popular-1", "random-1"]
    popular = load_task("pope", root, split="popular")
    assert [d.doc_id for d in popular] == ["popular-1"] and pixel(popular[0]) == colour(2)


def test_mme_hf_copy_numbers_the_questions_of_an_image(tmp_path):
    columns = {
        "question_id": ["code_reasoning/0020.png"] * 2 + ["existence/1.jpg"] * 2,
        "question": ["q1? Please answer yes or no.", "q2? Please answer yes or no.", "q3?", "q4?"],
        "answer": ["Yes", "No", "No", "Yes"],
        "category": ["code_reasoning", "code_reasoning", "existence", "existence"],
    }
    task = load_task("mme", save_hf(hf_dataset(columns, images=[1, 1, 2, 2]), tmp_path, "test", "disk"))
    assert [d.doc_id for d in task] == [
        "code_reasoning/0020.png#0",
        "code_reasoning/0020.png#1",
        "existence/1.jpg#0",
        "existence/1.jpg#1",
    ]
    assert task[1].metadata == {"category": "code_reasoning", "image_id": "code_reasoning/0020.png"}


def test_official_files_win_over_an_hf_copy_in_the_same_directory(tmp_path):
    write_textvqa(tmp_path)
    save_hf(
        hf_dataset({"question_id": [1], "question": ["q"], "answers": [["a"]]}, images=[0]),
        tmp_path,
        "validation",
        "parquet",
    )
    assert "official" in load_task("textvqa", tmp_path).source


# -- errors ---------------------------------------------------------------------------------------------


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(UnknownTaskError, match="unknown task 'coco'; choose from textvqa, vqav2"):
        load_task("coco", tmp_path)
    with pytest.raises(TaskDataError, match="pope has no split 'test'; use one of all, adversarial"):
        load_task("pope", tmp_path, split="test")
    with pytest.raises(TaskDataError, match="limit must be a positive integer"):
        load_task("synthetic", limit=0)


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"task gqa needs a data directory \(--data-dir\)"):
        load_task("gqa")
    with pytest.raises(DataNotFoundError, match="data directory not found: .*nowhere"):
        load_task("gqa", tmp_path / "nowhere")


@pytest.mark.parametrize("name", [n for n in TASKS if n != "synthetic"])
def test_empty_directory_lists_what_was_expected(tmp_path, name):
    benchmark = TASKS[name]
    with pytest.raises(DataNotFoundError) as error:
        load_task(name, tmp_path)
    message = str(error.value)
    assert "\n" not in message and benchmark.official_layout in message and benchmark.hf_dataset in message


def test_wrong_formats(tmp_path):
    (tmp_path / "TextVQA_0.5.1_val.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="TextVQA_0.5.1_val.json is not valid JSON"):
        load_task("textvqa", tmp_path)
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"questions": []})
    with pytest.raises(DataFormatError, match="has no 'data' field"):
        load_task("textvqa", tmp_path)
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [{"question_id": 1, "question": "q", "image_id": "i"}]})
    with pytest.raises(DataFormatError, match="entry 0 has no 'answers' field"):
        load_task("textvqa", tmp_path)
    write_json(
        tmp_path / "TextVQA_0.5.1_val.json",
        {"data": [{"question_id": 1, "question": "q", "image_id": "i", "answers": []}]},
    )
    with pytest.raises(DataFormatError, match="no ground-truth answers"):
        load_task("textvqa", tmp_path)


def test_wrong_hf_copies(tmp_path):
    save_hf(hf_dataset({"question_id": [1], "text": ["q"]}, images=[0]), tmp_path / "a", "validation", "disk")
    with pytest.raises(DataFormatError, match="is not a TextVQA copy: it has no 'question', 'answers' column"):
        load_task("textvqa", tmp_path / "a")
    save_hf(
        hf_dataset({"question_id": [1], "question": ["q"], "answers": [["a"]]}, images=[0]),
        tmp_path / "b",
        "train",
        "disk",
    )
    with pytest.raises(DataFormatError, match="holds splits train, not 'validation'"):
        load_task("textvqa", tmp_path / "b")
    save_hf(
        hf_dataset({"question_id": [1], "question": ["q"], "answers": [["a"]]}, images=[0]),
        tmp_path / "c",
        "test",
        "parquet",
    )
    with pytest.raises(DataFormatError, match=r"no parquet file for split 'validation' .*found: test"):
        load_task("textvqa", tmp_path / "c")


def test_coco_vqa_needs_both_files(tmp_path):
    write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": []})
    with pytest.raises(DataFormatError, match="not .*v2_mscoco_val2014_annotations.json"):
        load_task("vqav2", tmp_path)


def test_pope_all_needs_every_category(tmp_path):
    with pytest.raises(DataNotFoundError, match="needs coco_pope_adversarial.json, coco_pope_popular.json"):
        load_task("pope", write_pope(tmp_path, categories=("random",)))
    assert len(load_task("pope", tmp_path, split="random")) == 2


def test_mme_bad_lines(tmp_path):
    base = tmp_path / "existence"
    save_image(base / "1.jpg", 0)
    (base / "1.txt").write_text("Is there a cat?\tMaybe\n")
    with pytest.raises(DataFormatError, match=r"1.txt:1: the answer is 'Maybe', not Yes or No"):
        load_task("mme", tmp_path)
    (base / "1.txt").write_text("Is there a cat? Yes\n")
    with pytest.raises(DataFormatError, match=r"1.txt:1: expected 'question<TAB>answer'"):
        load_task("mme", tmp_path)


def test_empty_set(tmp_path):
    write_json(tmp_path / "val_v1.0.json", {"data": []})
    with pytest.raises(EmptyTaskError, match="DocVQA validation from official files in .* holds no questions"):
        load_task("docvqa", tmp_path)


def test_duplicate_question_ids(tmp_path):
    write_textvqa(tmp_path)
    content = json.loads((tmp_path / "TextVQA_0.5.1_val.json").read_text())
    content["data"][1]["question_id"] = 34602
    write_json(tmp_path / "TextVQA_0.5.1_val.json", content)
    with pytest.raises(DataFormatError, match="has question id 34602 twice"):
        load_task("textvqa", tmp_path)


def test_missing_image_named_when_read_or_checked(tmp_path):
    root = write_pope(tmp_path)
    missing = root / "val2014" / "COCO_val2014_000000210789.jpg"
    missing.unlink()
    task = load_task("pope", root, split="random")  # lazy: loading does not read images
    assert close(pixel(task[0]), colour(11))
    with pytest.raises(MissingImageError, match=f"doc 'random-2': image file not found: {missing}"):
        task[1].load_image()
    with pytest.raises(MissingImageError, match=f"1 of 2 pope images are missing, the first: {missing}"):
        load_task("pope", root, split="random", check_images=True)
    (missing.parent / missing.name).write_text("not an image")
    with pytest.raises(MissingImageError, match="cannot read image file"):
        task[1].load_image()


def test_empty_hf_image_cell(tmp_path):
    import datasets

    dataset = hf_dataset({"question_id": [1], "question": ["q"], "answers": [["a"]]})
    dataset = dataset.add_column("image", [None]).cast_column("image", datasets.Image())
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path))
    task = load_task("textvqa", tmp_path)
    with pytest.raises(MissingImageError, match="row 0 of saved dataset .* has no image"):
        task[0].load_image()
