"""Malformed rows in every input format the readers take: by default the run stops at the first,
named by file and line (or, in SQuAD JSON, by its place in the document); with `BadRows(skip=True)`
(`bertserve train --skip-bad-rows`) they are left out and counted, and the good rows still read."""

from __future__ import annotations

import json
import re

import pytest

from bertserve.data import Columns, load_task_examples
from bertserve.errors import DataError
from bertserve.rows import BadRows

GOOD = '{"text": "fine film", "label": "pos"}\n'
PAIR = '{"text_a": "a cat", "text_b": "a dog", "score": 2.0}\n'
TOKENS = '{"tokens": ["alice", "went"], "tags": ["B-PER", "O"]}\n'
QA = {"question": "where", "context": "to paris", "answers": {"text": ["paris"], "answer_start": [3]}}
BAD_UTF8 = b"caf\xe9"  # Latin-1, not UTF-8


def squad(*answers: tuple[str, int]) -> str:
    qas = [{"id": str(i), "question": "where", "answers": [{"text": t, "answer_start": s}]}
           for i, (t, s) in enumerate(answers)]
    return json.dumps({"data": [{"paragraphs": [{"context": "to paris", "qas": qas}]}]})


# (task, file name, content, columns, where the first bad row is, its reason, good rows, bad rows)
CASES = [
    ("classification", "d.jsonl", GOOD + '{"text": "oops", \n' + GOOD + "[1, 2]\n", Columns(),
     ":2", "not valid JSON", 2, 2),
    ("classification", "d.jsonl", GOOD + '{"text": "x"}\n' + '{"text": " ", "label": "a"}\n', Columns(),
     ":2", "no field 'label'", 1, 2),
    ("classification", "d.jsonl", GOOD.encode() + b'{"text": "' + BAD_UTF8 + b'", "label": "a"}\n', Columns(),
     ":2", "not valid UTF-8 (byte 0xe9", 1, 1),
    ("classification", "d.csv", "text,label\nfine,pos\nbroken,pos,extra\nok,neg\n", Columns(),
     ":3", "3 fields, the header has 2", 2, 1),
    ("classification", "d.csv", b"text,label\nfine,pos\n" + BAD_UTF8 + b",neg\n" + b'"two\nlines",neg\n',
     Columns(), ":3", "not valid UTF-8", 2, 1),
    ("classification", "d.csv", "text,label\nfine,pos\n" + '"' + "x" * 140_000 + '",neg\nok,neg\n', Columns(),
     ":3", "not valid CSV (field larger than field limit", 2, 1),
    ("classification", "d.tsv", "text\tlabel\nfine\tpos\nbroken\tpos\textra\n", Columns(),
     ":3", "3 fields, the header has 2", 1, 1),
    ("classification", "d.tsv", "fine\t0\nodd\t7\n", Columns(text="0", label="1", label_names=("a", "b")),
     ":2", "label id 7 is outside the 2 label names", 1, 1),
    ("similarity", "p.jsonl", PAIR + '{"text_a": "x", "text_b": "y", "score": "high"}\n' + PAIR, Columns(),
     ":2", "the score 'high' is not a number", 2, 1),
    ("similarity", "p.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\t\t2\n", Columns(),
     ":3", "'sentence2' is missing or empty", 1, 1),
    ("ner", "n.jsonl", TOKENS + '{"tokens": ["a", "b"], "tags": ["O"]}\n' + TOKENS, Columns(),
     ":2", "2 tokens but 1 tags", 2, 1),
    ("ner", "n.jsonl", TOKENS + '{"text": "abc", "entities": [{"start": 2, "end": 9, "label": "X"}]}\n',
     Columns(), ":2", "entity {'start': 2, 'end': 9, 'label': 'X'} lies outside the text", 1, 1),
    # CoNLL: a malformed line drops its whole sentence, never just a token
    ("ner", "n.txt", "alice B-PER\nwent O\n\nbob\nwent O\n\ncarol B-PER\n", Columns(),
     ":4", "expected 'token ... tag'", 2, 1),
    ("ner", "n.txt", b"alice B-PER\n\n" + BAD_UTF8 + b" O\nwent O\n", Columns(), ":3", "not valid UTF-8", 1, 1),
    ("qa", "q.jsonl", json.dumps(QA) + "\n" + json.dumps({**QA, "answers": {"text": ["rome"], "answer_start": [3]}})
     + "\n", Columns(), ":2", "answer 'rome' is not the context's text at offset 3", 1, 1),
    ("qa", "q.json", squad(("paris", 3), ("paris", 0)), Columns(),
     ": data[0].paragraphs[0].qas[1] (id 1)", "answer 'paris' is not the context's text at offset 0", 1, 1),
]


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("task, name, content, columns, where, reason, n_good, n_bad", CASES)
def test_bad_row_stops_the_run_or_is_skipped_and_counted(tmp_path, task, name, content, columns, where, reason,
                                                         n_good, n_bad):
    path = write(tmp_path, name, content)
    first = f"{path}{where}: {reason}"
    with pytest.raises(DataError, match=re.escape(first)):
        load_task_examples(task, str(path), columns)

    bad = BadRows(skip=True)
    examples = load_task_examples(task, str(path), columns, bad)
    assert len(examples) == n_good
    assert len(bad.errors) == n_bad
    assert bad.errors[0].startswith(first)
    rows = "row" if n_bad == 1 else "rows"
    assert bad.summary().startswith(f"skipped {n_bad} malformed {rows} (first: {first}")


def test_a_file_with_only_bad_rows_has_no_examples_even_when_skipping(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"no examples found \(skipped 2 malformed rows \(first: .*d\.jsonl:1"):
        load_task_examples("classification", str(path), Columns(), BadRows(skip=True))


def test_a_header_without_the_columns_is_never_skipped(tmp_path):
    path = write(tmp_path, "d.csv", "sentence,y\nfine,pos\n")
    with pytest.raises(DataError, match="no column named 'text'"):
        load_task_examples("classification", str(path), Columns(), BadRows(skip=True))


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write(tmp_path, "d.csv", "\ufefftext,label\nfine,pos\n".encode())
    assert load_task_examples("classification", str(path), Columns()) == [{"text": "fine", "label": "pos"}]


def test_squad_json_that_does_not_parse_names_its_line(tmp_path):
    path = write(tmp_path, "s.json", '{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid JSON")):
        load_task_examples("qa", str(path), Columns())


def test_a_malformed_first_row_is_never_skipped(tmp_path):
    """It may be the header: the next row must not silently become one."""
    for name in ("d.csv", "d.tsv"):
        sep = "," if name.endswith("csv") else "\t"
        path = write(tmp_path, name, b"te\xffxt" + sep.encode() + b"label\nfine" + sep.encode() + b"pos\n")
        with pytest.raises(DataError, match=re.escape(f"{path}:1: not valid UTF-8")):
            load_task_examples("classification", str(path), Columns(), BadRows(skip=True))
