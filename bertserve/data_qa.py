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

from bertserve.data import HF_PREFIX, not_read_from_hf
from bertserve.errors import DataError
from bertserve.rows import BadRows, jsonl_rows


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


def _squad(path: Path, raw: dict[str, Any], bad: BadRows) -> Iterator[dict[str, Any]]:
    """The questions of a SQuAD file; a malformed one is named by its place in the JSON (the file
    is one JSON document, so a line number would say little)."""
    for a, article in enumerate(raw["data"]):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            bad.report(DataError(f"{path}: data[{a}] must be an object with a 'paragraphs' list"))
            continue
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas", []) if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                bad.report(DataError(f"{path}: data[{a}].paragraphs[{p}] must be an object with "
                                     "'context' and a 'qas' list"))
                continue
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    bad.report(DataError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}] must be an object"))
                    continue
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id')})"
                example = None
                with bad.row():
                    example = _example(str(qa.get("id", f"{a}-{p}-{q}")), qa.get("question"),
                                       paragraph.get("context"), qa.get("answers", []),
                                       bool(qa.get("is_impossible", False)), where)
                if example is not None:
                    yield example


def _read_json(path: Path) -> Any:
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None


def _jsonl(path: Path, bad: BadRows) -> list[dict[str, Any]]:
    def build(record: Any, line_no: int, where: str) -> dict[str, Any]:
        if not isinstance(record, dict) or "question" not in record or "context" not in record:
            raise DataError(f"{where}: expected {{'question', 'context', 'answers'}} fields")
        answers = record.get("answers", [])
        empty = answers in ([], None) or (isinstance(answers, dict) and not answers.get("text"))
        return _example(str(record.get("id", line_no)), record["question"], record["context"], answers, empty, where)

    return list(jsonl_rows(path, bad, build))


def load_qa_examples(source: str, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """SQuAD JSON (`.json`) or JSONL; malformed questions go to `bad` (default: raise)."""
    if source.startswith(HF_PREFIX):
        raise DataError(not_read_from_hf(source, "QA questions"))
    bad = bad or BadRows()
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    if path.suffix.lower() == ".json":
        raw = _read_json(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise DataError(f"{source}: expected SQuAD JSON ({{'data': [{{'paragraphs': [...]}}]}}); "
                            "use .jsonl for one question per line")
        examples = list(_squad(path, raw, bad))
    else:
        examples = _jsonl(path, bad)
    if not examples:
        raise DataError(f"{source}: no questions found{bad.note()}")
    return examples
