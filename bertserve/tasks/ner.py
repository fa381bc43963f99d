"""Named-entity recognition: whole entities with exact character offsets, on texts of any length.

Words are the tokenizer's pre-tokenized words (whitespace and punctuation split), in training and
in serving alike: the first sub-token of each word carries the word's tag, the rest are ignored.
A word's characters are its tokens' offsets without whitespace: WordPiece, byte-level BPE (`Ġ`,
the space before a word) and SentencePiece (`▁`, possibly a token of its own) all give the same
spans, and a token that is only whitespace carries no tag.
Texts longer than the model's window are cut into overlapping windows; each word is read from the
window where its first sub-token has the most context on both sides. Tags decode into entities
with seqeval's (default, non-strict) rules, the same function for gold tags and predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bertserve.compat import answers, hf
from bertserve.metrics import prf
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.report import MAX_ROWS, Plot, Section, Series, Table, clip, prf_table, show_input
from bertserve.runtime import trim_span, window_stride
from bertserve.schemas import NerRequest, NerResponse, NerResult, validated
from bertserve.tasks.classification import softmax

OUTSIDE = "O"
IGNORE = -100  # label id the loss skips (sub-tokens after the first, special tokens)
ENDS = ("E", "L", "S", "U")  # BIOES / BILOU tags that close an entity


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") from "B-PER"; a bare type ("PER") reads as inside that type; "O" is ("O", "")."""
    if not tag or tag == OUTSIDE:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[0] in "BIESLU" and tag[1] in "-_":
        return tag[0], tag[2:]
    return "I", tag


def spans_from_tags(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first, last + 1, type) per entity, from IOB1, IOB2/BIO or BIOES/BILOU tags: B always opens
    an entity, I continues one of its own type (or opens one, as in IOB1), E/S close one."""
    spans: list[tuple[int, int, str]] = []
    start, current = 0, None
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if current is not None and (prefix in ("O", "B", "S", "U") or kind != current):
            spans.append((start, i, current))
            current = None
        if prefix == OUTSIDE:
            continue
        if current is None:
            start, current = i, kind
        if prefix in ENDS:
            spans.append((start, i + 1, current))
            current = None
    if current is not None:
        spans.append((start, len(tags), current))
    return spans


def bio_labels(types: Iterable[str]) -> list[str]:
    """The model's label set: O, then B-/I- per entity type (whatever scheme the data used)."""
    return [OUTSIDE] + [f"{p}-{t}" for t in sorted(set(types)) for p in ("B", "I")]


def entity_types(labels: Sequence[str]) -> list[str]:
    return sorted({split_tag(label)[1] for label in labels if label != OUTSIDE})


# --- windows and words ------------------------------------------------------------------------


def featurize(encoder: Any, texts: Sequence[str], card: Any) -> list[list[Any]]:
    return encoder.windows(texts, window_stride(card))


Span = tuple[int, int]


def token_spans(item: Any, text: str) -> list[Span | None]:
    """Each token's characters in `text`, whitespace trimmed (`▁`/`Ġ` tokens may count the space
    before their word); None for special tokens and tokens that are only whitespace, which
    belong to no word's characters and carry no word's tag."""
    enc = item.encoding
    out: list[Span | None] = []
    for w, (s, e) in zip(enc.word_ids, enc.offsets, strict=True):
        span = trim_span(text, s, e) if w is not None else None
        out.append(span if span is not None and span[1] > span[0] else None)
    return out


def word_spans(items: Sequence[Any], chars: Sequence[Sequence[Span | None]]) -> dict[int, Span]:
    """Character span of each word over all windows of one text (a word may straddle two), from
    the windows' `token_spans`."""
    spans: dict[int, list[int]] = {}
    for item, item_chars in zip(items, chars, strict=True):
        for w, span in zip(item.encoding.word_ids, item_chars, strict=True):
            if span is None:
                continue
            known = spans.setdefault(w, [*span])
            known[0], known[1] = min(known[0], span[0]), max(known[1], span[1])
    return {w: (s, e) for w, (s, e) in spans.items()}


def first_subtokens(item: Any, chars: Sequence[Span | None],
                    spans: dict[int, Span]) -> Iterable[tuple[int, int, int]]:
    """(position, word, context) for each token of a window that starts its word (the first token
    with characters of the word: a bare `▁` before it is passed over); context is the number of
    tokens the window has on the token's poorer side."""
    enc = item.encoding
    content = [p for p, w in enumerate(enc.word_ids) if w is not None]
    if not content:
        return
    lo, hi = content[0], content[-1]
    seen: set[int] = set()
    for p in content:
        w, span = enc.word_ids[p], chars[p]
        if w in seen or w not in spans or span is None or span[0] != spans[w][0]:
            continue
        seen.add(w)
        yield p, w, min(p - lo, hi - p)


