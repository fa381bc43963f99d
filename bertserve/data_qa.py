"""Reading extractive-QA data into one shape:
`{"id", "question", "context", "answers": [{"text", "start"}]}` (no answers: unanswerable).

Accepted: SQuAD v1.1 and v2.0 JSON (`is_impossible` questions have no answers) and JSONL lines
`{"question", "context", "answers": {"text": [...], "answer_start": [...]}}` (the HF `squad` layout).
Every answer must be the context's text at its offset; a mismatch names the question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertserve.errors import DataError


def _answers(raw: Any, context: str, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, dict):  # {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}: answers needs equally long 'text' and 'answer_start' lists")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'answers' must be a list or a {{'text', 'answer_start'}} object")
    out = []
    for answer in raw:
        try:
            text, start = str(answer["text"]), int(answer.get("answer_start", answer.get("start")))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: each answer needs 'text' and an integer 'answer_start'") from None
        if not text or context[start : start + len(text)] != text:
            raise DataError(f"{where}: answer {text!r} is not the context's text at offset {start}")
        out.append({"text": text, "start": start})
    return out


def _example(qid: str, question: Any, context: Any, answers: Any, impossible: bool, where: str) -> dict[str, Any]:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: the question is empty or not a string")
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{where}: the context is empty or not a string")
    parsed = [] if impossible else _answers(answers, context, where)
    return {"id": qid, "question": question.strip(), "context": context, "answers": parsed}


def _squad(path: Path, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for a, article in enumerate(raw["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id')})"
                yield _example(str(qa.get("id", f"{a}-{p}-{q}")), qa.get("question"), paragraph.get("context"),
                               qa.get("answers", []), bool(qa.get("is_impossible", False)), where)


def load_qa_examples(source: str) -> list[dict[str, Any]]:
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    examples: list[dict[str, Any]] = []
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise DataError(f"{source}: expected SQuAD JSON ({{'data': [{{'paragraphs': [...]}}]}}); "
                            "use .jsonl for one question per line")
        examples = list(_squad(path, raw))
    else:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{source}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or "question" not in record or "context" not in record:
                    raise DataError(f"{where}: expected {{'question', 'context', 'answers'}} fields")
                answers = record.get("answers", [])
                empty = answers in ([], None) or (isinstance(answers, dict) and not answers.get("text"))
                examples.append(_example(str(record.get("id", line_no)), record["question"], record["context"],
                                         answers, empty, where))
    if not examples:
        raise DataError(f"{source}: no questions found")
    return examples
