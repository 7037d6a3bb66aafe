"""Zero-shot tasks as lm-evaluation-harness defines them: where the data is, how a record becomes a prompt and choices.

Every loader turns its release format into the record layout of the Hub dataset the harness reads (its *schema*), so
one prompt function serves the Hub copy and the local files alike, and the lm-eval backend can be handed the same
records. Prompts, choices and gold indices follow lm-eval 0.4's task configs (``lm_eval/tasks/<task>/*.yaml``):

| task | harness dataset (split) | context | choices (each after the target delimiter ``" "``) |
|---|---|---|---|
| boolq | aps/super_glue boolq (validation) | ``{passage}\\nQuestion: {question}?\\nAnswer:`` | ``no``, ``yes`` |
| piqa | baber/piqa (validation) | ``Question: {goal}\\nAnswer:`` | ``sol1``, ``sol2`` |
| hellaswag | Rowan/hellaswag (validation) | ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` | the 4 preprocessed endings |
| winogrande | allenai/winogrande winogrande_xl (validation) | the sentence up to ``_`` + each option | the rest of the sentence (one continuation, partial scoring) |
| arc_easy, arc_challenge | allenai/ai2_arc (test) | ``Question: {question}\\nAnswer:`` | ``choices.text`` |
| openbookqa | allenai/openbookqa main (test) | ``{question_stem}`` | ``choices.text`` |

Local files (``data_dir/zeroshot/<task>/`` or ``data_dir/<task>/``, searched recursively for the release names):
PIQA ``valid.jsonl`` + ``valid-labels.lst``; HellaSwag ``hellaswag_val.jsonl`` or the 6-lines-per-item
``hellaswag_val_full.txt(.bz2)``; ARC ``ARC-{Easy,Challenge}-Test.jsonl``; BoolQ ``val.jsonl`` (SuperGLUE) or
``dev.jsonl`` (original: ``title``, ``answer``); WinoGrande ``dev.jsonl``; OpenBookQA ``test.jsonl``.
"""

from __future__ import annotations

import bz2
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TASKS",
    "MultipleChoiceItem",
    "TaskDataError",
    "ZeroShotTask",
    "find_task_files",
    "get_task",
    "load_task_records",
    "register_task",
]

TARGET_DELIMITER = " "


class TaskDataError(ValueError):
    """A task's data cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question as log-likelihood requests: choice ``i`` scores ``continuations[i]`` after ``contexts[i]``.

    ``choices`` are the strings whose character length normalises ``acc_norm`` (lm-eval's ``completion_len``)."""

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations))


@dataclass(frozen=True)
class ZeroShotTask:
    """A registered task: its Hub dataset, release files, loader (release format -> harness schema) and prompt."""

    name: str
    hub: tuple[str, str | None, str]  # dataset id, config, split (lm-eval 0.4.13's)
    files: tuple[tuple[str, ...], ...]  # alternative sets of release file names, first found wins
    read: Callable[[list[str]], list[dict[str, Any]]]  # the found files -> records in the harness's schema
    item: Callable[[dict[str, Any]], MultipleChoiceItem]
    harness_metrics: tuple[str, ...] = ("acc", "acc_norm")  # what the harness reports for the task
    description: str = ""


TASKS: dict[str, ZeroShotTask] = {}


def register_task(task: ZeroShotTask) -> ZeroShotTask:
    """Add ``task`` to the registry under ``task.name`` (later registrations replace earlier ones)."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> ZeroShotTask:
    if name not in TASKS:
        raise ValueError(f"unknown zero-shot task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


# --------------------------------------------------------------------------------------------------- finding data


def _task_folders(data_dir: str, name: str) -> list[str]:
    return [os.path.join(data_dir, "zeroshot", name), os.path.join(data_dir, name)]


def find_task_files(task: ZeroShotTask, data_dir: str | os.PathLike) -> list[str]:
    """Paths of the first complete set of ``task.files`` under ``data_dir/zeroshot/<task>`` or ``data_dir/<task>``
    (searched recursively, so unpacked release archives work as they are)."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir} is not a folder")
    folders = [folder for folder in _task_folders(data_dir, task.name) if os.path.isdir(folder)]
    found: dict[str, str] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                found.setdefault(name, os.path.join(root, name))
    for names in task.files:
        if all(name in found for name in names):
            return [found[name] for name in names]
    wanted = " or ".join(" + ".join(names) for names in task.files)
    where = " or ".join(_task_folders(data_dir, task.name))
    raise FileNotFoundError(f"no {task.name} data under {where}: expected {wanted}")


