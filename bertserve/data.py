"""Reading labeled data: CSV, TSV, JSONL, or a Hugging Face dataset (a local one, or from the hub).

Every malformed row is reported with its file and line, and the message says how to fix it;
`bertserve.rows.BadRows(skip=True)` (`bertserve train --skip-bad-rows`) leaves such rows out and
counts them instead. Readers yield plain dicts, so training, export's parity gate and
`bertserve evaluate` all see the same examples from the same file.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertserve.artifact import sha256_file
from bertserve.errors import DataError
from bertserve.rows import BadRows, decoded_lines, jsonl_rows

HF_PREFIX = "hf:"
_QUOTED = re.compile(r'^"(?:[^"]|"")*"$', re.DOTALL)


@dataclass(frozen=True)
class Columns:
    """Which fields hold what. Names for files with a header or JSONL; 0-based numbers otherwise."""

    text: str = "text"
    label: str = "label"
    # the second text of a pair: similarity's second sentence, or for classification the text read
    # with `text` as one pair input (JSONL rows with a `text_pair` field are pairs without naming it)
    text_pair: str | None = None
    header: bool | None = None  # None: a header is expected when columns are given by name
    label_separator: str | None = None  # "a,b" -> ["a", "b"] for multi-label delimited files
    label_names: tuple[str, ...] | None = None  # integer label ids -> names
    file_format: str | None = None  # "csv" | "tsv" | "jsonl"; None: from the extension
    documents: bool = False  # NER, CoNLL files: one text per document (its sentences joined)

    @property
    def by_position(self) -> bool:
        return self.text.isdigit() and self.label.isdigit()


def describe_source(source: str) -> dict[str, Any]:
    """Provenance for the model card: where the data came from and its checksum."""
    if source.startswith(HF_PREFIX):
        directory = hf_directory(source)
        if directory is None:
            return {"source": source, "sha256": None}
        split = source[len(HF_PREFIX) :].split(":")[1:]
        return {"source": ":".join([f"{HF_PREFIX}{directory.resolve()}", *split]), "sha256": sha256_tree(directory)}
    return {"source": str(Path(source).resolve()), "sha256": sha256_file(source)}


def sha256_tree(directory: Path) -> str:
    """One checksum of a directory's files: their relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory).as_posix()}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def detect_format(path: Path, forced: str | None = None) -> str:
    if forced:
        if forced not in ("csv", "tsv", "jsonl"):
            raise DataError(f"unknown format {forced!r}: use csv, tsv or jsonl")
        return forced
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first else "csv"


def _unquote(field: str) -> str:
    # TSV files in the wild mix bare quotes (STS-B, SMS spam) with CSV-quoted fields
    # (GoEmotions). A field is unquoted only when it is quoted in exactly the CSV way.
    if len(field) >= 2 and _QUOTED.match(field):
        return field[1:-1].replace('""', '"')
    return field