def word_tags(entities: Sequence[dict[str, Any]], spans: dict[int, Span]) -> dict[int, str]:
    """BIO tag of each word from character-span entities: a word overlapping an entity is inside
    it, the first such word begins it."""
    ordered = sorted(entities, key=lambda e: e["start"])
    tags: dict[int, str] = {}
    for w, (s, e) in sorted(spans.items()):
        tags[w] = OUTSIDE
        for ent in ordered:
            if ent["start"] >= e:
                break
            if s < ent["end"]:
                tags[w] = ("B-" if s <= ent["start"] else "I-") + ent["label"]
                break
    return tags


def training_labels(text: str, items: Sequence[Any], entities: Sequence[dict[str, Any]],
                    label_ids: dict[str, int]) -> list[list[int]]:
    """Per window of `text`, the label id of each token: the word's tag on its first sub-token,
    else ignored."""
    chars = [token_spans(item, text) for item in items]
    spans = word_spans(items, chars)
    tags = word_tags(entities, spans)
    out = []
    for item, item_chars in zip(items, chars, strict=True):
        row = [IGNORE] * len(item.encoding.ids)
        for p, w, _ in first_subtokens(item, item_chars, spans):
            row[p] = label_ids[tags[w]]
        out.append(row)
    return out


# --- post-processing (the one function the parity gate and /ner share) -------------------------


