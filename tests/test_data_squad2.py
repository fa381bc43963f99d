"""`bertserve data squad2`: SQuAD v2.0 JSON with unanswerable questions built from SQuAD v1.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertserve.data_qa import load_qa_examples
from bertserve.data_squad2 import with_unanswerable, write_squad2
from bertserve.errors import ConfigError, DataError
from bertserve_cli import main


def squad_v1(articles: int = 3, paragraphs: int = 2, questions: int = 4) -> dict:
    """Articles whose every question names its article and paragraph in its id and its answer."""
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            context = f"Article {a} paragraph {p}: " + " ".join(f"fact{a}x{p}x{q}" for q in range(questions))
            qas = [{"id": f"{a}-{p}-{q}", "question": f"Which fact is number {q} of {a}/{p}?",
                    "answers": [{"text": f"fact{a}x{p}x{q}", "answer_start": context.index(f"fact{a}x{p}x{q}")}]}
                   for q in range(questions)]
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paras})
    return {"version": "1.1", "data": data}


def where(squad: dict) -> dict[str, tuple[int, int, dict]]:
    """Each question id: the article and paragraph it sits in, and the question."""
    return {qa["id"]: (a, p, qa) for a, article in enumerate(squad["data"])
            for p, paragraph in enumerate(article["paragraphs"]) for qa in paragraph["qas"]}


def test_a_share_of_questions_moves_to_another_articles_paragraph_marked_impossible(tmp_path):
    source = tmp_path / "train.json"
    source.write_text(json.dumps(squad_v1()))
    out = tmp_path / "train-v2.json"
    assert main(["data", "squad2", "--squad", str(source), "--output", str(out),
                 "--impossible-fraction", "0.25", "--seed", "3"]) == 0
    written = json.loads(out.read_text())
    assert written["version"] == "v2.0"
    before, after = where(squad_v1()), where(written)
    assert sorted(before) == sorted(after)  # every question once, none lost or doubled
    moved = [qid for qid, (_, _, qa) in after.items() if qa["is_impossible"]]
    assert len(moved) == round(0.25 * 24) == 6
    for qid, (a, p, qa) in after.items():
        a0, p0, original = before[qid]
        assert qa["question"] == original["question"]
        if qid in moved:
            assert qa["answers"] == [] and a != a0  # a paragraph of a different article
        else:
            assert (a, p) == (a0, p0) and qa["answers"] == original["answers"] and qa["is_impossible"] is False
    # what training and evaluation read: the moved questions with their new context and no answers
    examples = {ex["id"]: ex for ex in load_qa_examples(str(out))}
    assert sum(not ex["answers"] for ex in examples.values()) == 6
    for qid in moved:
        assert examples[qid]["context"].startswith(f"Article {after[qid][0]} ")
    # the seed decides, and decides the same way again
    again = tmp_path / "again.json"
    write_squad2(source, again, 0.25, seed=3)
    assert json.loads(again.read_text()) == written
    write_squad2(source, again, 0.25, seed=4)
    assert json.loads(again.read_text()) != written


def test_questions_already_unanswerable_stay_and_count():
    squad = squad_v1(articles=2, paragraphs=1, questions=5)
    squad["data"][0]["paragraphs"][0]["qas"][0].update(answers=[], is_impossible=True)
    data, counts = with_unanswerable(squad["data"], 0.5, seed=0)
    assert counts == {"questions": 10, "answerable": 5, "unanswerable": 5, "moved": 4, "articles": 2}
    kept = where({"data": data})["0-0-0"]
    assert kept[:2] == (0, 0) and kept[2]["is_impossible"] is True


@pytest.mark.parametrize(("squad", "fraction", "output", "error", "match"), [
    (squad_v1(), 0.0, "o.json", ConfigError, r"between 0 and 1"),
    (squad_v1(), 1.0, "o.json", ConfigError, r"between 0 and 1"),
    (squad_v1(articles=1), 0.3, "o.json", DataError, r"another article's paragraph.*1 article"),
    (squad_v1(), 0.3, "o.jsonl", ConfigError, r"ending in \.json"),
    ([1, 2], 0.3, "o.json", DataError, r"expected SQuAD"),
])
def test_what_cannot_be_converted_is_refused_saying_why(tmp_path, squad, fraction, output, error, match):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(squad))
    with pytest.raises(error, match=match):
        write_squad2(source, tmp_path / output, fraction)
    assert not Path(tmp_path / output).exists()
