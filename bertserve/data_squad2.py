"""`bertserve data squad2`: SQuAD v2.0 JSON with unanswerable questions, built from SQuAD v1.1.

A share of the answered questions (`impossible_fraction` of all the file's questions, drawn with
`seed`) is moved from its own paragraph to a paragraph of a *different* article, drawn with the
same seed, and marked `is_impossible: true` with no answers. Every other question stays where it
was, with its answers; no question appears twice. The output is what `bertserve train qa` and
`bertserve evaluate` read as SQuAD v2.0.

Known limits, stated: these unanswerable questions are easier than SQuAD 2.0's own (written by
people to look answerable from the paragraph), since the paragraph is about another topic; and
by chance a paragraph of another article may hold an answer (two articles about related
subjects). Questions already unanswerable in the input stay so, in place, and count towards the
fraction.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bertserve.data_qnli import read_squad
from bertserve.errors import ConfigError, DataError


def with_unanswerable(articles: list[dict[str, Any]], impossible_fraction: float,
                      seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A copy of the SQuAD articles in which a share of the answered questions has moved to a
    paragraph of another article, marked impossible; and the counts."""
    if not 0.0 < impossible_fraction < 1.0:
        raise ConfigError(f"--impossible-fraction {impossible_fraction}: give a share of the questions "
                          "between 0 and 1 (0.33: a third unanswerable)")
    out = [{**a, "paragraphs": [{**p, "qas": [dict(q) for q in p.get("qas", [])]}
                                for p in a.get("paragraphs", [])]} for a in articles]
    places = [(a, p) for a, article in enumerate(out) for p in range(len(article["paragraphs"]))]
    with_paragraphs = sorted({a for a, _ in places})
    if len(with_paragraphs) < 2:
        raise DataError(f"unanswerable questions are paired with another article's paragraph, and the file has "
                        f"{len(with_paragraphs)} article(s) with paragraphs: give a file with two or more")
    questions = [(a, p, q) for a, p in places for q, qa in enumerate(out[a]["paragraphs"][p]["qas"])]
    answered = [(a, p, q) for a, p, q in questions if out[a]["paragraphs"][p]["qas"][q].get("answers")]
    already = len(questions) - len(answered)
    wanted = min(len(answered), max(0, round(impossible_fraction * len(questions)) - already))
    rng = random.Random(seed)
    moving = sorted(rng.sample(answered, wanted))
    by_article: dict[int, list[int]] = {}
    for a, p in places:
        by_article.setdefault(a, []).append(p)
    arrivals: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for a, p, q in moving:
        other = rng.choice([b for b in with_paragraphs if b != a])
        target = (other, rng.choice(by_article[other]))
        qa = out[a]["paragraphs"][p]["qas"][q]
        moved = {k: v for k, v in qa.items() if k not in ("answers", "plausible_answers")}
        arrivals.setdefault(target, []).append({**moved, "answers": [], "is_impossible": True})
    gone = set(moving)
    for a, p in places:
        paragraph = out[a]["paragraphs"][p]
        kept = [{**qa, "is_impossible": not qa.get("answers")} for q, qa in enumerate(paragraph["qas"])
                if (a, p, q) not in gone]
        paragraph["qas"] = kept + arrivals.get((a, p), [])
    counts = {"questions": len(questions), "answerable": len(answered) - wanted,
              "unanswerable": already + wanted, "moved": wanted, "articles": len(with_paragraphs)}
    return out, counts


def write_squad2(squad: str | Path, output: str | Path, impossible_fraction: float = 0.33,
                 seed: int = 0) -> dict[str, Any]:
    """Convert one SQuAD file; returns counts for the command line."""
    out = Path(output)
    if out.exists() and out.is_dir():
        raise DataError(f"--output {out} is a directory: give a .json file name")
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--output {out}: SQuAD v2.0 is one JSON document; give a name ending in .json "
                          "(bertserve reads .jsonl as one question per line)")
    articles = read_squad(Path(squad))
    data, counts = with_unanswerable(articles, impossible_fraction, seed)
    if not counts["questions"]:
        raise DataError(f"{squad}: no questions found")
    out.write_text(json.dumps({"version": "v2.0", "data": data}, ensure_ascii=False), encoding="utf-8")
    return {"output": str(out), **counts,
            "unanswerable_share": round(counts["unanswerable"] / counts["questions"], 4)}