def decode(windows: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    text: str = windows.source
    chars = [token_spans(item, text) for item in windows.items]
    spans = word_spans(windows.items, chars)
    best: dict[int, tuple[int, np.ndarray]] = {}  # word -> (context, probabilities)
    for item, item_chars, row in zip(windows.items, chars, windows.rows, strict=True):
        for p, w, context in first_subtokens(item, item_chars, spans):
            if w not in best or context > best[w][0]:
                best[w] = (context, row[p])
    words = sorted(best)
    if not words:
        return []
    probs = softmax(np.asarray([best[w][1] for w in words], dtype=np.float64))
    top = probs.argmax(axis=-1)
    entities = []
    for first, last, kind in spans_from_tags([labels[k] for k in top]):
        start, end = spans[words[first]][0], spans[words[last - 1]][1]
        entities.append({
            "entity_group": kind,
            "word": text[start:end],
            "start": start,
            "end": end,
            "score": float(np.mean(probs[np.arange(first, last), top[first:last]])),
        })
    return entities


def postprocess(outputs: Sequence[Any], card: Any) -> list[dict[str, Any]]:
    return [{"entities": decode(w, card.labels)} for w in outputs]


# --- metrics --------------------------------------------------------------------------------


def entity_prf(gold: Sequence[Iterable[tuple[int, int, str]]],
               predicted: Sequence[Iterable[tuple[int, int, str]]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (exact span and type, as seqeval counts them),
    overall (micro) and per type."""
    counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    for g, p in zip(gold, predicted, strict=True):
        g, p = set(g), set(p)
        for span in p:
            c = counts.setdefault(span[2], [0, 0, 0])
            c[1] += 1
            c[0] += span in g
        for span in g:
            counts.setdefault(span[2], [0, 0, 0])[2] += 1

    total = np.sum([c for c in counts.values()], axis=0) if counts else np.zeros(3, dtype=int)
    precision, recall, f1 = prf(*map(int, total))
    out = {"precision": precision, "recall": recall, "f1": f1}
    for kind in sorted(counts):
        p, r, f = prf(*counts[kind])
        out.update({f"precision/{kind}": p, f"recall/{kind}": r, f"f1/{kind}": f})
    return out


def as_spans(entities: Iterable[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(e["start"], e["end"], e.get("label") or e["entity_group"]) for e in entities]


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    return entity_prf([as_spans(g) for g in gold], [as_spans(r["entities"]) for r in results])


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[str], list[Any]]:
    return [ex["text"] for ex in examples], [ex["entities"] for ex in examples]


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data_ner import load_ner_examples

    return load_ner_examples(source, documents=columns.documents, bad=bad)


def agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """The same entities: spans and types."""
    return as_spans(x["entities"]) == as_spans(y["entities"])


def difference(x: dict[str, Any], y: dict[str, Any]) -> float:
    """Entities found by one and not the other (span and type), for shadow parity's histogram."""
    return float(len(set(as_spans(x["entities"])) ^ set(as_spans(y["entities"]))))


def report(card: Any, inputs: Sequence[str], gold: Sequence[Any], results: Sequence[dict[str, Any]]) -> Section:
    """Per entity type F1, and the texts with the most entity errors."""
    section = Section("Quality")
    gold_spans = [set(as_spans(g)) for g in gold]
    found = [set(as_spans(r["entities"])) for r in results]
    metrics = entity_prf(gold_spans, found)
    kinds = sorted({k.split("/", 1)[1] for k in metrics if k.startswith("f1/")})
    support = {k: sum(1 for spans in gold_spans for s in spans if s[2] == k) for k in kinds}
    section.blocks.append(Plot("Entity F1 per type", "bar", "", "F1", categories=kinds,
                               series=[Series("F1", list(range(len(kinds))), [metrics[f"f1/{k}"] for k in kinds])]))
    rows = [(k, metrics[f"precision/{k}"], metrics[f"recall/{k}"], metrics[f"f1/{k}"], support[k]) for k in kinds]
    rows.append(("all (micro)", metrics["precision"], metrics["recall"], metrics["f1"], sum(support.values())))
    section.blocks.append(prf_table("Per entity type (exact span and type)", rows))

    def spans_text(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
        return ", ".join(f"{text[a:b]} ({k})" for a, b, k in sorted(spans)) or "—"

    errors = [len(g ^ f) for g, f in zip(gold_spans, found, strict=True)]
    worst = [i for i in np.argsort(-np.asarray(errors), kind="stable") if errors[i]][:MAX_ROWS]
    section.blocks.append(Table(f"Texts with the most entity errors ({sum(1 for e in errors if e)} of "
                                f"{len(errors):,} texts have one)", ["text", "missed", "wrong or extra"],
                                [[show_input(inputs[i]), spans_text(inputs[i], gold_spans[i] - found[i]),
                                  spans_text(inputs[i], found[i] - gold_spans[i])] for i in worst]))
    return section


def show_entities(result: dict[str, Any]) -> str:
    """Entities as a person reads them: `Angela Merkel (PER 0.94), Paris (LOC 0.93)`."""
    return clip(", ".join(f"{e['word']} ({e['entity_group']} {e['score']:.2f})" for e in result["entities"]) or "—")


async def tag(ctx: Any, body: NerRequest) -> NerResponse:
    model = ctx.model(body.model)
    ctx.check(body.texts, document=True)
    _, outputs = await ctx.infer(model, body.texts)
    results = await ctx.offload(postprocess, outputs, model.card)
    return NerResponse(model=model.tag, results=[NerResult(**r) for r in results])


def _spans_are_words(payload: dict[str, Any], entities: Any) -> str | None:
    if any(payload["inputs"][e.start : e.end] != e.word for e in entities):
        return "an entity's word is not inputs[start:end]"
    return None


async def hf_token_classification(ctx: Any, body: hf.TokenClassificationRequest) -> hf.TokenClassificationResponse:
    """The HF token-classification task: our entities (word-level, a word labelled by its first
    sub-token: the pipeline's "first" strategy), without the labels asked to be ignored."""
    params = body.parameters or hf.TokenClassificationParameters()
    model = ctx.model(body.model)
    if params.aggregation_strategy not in (None, "first"):
        hf.refuse("aggregation_strategy", params.aggregation_strategy,
                  "entities are whole words labelled by their first sub-token (leave it out, or send 'first')")
    stride = window_stride(model.card)
    if params.stride is not None and params.stride != stride:
        hf.refuse("stride", params.stride, f"this model reads long texts in windows sharing {stride} tokens "
                  f"(leave it out, or send {stride})")
    answer = await tag(ctx, NerRequest(texts=[body.inputs], model=body.model))
    ignored = set(params.ignore_labels or ())
    return hf.TokenClassificationResponse([hf.Entity(**e.model_dump()) for e in answer.results[0].entities
                                           if e.entity_group not in ignored])


def check_answer(payload: dict[str, Any], body: Any) -> str | None:
    response, problem = validated(NerResponse, body)
    if response is None:
        return problem
    if len(response.results) != len(payload["texts"]):
        return f"{len(response.results)} results for {len(payload['texts'])} texts"
    for text, result in zip(payload["texts"], response.results, strict=True):
        if any(text[e.start : e.end] != e.word for e in result.entities):
            return "an entity's word is not text[start:end]"
    return None


SPEC = register(
    TaskSpec(
        name="ner",
        auto_model="AutoModelForTokenClassification",
        optimum_task="token-classification",
        postprocess=postprocess,
        score=score,
        primary_metric=lambda card: "f1",
        split_examples=split_examples,
        read_examples=read_examples,
        agree=agree,
        difference=difference,
        report=report,
        show_answer=show_entities,
        routes=(Route("/ner", NerRequest, NerResponse, tag,
                      summary="Named entities with exact character offsets (texts of any length up to the limit)",
                      scenario=Scenario(build=lambda src: {"texts": [src.paragraph() for _ in range(src.count())]},
                                        check=check_answer)),
                Route(hf.PREFIX + "/token-classification", hf.TokenClassificationRequest,
                      hf.TokenClassificationResponse, hf_token_classification, by_model=True,
                      summary="Hugging Face Inference API token-classification",
                      # checked by the image test, not in the load mix (weight 0)
                      scenario=Scenario(build=lambda src: {"inputs": src.paragraph()}, weight=0, check=answers(
                          hf.TokenClassificationResponse, None, _spans_are_words)))),
        featurize=featurize,
        info=lambda card: {"entity_types": entity_types(card.labels)},
        bench_data=("conll2003/test.txt", {}),
        scratch_labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
        demo={"train": "ner/news.jsonl", "epochs": 4, "learning_rate": 1e-4, "max_length": 64},
    )
)