def _delimited_rows(path: Path, fmt: str, bad: BadRows) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank row. A malformed first row stops the run even when
    skipping: it may be the header, and the next row must not silently become one."""
    rows = 0

    def malformed(line_no: int, problem: str) -> None:
        error = DataError(f"{path}:{line_no}: {problem}")
        if rows == 0:
            raise error
        bad.report(error)

    if fmt == "tsv":
        for line_no, line, problem in decoded_lines(path):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if problem:
                malformed(line_no, problem)
                continue
            rows += 1
            yield line_no, [_unquote(cell) for cell in line.split("\t")]
        return
    # CSV: a quoted field may span lines, so the reader sees every line (undecodable ones with
    # replacement characters) and a row is reported when any of its lines did not decode.
    problems: dict[int, str] = {}

    def lines() -> Iterator[str]:
        for line_no, text, problem in decoded_lines(path):
            if problem:
                problems[line_no] = problem
            yield text

    reader = csv.reader(lines())
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader goes on with the next line
            malformed(reader.line_num, f"not valid CSV ({exc}); check the quoting")
            last = reader.line_num
            continue
        first, last = last + 1, reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        problem = next((n for n in range(first, last + 1) if n in problems), None)
        if problem is not None:
            malformed(problem, problems[problem])
            continue
        rows += 1
        yield last, row


def iter_records(path: str | Path, columns: Columns, required: tuple[str, ...] | None = None,
                 bad: BadRows | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) with records keyed by column name (or position as a string).

    `required` columns must be in a header row (default: the text and label columns). Malformed
    rows (not JSON, the wrong number of fields, not UTF-8) go to `bad` (default: raise)."""
    required = (columns.text, columns.label) if required is None else required
    bad = bad or BadRows()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path, columns.file_format)
    if fmt == "jsonl":
        def obj(record: Any, line_no: int, where: str) -> tuple[int, dict[str, Any]]:
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object per line")
            return line_no, record

        yield from jsonl_rows(path, bad, obj)
        return
    header: list[str] | None = None
    expect_header = columns.header if columns.header is not None else not (columns.by_position or columns.text.isdigit())
    for line_no, row in _delimited_rows(path, fmt, bad):
        if expect_header and header is None:
            header = [cell.strip() for cell in row]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{path}:{line_no}: no column named {missing[0]!r} in the first row "
                    f"{header[:6]}; name the columns with --text-column/--label-column, or, if the "
                    "file has no header row, give their positions (e.g. --text-column 1 --label-column 0)"
                )
            continue
        if header is not None:
            if len(row) != len(header):
                bad.report(DataError(
                    f"{path}:{line_no}: {len(row)} fields, the header has {len(header)} "
                    f"(is a {'tab' if fmt == 'tsv' else 'comma'} inside a text unquoted?)"
                ))
                continue
            yield line_no, dict(zip(header, row, strict=True))
        else:
            yield line_no, {str(i): cell for i, cell in enumerate(row)}


def _parse_label(raw: Any, columns: Columns, where: str) -> Any:
    if isinstance(raw, str) and columns.label_separator is not None:
        raw = [part.strip() for part in raw.split(columns.label_separator) if part.strip()]
    if columns.label_names is not None:
        names = columns.label_names

        def name_of(value: Any) -> str:
            try:
                index = int(value)
            except (TypeError, ValueError):
                raise DataError(f"{where}: label {value!r} is not a number, but label names were given") from None
            if not 0 <= index < len(names):
                raise DataError(f"{where}: label id {index} is outside the {len(names)} label names")
            return names[index]

        return [name_of(v) for v in raw] if isinstance(raw, list) else name_of(raw)
    return raw


PAIR_FIELD = "text_pair"  # JSONL classification rows: the second text of a pair, found by name


def _text(record: dict[str, Any], column: str, where: str, what: str) -> str:
    text = record[column]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the {what} is empty or not a string")
    return text


def _example(record: dict[str, Any], columns: Columns, where: str, pair: str | None = None) -> dict[str, Any]:
    """`{"text", "label"}`, plus `"text_pair"` when `pair` names the second text's field."""
    wanted = (columns.text, columns.label) if pair is None else (columns.text, pair, columns.label)
    missing = [c for c in wanted if c not in record]
    if missing:
        have = ", ".join(list(record)[:6])
        raise DataError(f"{where}: no field {missing[0]!r} (fields: {have}); see "
                        "--text-column/--text-pair-column/--label-column")
    example: dict[str, Any] = {"text": _text(record, columns.text, where, "text")}
    if pair is not None:
        example["text_pair"] = _text(record, pair, where, f"second text of the pair ({pair!r})")
    label = record[columns.label]
    if label is None or label == "" or label == []:
        raise DataError(f"{where}: the label is empty")
    example["label"] = _parse_label(label, columns, where)
    return example


def _pair_field(record: dict[str, Any], columns: Columns) -> str | None:
    """The field of a row's second text: the one named, else `text_pair` when the row has one."""
    if columns.text_pair is not None:
        return columns.text_pair
    return PAIR_FIELD if PAIR_FIELD in record else None