def load_task_records(
    task: ZeroShotTask | str, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The task's records in the harness's schema (the first ``limit``) and where they came from: the release
    files under ``data_dir``, or the Hub dataset the harness uses when ``data_dir`` is None."""
    task = get_task(task) if isinstance(task, str) else task
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if data_dir is not None:
        paths = find_task_files(task, data_dir)
        records, source = task.read(paths), " + ".join(paths)
    else:
        records, source = _load_hub(task), "/".join(p for p in task.hub if p)
    if not records:
        raise TaskDataError(f"{task.name}: {source} holds no items")
    records = records[:limit] if limit is not None else records
    for index, record in enumerate(records):  # every record must become a valid item: fail now, not mid-run
        try:
            task.item(record)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            where = record.get("_where", f"item {index} of {source}")
            raise TaskDataError(f"{task.name}: {where}: {type(error).__name__}: {error}") from error
    return records, source


def _load_hub(task: ZeroShotTask) -> list[dict[str, Any]]:
    import datasets

    path, config, split = task.hub
    try:
        dataset = datasets.load_dataset(path, config, split=split)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise OSError(
            f"cannot load {task.name} ({path}, {config or 'default'}, {split}) from the Hugging Face Hub: "
            f"{type(error).__name__}: {first}; pass data_dir with the release files to work offline"
        ) from error
    return [dict(row) for row in dataset]


# ------------------------------------------------------------------------------------------------------- readers


def _open_text(path: str):
    return bz2.open(path, "rt", encoding="utf-8") if path.endswith(".bz2") else open(path, encoding="utf-8")


def _jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object names the file and line."""
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskDataError(f"invalid JSON on line {number} of {path}: {error.msg}") from error
            if not isinstance(record, dict):
                raise TaskDataError(f"line {number} of {path} is a JSON {type(record).__name__}, expected an object")
            yield number, record


def _field(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise TaskDataError(f"{where}: missing field {key!r} (fields: {', '.join(sorted(record)) or 'none'})")
    return record[key]


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = _field(record, key, where)
    if not isinstance(value, str):
        raise TaskDataError(f"{where}: field {key!r} is a {type(value).__name__}, expected a string")
    return value


def _where(number: int, path: str) -> str:
    return f"line {number} of {path}"


def _read_piqa(paths: list[str]) -> list[dict[str, Any]]:
    """PIQA: ``valid.jsonl`` (goal, sol1, sol2) with the labels, one per line, in ``valid-labels.lst``."""
    questions, labels_path = paths
    with open(labels_path, encoding="utf-8") as f:
        label_lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for index, (number, record) in enumerate(_jsonl(questions)):
        where = _where(number, questions)
        if index >= len(label_lines):
            raise TaskDataError(f"{where} has no label: {labels_path} has only {len(label_lines)} labels")
        label_number, label = label_lines[index]
        if label not in ("0", "1"):
            raise TaskDataError(f"line {label_number} of {labels_path}: label {label!r} is not 0 or 1")
        records.append(
            {
                "goal": _text(record, "goal", where),
                "sol1": _text(record, "sol1", where),
                "sol2": _text(record, "sol2", where),
                "label": int(label),
                "_where": where,
            }
        )
    if len(label_lines) != len(records):
        raise TaskDataError(f"{labels_path} has {len(label_lines)} labels for {len(records)} items in {questions}")
    return records


def _read_hellaswag(paths: list[str]) -> list[dict[str, Any]]:
    """HellaSwag: the original ``hellaswag_val.jsonl``, or the 6-lines-per-item text (``activity_label: ctx``, the
    gold label, 4 endings), whose context is kept whole as ``ctx_a`` (the harness capitalises ``ctx_b``, which this
    format no longer separates: accuracy can differ from the standard harness by a few tenths of a point)."""
    (path,) = paths
    if ".jsonl" in os.path.basename(path):
        records = []
        for number, record in _jsonl(path):
            where = _where(number, path)
            endings = _field(record, "endings", where)
            if not isinstance(endings, list) or len(endings) != 4:
                raise TaskDataError(f"{where}: 'endings' must be a list of 4 strings")
            records.append(
                {
                    "activity_label": _text(record, "activity_label", where),
                    "ctx_a": _text(record, "ctx_a", where),
                    "ctx_b": _text(record, "ctx_b", where),
                    "endings": endings,
                    "label": str(_field(record, "label", where)),
                    "_where": where,
                }
            )
        return records
    with _open_text(path) as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise TaskDataError(
            f"{path} has {len(lines)} lines, not a multiple of 6 (context, label, 4 endings per item): the item "
            f"starting on line {len(lines) - len(lines) % 6 + 1} is incomplete"
        )
    records = []
    for start in range(0, len(lines), 6):
        first, label, *endings = lines[start : start + 6]
        where = _where(start + 1, path)
        if ": " not in first:
            raise TaskDataError(f"{where}: expected 'activity label: context', got {first[:60]!r}")
        if label.strip() not in ("0", "1", "2", "3"):
            raise TaskDataError(f"line {start + 2} of {path}: label {label!r} is not 0-3")
        activity, context = first.split(": ", 1)
        records.append(
            {
                "activity_label": activity,
                "ctx_a": context,
                "ctx_b": "",
                "endings": endings,
                "label": label.strip(),
                "_where": where,
            }
        )
    return records


def _choices_from_release(question: Any, where: str) -> dict[str, list[str]]:
    choices = question.get("choices") if isinstance(question, dict) else None
    if not isinstance(choices, list) or not choices:
        raise TaskDataError(f"{where}: 'question.choices' must be a non-empty list of {{text, label}}")
    try:
        return {"text": [c["text"] for c in choices], "label": [str(c["label"]) for c in choices]}
    except (KeyError, TypeError) as error:
        raise TaskDataError(f"{where}: every choice needs 'text' and 'label'") from error


def _read_arc(paths: list[str]) -> list[dict[str, Any]]:
    """ARC: the original jsonl (``question{stem, choices[{text, label}]}``, ``answerKey``) or the Hub layout
    (``question`` a string, ``choices{text[], label[]}``)."""
    (path,) = paths
    records = []
    for number, record in _jsonl(path):
        where = _where(number, path)
        question = _field(record, "question", where)
        if isinstance(question, dict):
            stem, choices = _text(question, "stem", where), _choices_from_release(question, where)
        else:
            stem, choices = _text(record, "question", where), _field(record, "choices", where)
        records.append(
            {
                "id": record.get("id", ""),
                "question": stem,
                "choices": choices,
                "answerKey": str(_field(record, "answerKey", where)),
                "_where": where,
            }
        )
    return records


def _read_openbookqa(paths: list[str]) -> list[dict[str, Any]]:
    """OpenBookQA: the release jsonl (``id``, ``question{stem, choices}``, ``answerKey``) or the Hub layout."""
    (path,) = paths
    records = []
    for number, record in _jsonl(path):
        where = _where(number, path)
        if "question_stem" in record:
            stem, choices = _text(record, "question_stem", where), _field(record, "choices", where)
        else:
            question = _field(record, "question", where)
            stem, choices = _text(question, "stem", where), _choices_from_release(question, where)
        records.append(
            {
                "id": record.get("id", ""),
                "question_stem": stem,
                "choices": choices,
                "answerKey": str(_field(record, "answerKey", where)),
                "_where": where,
            }
        )
    return records


_BOOL_LABELS = {True: 1, False: 0, "true": 1, "false": 0, "True": 1, "False": 0}  # 1/0 equal True/False as keys


def _read_boolq(paths: list[str]) -> list[dict[str, Any]]:
    """BoolQ: SuperGLUE layout (``question``, ``passage`` = ``"Title -- passage"``, ``label`` true/false as strings,
    booleans or 0/1) or the original one (``question``, ``title``, ``passage``, ``answer``), whose passage gets the
    SuperGLUE ``"title -- "`` prefix so that both give the harness's prompt."""
    (path,) = paths
    records = []
    for number, record in _jsonl(path):
        where = _where(number, path)
        key = "label" if "label" in record else "answer"
        value = _field(record, key, where)
        if not isinstance(value, (str, bool, int)) or value not in _BOOL_LABELS:
            raise TaskDataError(f"{where}: {key} {value!r} is not true/false")
        passage = _text(record, "passage", where)
        title = record.get("title")
        if key == "answer" and isinstance(title, str) and title and not passage.startswith(f"{title} -- "):
            passage = f"{title} -- {passage}"
        records.append(
            {
                "question": _text(record, "question", where),
                "passage": passage,
                "label": _BOOL_LABELS[value],
                "_where": where,
            }
        )
    return records


def _read_winogrande(paths: list[str]) -> list[dict[str, Any]]:
    """WinoGrande: ``qID, sentence, option1, option2, answer`` (``"1"``/``"2"``); the sentence has one ``_``."""
    (path,) = paths
    records = []
    for number, record in _jsonl(path):
        where = _where(number, path)
        sentence = _text(record, "sentence", where)
        if sentence.count("_") != 1:
            raise TaskDataError(
                f"{where}: the sentence must hold exactly one '_' blank, it holds {sentence.count('_')}"
            )
        answer = str(_field(record, "answer", where))
        if answer not in ("1", "2"):
            raise TaskDataError(f"{where}: answer {answer!r} is not 1 or 2")
        records.append(
            {
                "sentence": sentence,
                "option1": _text(record, "option1", where),
                "option2": _text(record, "option2", where),
                "answer": answer,
                "_where": where,
            }
        )
    return records


# ------------------------------------------------------------------------------------------------------- prompts


def _items(context: str, choices: list[str], gold: int) -> MultipleChoiceItem:
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} outside the {len(choices)} choices")
    return MultipleChoiceItem(
        contexts=[context] * len(choices),
        continuations=[TARGET_DELIMITER + choice for choice in choices],
        choices=list(choices),
        gold=gold,
    )


def _boolq_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    return _items(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(doc["label"]))


def _piqa_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    return _items(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def hellaswag_preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag text (WikiHow bracket tags, double spaces)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + context)
    return _items(query, [hellaswag_preprocess(ending) for ending in doc["endings"]], int(doc["label"]))


def _winogrande_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    """Partial scoring: each option fills the blank in the context, the rest of the sentence is the one
    continuation scored (lm-eval's ``preprocess_winogrande``); acc_norm divides equal continuations, so it is acc."""
    sentence = doc["sentence"]
    blank = sentence.index("_")
    target = sentence[blank + 1 :].strip()
    contexts = [sentence[:blank] + option for option in (doc["option1"], doc["option2"])]
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return MultipleChoiceItem(
        contexts=contexts, continuations=[TARGET_DELIMITER + target] * 2, choices=[target, target], gold=gold
    )


def _arc_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    choices = doc["choices"]
    return _items(
        f"Question: {doc['question']}\nAnswer:", list(choices["text"]), choices["label"].index(doc["answerKey"])
    )


def _openbookqa_item(doc: dict[str, Any]) -> MultipleChoiceItem:
    choices = doc["choices"]
    return _items(doc["question_stem"], list(choices["text"]), choices["label"].index(doc["answerKey"].lstrip()))


register_task(
    ZeroShotTask(
        name="boolq",
        hub=("aps/super_glue", "boolq", "validation"),
        files=(("val.jsonl",), ("dev.jsonl",)),
        read=_read_boolq,
        item=_boolq_item,
        harness_metrics=("acc",),
        description="yes/no questions about a Wikipedia passage",
    )
)
register_task(
    ZeroShotTask(
        name="piqa",
        hub=("baber/piqa", None, "validation"),
        files=(("valid.jsonl", "valid-labels.lst"),),
        read=_read_piqa,
        item=_piqa_item,
        description="physical commonsense: which of two solutions reaches the goal",
    )
)
register_task(
    ZeroShotTask(
        name="hellaswag",
        hub=("Rowan/hellaswag", None, "validation"),
        files=(("hellaswag_val.jsonl",), ("hellaswag_val_full.txt",), ("hellaswag_val_full.txt.bz2",)),
        read=_read_hellaswag,
        item=_hellaswag_item,
        description="commonsense sentence completion, 4 endings",
    )
)
register_task(
    ZeroShotTask(
        name="winogrande",
        hub=("allenai/winogrande", "winogrande_xl", "validation"),
        files=(("dev.jsonl",),),
        read=_read_winogrande,
        item=_winogrande_item,
        harness_metrics=("acc",),
        description="pronoun resolution, 2 options, partial scoring",
    )
)
register_task(
    ZeroShotTask(
        name="arc_easy",
        hub=("allenai/ai2_arc", "ARC-Easy", "test"),
        files=(("ARC-Easy-Test.jsonl",),),
        read=_read_arc,
        item=_arc_item,
        description="grade-school science questions, easy set",
    )
)
register_task(
    ZeroShotTask(
        name="arc_challenge",
        hub=("allenai/ai2_arc", "ARC-Challenge", "test"),
        files=(("ARC-Challenge-Test.jsonl",),),
        read=_read_arc,
        item=_arc_item,
        description="grade-school science questions, challenge set",
    )
)
register_task(
    ZeroShotTask(
        name="openbookqa",
        hub=("allenai/openbookqa", "main", "test"),
        files=(("test.jsonl",),),
        read=_read_openbookqa,
        item=_openbookqa_item,
        description="open-book science questions, 4 choices",
    )
)
