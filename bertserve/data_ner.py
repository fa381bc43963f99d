"""Reading NER data into one shape: `{"text", "entities": [{"start", "end", "label"}]}`.

Three inputs are accepted: CoNLL files (a token per line, the tag in the last column, a blank
line between sentences, `-DOCSTART-` lines skipped), JSONL `{"tokens": [...], "tags": [...]}`,
and JSONL `{"text", "entities": [...]}` with character spans. Token/tag inputs become text by
joining the tokens with single spaces; IOB1, IOB2/BIO and BIOES tags all decode to the same spans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from bertserve.data import HF_PREFIX, load_hf_dataset
from bertserve.errors import DataError
from bertserve.rows import BadRows, decoded_lines, jsonl_rows
from bertserve.tasks.ner import spans_from_tags

DOCSTART = "-DOCSTART-"


def from_tokens(tokens: Sequence[str], tags: Sequence[str], where: str) -> dict[str, Any]:
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
    starts, at = [], 0
    for token in tokens:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise DataError(f"{where}: token {token!r} is empty or contains whitespace")
        starts.append(at)
        at += len(token) + 1
    entities = [{"start": starts[a], "end": starts[b - 1] + len(tokens[b - 1]), "label": kind}
                for a, b, kind in spans_from_tags([str(t) for t in tags])]
    return {"text": " ".join(tokens), "entities": entities}


def _conll_sentences(path: Path, bad: BadRows) -> Iterator[tuple[int, int, list[str], list[str]]]:
    """(document number, first line, tokens, tags) per sentence; documents start at -DOCSTART-.
    A malformed line makes its whole sentence malformed (a sentence missing a token would teach
    wrong tags), reported at that line."""
    tokens: list[str] = []
    tags: list[str] = []
    first = document = 0
    problem: DataError | None = None
    for line_no, line, undecodable in decoded_lines(path):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if problem is not None:
                bad.report(problem)
            elif tokens:
                yield document, first, tokens, tags
            tokens, tags, problem = [], [], None
            document += bool(fields)
            continue
        if not tokens and problem is None:
            first = line_no
        if problem is not None:
            continue
        if undecodable:
            problem = DataError(f"{path}:{line_no}: {undecodable}")
        elif len(fields) < 2:
            problem = DataError(f"{path}:{line_no}: expected 'token ... tag' (at least two columns), "
                                f"found {line.strip()!r}")
        else:
            tokens.append(fields[0])
            tags.append(fields[-1])
    if problem is not None:
        bad.report(problem)
    elif tokens:
        yield document, first, tokens, tags


def join_examples(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sentences of one document as one text (space-separated), their entities shifted along."""
    text, entities = "", []
    for ex in examples:
        shift = len(text) + (1 if text else 0)
        text = f"{text} {ex['text']}" if text else ex["text"]
        entities += [{**e, "start": e["start"] + shift, "end": e["end"] + shift} for e in ex["entities"]]
    return {"text": text, "entities": entities}


def _from_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    if "tokens" in record:
        tags = record.get("tags", record.get("ner_tags"))
        if not isinstance(record["tokens"], list) or not isinstance(tags, list):
            raise DataError(f"{where}: 'tokens' and 'tags' must be lists")
        return from_tokens(record["tokens"], tags, where)
    if "text" in record and "entities" in record:
        text, entities = record["text"], record["entities"]
        if not isinstance(text, str) or not text.strip() or not isinstance(entities, list):
            raise DataError(f"{where}: 'text' must be a non-empty string and 'entities' a list")
        out = []
        for ent in entities:
            try:
                start, end, label = int(ent["start"]), int(ent["end"]), str(ent["label"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: each entity needs integer 'start', 'end' and a 'label'") from None
            if not 0 <= start < end <= len(text) or not label:
                raise DataError(f"{where}: entity {ent} lies outside the text (length {len(text)}) or is empty")
            out.append({"start": start, "end": end, "label": label})
        out.sort(key=lambda e: (e["start"], e["end"]))
        for a, b in pairwise(out):
            if b["start"] < a["end"]:
                raise DataError(f"{where}: entities {a} and {b} overlap; NER spans must not")
        return {"text": text, "entities": out}
    raise DataError(f"{where}: expected {{'tokens', 'tags'}} or {{'text', 'entities'}} fields, "
                    f"found {sorted(record)[:6]}")


def _load_hub(source: str, bad: BadRows) -> list[dict[str, Any]]:
    ds = load_hf_dataset(source)
    names = getattr(getattr(ds.features.get("ner_tags"), "feature", None), "names", None)
    out = []
    for i, record in enumerate(ds):
        with bad.row():
            tags = record.get("ner_tags", record.get("tags"))
            if names is not None:
                tags = [names[t] for t in tags]
            out.append(from_tokens(record["tokens"], tags, f"{source}[{i}]"))
    return out


def load_ner_examples(source: str, documents: bool = False, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """`documents`: CoNLL files give one text per document (sentences joined by spaces), so that
    the model reads each sentence with its neighbours, as it will read whole texts when served.
    Malformed lines or sentences go to `bad` (default: raise)."""
    bad = bad or BadRows()
    if source.startswith(HF_PREFIX):
        examples = _load_hub(source, bad)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            examples = list(jsonl_rows(path, bad, lambda record, _line, where: _from_record(record, where)))
        else:
            sentences = []
            for doc, line, tokens, tags in _conll_sentences(path, bad):
                with bad.row():
                    sentences.append((doc, from_tokens(tokens, tags, f"{source}:{line}")))
            if documents:
                by_doc: dict[int, list[dict[str, Any]]] = {}
                for doc, ex in sentences:
                    by_doc.setdefault(doc, []).append(ex)
                examples = [join_examples(group) for group in by_doc.values()]
            else:
                examples = [ex for _, ex in sentences]
    if not examples:
        raise DataError(f"{source}: no sentences found{bad.note()}")
    return examples