def load_examples(source: str, columns: Columns, bad: BadRows | None = None,
                  locate: bool = False) -> list[dict[str, Any]]:
    """Read `{"text", "label"}` examples (`{"text", "text_pair", "label"}` for pairs) from a file or
    `hf:` (`HF_FORMS`). Malformed rows go to `bad` (default: raise). `locate` adds `"where"`
    (file:line) to each example, for checks that come later (training's label checks). A file is
    all pairs or all single texts: the first row decides, and a row of the other kind is malformed."""
    bad = bad or BadRows()
    if source.startswith(HF_PREFIX):
        return _load_hub(source, columns, bad, locate)
    examples: list[dict[str, Any]] = []
    required = None if columns.text_pair is None else (columns.text, columns.text_pair, columns.label)
    pair: str | bool | None = False  # False: not decided yet (the first row decides)
    for line_no, record in iter_records(source, columns, required=required, bad=bad):
        where = f"{source}:{line_no}"
        with bad.row():
            if pair is False:
                pair = _pair_field(record, columns)
            elif pair is None and PAIR_FIELD in record:
                raise DataError(f"{where}: this row has a {PAIR_FIELD!r} field and the first row has none: a "
                                f"file holds single texts or pairs, not both; give every row a {PAIR_FIELD!r}, "
                                "or none")
            examples.append({**_example(record, columns, where, pair or None),
                             **({"where": where} if locate else {})})
    if not examples:
        raise DataError(f"{source}: no examples found{bad.note()}")
    return examples


HF_FORMS = ("hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT (a hub dataset), hf:DIRECTORY or hf:DIRECTORY:SPLIT (a "
            "local dataset: saved with save_to_disk, or a directory of data files)")


def hf_directory(source: str) -> Path | None:
    """The local directory an `hf:` source names, or None for a hub dataset. A name that is a
    directory here is read from it (as `datasets.load_dataset` itself does); one written as a path
    (starting with /, . or ~) must be a directory: it is never looked up on the hub."""
    name = source[len(HF_PREFIX) :].split(":")[0]
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no directory {path.resolve()}: check the path (a relative one starts from "
                        f"{Path.cwd()}); write {HF_FORMS}")
    return None


def load_hf_dataset(source: str) -> Any:
    """The split named by `hf:NAME[:CONFIG]:SPLIT` from the hub (needs a reachable hub), or by
    `hf:DIRECTORY[:SPLIT]` from a local directory (no network)."""
    parts = source[len(HF_PREFIX) :].split(":")
    directory = hf_directory(source)
    if directory is not None:
        if len(parts) > 2:
            raise DataError(f"{source}: a local directory takes hf:DIRECTORY or hf:DIRECTORY:SPLIT (no config)")
        return _load_local(source, directory, parts[1] if len(parts) == 2 else None)
    if len(parts) not in (2, 3):
        raise DataError(f"{source}: no local directory {parts[0]!r} here; write {HF_FORMS}")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets

        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub may be unreachable: say so plainly
        raise DataError(f"{source}: could not load from the Hugging Face hub ({exc}); a local dataset is "
                        "read with hf:DIRECTORY[:SPLIT]") from None


def _load_local(source: str, directory: Path, split: str | None) -> Any:
    """A dataset saved with `save_to_disk` (a `DatasetDict`, or one `Dataset`), or the data files
    in a directory (csv, json/jsonl, parquet, ...; splits from the file names, as `load_dataset`
    names them: train.jsonl, test.csv, ...)."""
    import datasets

    if (directory / "state.json").is_file() and not (directory / "dataset_dict.json").is_file():
        one = datasets.load_from_disk(str(directory))
        if split is not None and split != (str(one.split) if one.split else None):
            saved = f"the split '{one.split}'" if one.split else "no split name"
            raise DataError(f"{source}: {directory} holds one dataset (Dataset.save_to_disk, {saved}), not a "
                            f"split {split!r}: write hf:{directory}")
        return one
    if (directory / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(directory))
    else:
        try:
            splits = datasets.load_dataset(str(directory))
        except Exception as exc:  # no data files, or files load_dataset cannot read
            raise DataError(f"{source}: {directory} holds no dataset: neither one saved with save_to_disk "
                            "(dataset_dict.json or state.json) nor data files load_dataset reads (csv, "
                            f"json/jsonl, parquet, txt) ({type(exc).__name__}: {exc})") from None
    names = list(splits)
    if split is None:
        if len(names) == 1:
            return splits[names[0]]
        raise DataError(f"{source}: {directory} has the splits {', '.join(names)}: name one, e.g. "
                        f"hf:{directory}:{names[0]}")
    if split not in splits:
        raise DataError(f"{source}: no split {split!r} in {directory} (it has {', '.join(names)}): write "
                        f"hf:{directory}:{names[0]}")
    return splits[split]


