"""`bertserve data qnli`: QNLI-style (question, sentence, relevant) rows from SQuAD v1.1 JSON.

GLUE's QNLI was built this way: each SQuAD context is split into sentences, and a question is
paired with the sentences of its own context; the sentence holding the answer's first character
is the relevant one (label 1), the others are not (label 0). The rows are what
`bertserve train rerank` reads (`query`, `passage`, `label`), plus the question's `id`.

The sentence splitter is deliberately simple and stated: a sentence ends at `.`, `!` or `?`
(optionally followed by closing quotes or brackets) when whitespace and then an upper-case
letter, a digit or an opening quote follow; the end of the context ends the last one. Its known
fault: an abbreviation followed by a capital ("the U.S. Army") ends a sentence there. It never
splits inside a word, nor before a lower-case word ("e.g. this").
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertserve.errors import DataError

_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, leading and trailing spaces left out."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def read_squad(path: Path) -> list[dict[str, Any]]:
    """The articles of a SQuAD JSON file (`data`), or a DataError saying what the file is not."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable SQuAD JSON file ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f'{path}: expected SQuAD v1.1 JSON ({{"data": [{{"paragraphs": ...}}]}})')
    articles: list[dict[str, Any]] = raw["data"]
    return articles


def qnli_rows(path: str | Path, max_negatives: int | None = None, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Rows per question: its relevant sentence and the other sentences of its context (at most
    `max_negatives` of them, drawn with `seed`, when given). Questions whose answer start falls
    outside every sentence (in the spaces between two) are left out."""
    rng = random.Random(seed)
    for article in read_squad(Path(path)):
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            spans = split_sentences(context)
            for qa in paragraph.get("qas", []):
                if not qa.get("answers"):
                    continue
                start = int(qa["answers"][0]["answer_start"])
                hit = next((i for i, (a, b) in enumerate(spans) if a <= start < b), None)
                if hit is None:
                    continue
                negatives = [i for i in range(len(spans)) if i != hit]
                if max_negatives is not None and len(negatives) > max_negatives:
                    negatives = sorted(rng.sample(negatives, max_negatives))
                for i in sorted([hit, *negatives]):
                    a, b = spans[i]
                    yield {"query": qa["question"], "passage": context[a:b], "label": int(i == hit), "id": qa["id"]}


def write_qnli(squad: str | Path, output: str | Path, max_negatives: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Convert one SQuAD file; returns counts for the command line."""
    out = Path(output)
    if out.exists() and out.is_dir():
        raise DataError(f"--output {out} is a directory: give a .jsonl file name")
    rows = questions = positives = 0
    last = None
    with open(out, "w", encoding="utf-8") as fh:
        for row in qnli_rows(squad, max_negatives, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows += 1
            positives += row["label"]
            if row["id"] != last:
                questions += 1
                last = row["id"]
    if not rows:
        raise DataError(f"{squad}: no questions with answers found")
    return {"output": str(out), "questions": questions, "rows": rows, "relevant": positives,
            "candidates_per_question": round(rows / questions, 2)}
