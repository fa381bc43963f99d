from __future__ import annotations

import pytest

from bertserve.data import Columns, load_examples
from bertserve.errors import DataError


def test_jsonl_text_label_needs_no_flags(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n\n{"text": "yo", "label": ["a", "b"]}\n')
    assert load_examples(str(path), Columns()) == [
        {"text": "hi", "label": "a"},
        {"text": "yo", "label": ["a", "b"]},
    ]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n{"text": "oops", \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_examples(str(path), Columns())


def test_missing_label_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n{"text": "x"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: no field 'label'"):
        load_examples(str(path), Columns())


def test_csv_with_named_columns_and_quotes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,sentence,y\n1,"hello, world",pos\n2,"she said ""no""",neg\n')
    rows = load_examples(str(path), Columns(text="sentence", label="y"))
    assert rows == [{"text": "hello, world", "label": "pos"}, {"text": 'she said "no"', "label": "neg"}]


def test_header_mismatch_says_how_to_fix(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("ham\tGo until jurong point\nspam\tFree entry\n")
    with pytest.raises(DataError, match="--text-column 1 --label-column 0"):
        load_examples(str(path), Columns())


def test_tsv_by_position_keeps_bare_quotes_and_unquotes_csv_quoting(tmp_path):
    # SMS-spam style bare quotes stay; GoEmotions style CSV-quoted fields are unquoted.
    path = tmp_path / "d.tsv"
    path.write_text('ham\tHe said "hi" to me\nspam\t"A ""quoted"" text"\n')
    rows = load_examples(str(path), Columns(text="1", label="0"))
    assert rows[0]["text"] == 'He said "hi" to me'
    assert rows[1]["text"] == 'A "quoted" text'


def test_wrong_field_count_names_line(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\nfine\t1\nbroken\t1\textra\n")
    with pytest.raises(DataError, match=r"d\.tsv:3: 3 fields, the header has 2"):
        load_examples(str(path), Columns())


def test_label_separator_and_label_names(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("so happy\t0,2\tid1\nmeh\t1\tid2\n")
    cols = Columns(text="0", label="1", label_separator=",", label_names=("joy", "neutral", "love"))
    assert load_examples(str(path), cols) == [
        {"text": "so happy", "label": ["joy", "love"]},
        {"text": "meh", "label": ["neutral"]},
    ]


def test_label_id_out_of_range(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("x\t5\n")
    with pytest.raises(DataError, match="outside the 2 label names"):
        load_examples(str(path), Columns(text="0", label="1", label_names=("a", "b")))


def test_empty_text_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "  ", "label": "a"}\n')
    with pytest.raises(DataError, match="empty"):
        load_examples(str(path), Columns())


def test_missing_file():
    with pytest.raises(DataError, match="no such file"):
        load_examples("/nonexistent/x.csv", Columns())
