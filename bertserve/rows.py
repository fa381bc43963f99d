"""Reading data files line by line, and what happens to a malformed row: by default it stops the
run with its file, line and reason; `BadRows(skip=True)` (`bertserve train --skip-bad-rows`) leaves
it out and counts it. Every reader (`bertserve.data`, `data_ner`, `data_qa`) reports through one."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bertserve.errors import DataError

T = TypeVar("T")


class BadRows:
    """What happens to a malformed row: by default it stops the run with its file, line and reason;
    with `skip=True` it is left out and counted. Problems of a whole file (no such file, a header
    without the named columns, no rows at all) stop the run either way."""

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self.errors: list[str] = []

    def report(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.errors.append(str(error))

    @contextmanager
    def row(self) -> Iterator[None]:
        """Wraps the reading of one row: a DataError inside is reported, and the row left out."""
        try:
            yield
        except DataError as exc:
            self.report(exc)

    def summary(self) -> str:
        """`skipped N malformed rows (first: file:line: reason)`, or "" when none was skipped."""
        if not self.errors:
            return ""
        rows = "row" if len(self.errors) == 1 else "rows"
        return f"skipped {len(self.errors)} malformed {rows} (first: {self.errors[0]})"

    def note(self) -> str:
        """For a file left without examples: what was skipped, if anything."""
        return f" ({self.summary()})" if self.errors else ""


def decoded_lines(path: str | Path) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem) per line of a UTF-8 file (a leading byte-order mark dropped). A
    line that is not valid UTF-8 comes decoded with replacement characters and its problem named,
    so that callers report it with its line number, or skip it, without losing count of lines."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            problem = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace")
                problem = (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                           "save the file as UTF-8")
            yield line_no, text, problem


def text_lines(path: str | Path, bad: BadRows) -> Iterator[tuple[int, str]]:
    """(line number, text) per line that decodes; the others go to `bad`."""
    for line_no, text, problem in decoded_lines(path):
        if problem:
            bad.report(DataError(f"{path}:{line_no}: {problem}"))
            continue
        yield line_no, text


def jsonl_rows(path: str | Path, bad: BadRows, build: Callable[[Any, int, str], T]) -> Iterator[T]:
    """`build(record, line number, "file:line")` for each non-blank line of a JSONL file, lazily (a
    reader's own row errors stay in line order); a line that is not JSON, or that `build` refuses
    with a DataError, goes to `bad`."""
    for line_no, line in text_lines(path, bad):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        row: tuple[T] | None = None
        with bad.row():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            row = (build(record, line_no, where),)
        if row is not None:
            yield row[0]