def not_read_from_hf(source: str, what: str) -> str:
    """The refusal for tasks whose data comes from files only."""
    return (f"{source}: {what} are read from files, not from hf: datasets (those serve classification, rerank and "
            "NER): write the split to a JSONL file first, e.g. datasets.load_from_disk(DIRECTORY)[SPLIT]"
            ".to_json('data.jsonl'), and pass that file")


def _load_hub(source: str, columns: Columns, bad: BadRows, locate: bool) -> list[dict[str, Any]]:
    ds = load_hf_dataset(source)
    names = getattr(ds.features.get(columns.label), "names", None) if columns.label_names is None else None
    out = []
    for i, record in enumerate(ds):
        where = f"{source}[{i}]"
        with bad.row():
            if names is not None and isinstance(record.get(columns.label), int):
                record = {**record, columns.label: names[record[columns.label]]}
            out.append({**_example(record, columns, where, _pair_field(record, columns)),
                        **({"where": where} if locate else {})})
    if not out:
        raise DataError(f"{source}: no examples found{bad.note()}")
    return out


# Similarity data: (first sentence, second sentence, score or None) field names, tried in order
# when the columns are not named on the command line.
PAIR_LAYOUTS = (("text_a", "text_b", "score"), ("sentence1", "sentence2", "score"), ("anchor", "positive", None))


def load_pairs(source: str, columns: Columns, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """Sentence pairs `{"text_a", "text_b", "score"}`; the score is None for unscored pairs
    (retrieval-style training), and `{"anchor", "positive", "negative"}` triplets keep the negative.
    Malformed rows go to `bad` (default: raise)."""
    if source.startswith(HF_PREFIX):
        raise DataError(not_read_from_hf(source, "sentence pairs"))
    bad = bad or BadRows()
    explicit = columns.text_pair is not None
    required = (columns.text, columns.text_pair) if explicit else ()
    pairs: list[dict[str, Any]] = []
    layout: tuple[str, str, str | None] | None = None
    for line_no, record in iter_records(source, columns, required=required, bad=bad):
        where = f"{source}:{line_no}"
        if layout is None:
            if explicit:
                layout = (columns.text, columns.text_pair, columns.label if columns.label in record else None)
            else:
                layout = next((lay for lay in PAIR_LAYOUTS if lay[0] in record and lay[1] in record), None)
                if layout is None:
                    raise DataError(f"{where}: no sentence-pair fields; use text_a/text_b/score, "
                                    "sentence1/sentence2/score or anchor/positive[/negative], or name them "
                                    "with --text-column/--text-pair-column/--label-column")
                if layout[2] and layout[2] not in record:
                    layout = (layout[0], layout[1], None)
        with bad.row():
            pairs.append(_pair(record, layout, where))
    if not pairs:
        raise DataError(f"{source}: no sentence pairs found{bad.note()}")
    return pairs


def _pair(record: dict[str, Any], layout: tuple[str, str, str | None], where: str) -> dict[str, Any]:
    a, b, s = layout
    pair: dict[str, Any] = {}
    for key, field in (("text_a", a), ("text_b", b)):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: {field!r} is missing or empty")
        pair[key] = value
    pair["score"] = None
    if s is not None:
        try:
            pair["score"] = float(record[s])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: the score {record.get(s)!r} is not a number") from None
        if not math.isfinite(pair["score"]):
            raise DataError(f"{where}: the score {record[s]!r} is not a finite number")
    if isinstance(record.get("negative"), str) and record["negative"].strip():
        pair["negative"] = record["negative"]
    return pair


def load_task_examples(task: str, source: str, columns: Columns, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """The examples a task trains and is scored on, from one file; malformed rows go to `bad`."""
    from bertserve.registry import get_task

    return get_task(task).read_examples(source, columns, bad)
