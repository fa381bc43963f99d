"""Reranking: a cross-encoder reads (query, text) as one pair input and scores how relevant the text is.

The model is a pair classification model (`bertserve train rerank`, trained like `classification`
on `text` + `text_pair` rows): its head has one output (a relevance logit, turned into a
probability by a sigmoid) or two classes (the positive class's probability). One input of this
task is a query with its candidate texts; `featurize` makes one pair input per candidate, so all
of a query's pairs go through the model's shared batcher together, and `postprocess` (the one
function the service and export's parity gate both use) turns their logits into scores. Its
metric is a ranking one, MRR@10, on the validation pairs grouped by query.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from bertserve.compat import hf, tei
from bertserve.errors import ArtifactError, DataError, ValidationError
from bertserve.metrics import ranking_metrics
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.report import MAX_ROWS, Plot, Section, Series, Table, buckets, show_input
from bertserve.schemas import Rank, RerankRequest, RerankResponse, validated
from bertserve.tasks.classification import MULTI, REGRESSION, sigmoid, softmax

# the positive (relevant) class of a two-class head, by its label name; else the second label
POSITIVE_LABELS = ("1", "true", "yes", "relevant", "positive", "entailment")
# a (query, passage, label) file is read by these field names when no columns are named
QUERY_FIELD, PASSAGE_FIELD = "query", "passage"


def positive_index(card: Any) -> int | None:
    """The logit column of the relevant class; None for a one-output head (sigmoid of its logit)."""
    if card.problem_type == REGRESSION or len(card.labels) == 1:
        return None
    if card.problem_type == MULTI or len(card.labels) != 2:
        raise ArtifactError(f"a rerank model has one output or two classes; this one has {card.problem_type} "
                            f"labels {card.labels[:5]}: train it with `bertserve train rerank` on 0/1 labels")
    lowered = [str(label).lower() for label in card.labels]
    return next((i for i, name in enumerate(lowered) if name in POSITIVE_LABELS), 1)


def relevance(logits: np.ndarray, card: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, raw scores) of rows of logits, one row per pair. The raw score is the
    log-odds of the probability (a one-output head's logit; for two classes the positive logit
    minus the other), so both sort the texts alike."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    pos = positive_index(card)
    if pos is None:
        return sigmoid(logits[:, 0]), logits[:, 0]
    return softmax(logits)[:, pos], logits[:, pos] - logits[:, 1 - pos]


def featurize(encoder: Any, inputs: Sequence[dict[str, Any]], card: Any) -> list[list[Any]]:
    """One pair input `(query, text)` per candidate, cut longest side first; an input's optional
    `truncate: false` refuses a pair longer than the window instead (422)."""
    return [encoder.encode([(x["query"], text) for text in x["texts"]], truncate=x.get("truncate", True),
                           item="text", direction=x.get("direction", "right")) for x in inputs]


def postprocess(windows: Sequence[Any], card: Any) -> list[dict[str, Any]]:
    """Per query: `scores` and `logits` of its texts in the order sent, and which were cut."""
    out = []
    for w in windows:
        rows = np.stack(w.rows) if w.rows else np.zeros((0, max(1, len(card.labels))))
        scores, raw = relevance(rows, card)
        out.append({"relevance": [float(s) for s in scores], "logits": [float(r) for r in raw],
                    "truncated": [item.truncated for item in w.items]})
    return out


def is_relevant(label: Any) -> bool:
    """A gold label: 0/1, true/false, relevant/..., or a graded number (relevant above 0)."""
    text = str(label).strip().lower()
    if text in POSITIVE_LABELS:
        return True
    try:
        return float(text) > 0
    except ValueError:
        return False


def score(results: Sequence[dict[str, Any]], gold: Sequence[Sequence[Any]], card: Any) -> dict[str, float]:
    return ranking_metrics([r["relevance"] for r in results], [[is_relevant(g) for g in labels] for labels in gold])


def primary_metric(card: Any) -> str:
    return "mrr@10"


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Pairs grouped by query, in the order each query first occurs: one input per query."""
    groups: dict[str, tuple[list[str], list[Any]]] = {}
    for ex in examples:
        texts, labels = groups.setdefault(ex["text"], ([], []))
        texts.append(ex["text_pair"])
        labels.append(ex["label"])
    return ([{"query": q, "texts": texts} for q, (texts, _) in groups.items()],
            [labels for _, labels in groups.values()])


def columns_for(source: str, columns: Any) -> Any:
    """The columns as named, or, when none are, `query`/`passage` fields if the file has them
    (`text`/`text_pair` otherwise: what training writes as the validation split)."""
    from dataclasses import replace

    from bertserve.data import HF_PREFIX, iter_records

    if columns.text_pair is not None or columns.text != "text" or source.startswith(HF_PREFIX):
        return columns
    first = next(iter(iter_records(source, columns, required=())), None)
    if first is not None and QUERY_FIELD in first[1]:
        return replace(columns, text=QUERY_FIELD, text_pair=PASSAGE_FIELD)
    return columns


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data import load_examples

    examples = load_examples(source, columns_for(source, columns), bad)
    if "text_pair" not in examples[0]:
        raise DataError(f"{source}: reranking reads (query, passage, label) rows: name the passage field with "
                        "--text-pair-column (JSONL: `query`, `passage`, `label`, or `text`, `text_pair`, `label`)")
    return examples


def agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """The same top-10 ranking (the order users see)."""
    def top(r: dict[str, Any]) -> list[int]:
        return sorted(range(len(r["relevance"])), key=lambda i: (-r["relevance"][i], i))[:10]

    return top(x) == top(y)


def parity_measures(ref: Sequence[dict[str, Any]], var: Sequence[dict[str, Any]]) -> dict[str, float]:
    diffs = [abs(a - b) for x, y in zip(ref, var, strict=True) for a, b in zip(x["relevance"], y["relevance"], strict=True)]
    return {"max_abs_score_diff": float(max(diffs, default=0.0))}


def difference(x: dict[str, Any], y: dict[str, Any]) -> float:
    """The largest score difference over a query's texts (shadow parity's histogram)."""
    return max((abs(a - b) for a, b in zip(x["relevance"], y["relevance"], strict=True)), default=0.0)


def report(card: Any, inputs: Sequence[dict[str, Any]], gold: Sequence[Sequence[Any]],
           results: Sequence[dict[str, Any]]) -> Section:
    """Where each query's first relevant passage lands, and the queries it lands lowest for."""
    section = Section("Quality")
    first: list[int] = []  # rank of the first relevant text, per query with one
    for r, labels in zip(results, gold, strict=True):
        order = sorted(range(len(r["relevance"])), key=lambda i: (-r["relevance"][i], i))
        ranks = [k + 1 for k, i in enumerate(order) if is_relevant(labels[i])]
        first.append(ranks[0] if ranks else 0)
    cats = ["1", "2", "3", "4-10", "11+"]
    which = buckets([f for f in first if f], [1, 2, 3, 4, 11])
    section.blocks.append(Plot("Rank of the first relevant passage (queries)", "bar", "rank", "queries",
                               categories=cats, series=[Series("queries", list(range(len(cats))),
                                                               [which.count(b) for b in range(len(cats))])]))
    worst = [i for i in np.argsort(-np.asarray(first), kind="stable") if first[i] > 1][:MAX_ROWS]
    section.blocks.append(Table("Queries whose relevant passage ranks lowest", ["query", "rank", "top passage",
                                                                                "relevant passage"],
                                [[show_input(inputs[i]["query"]), first[i],
                                  show_input(inputs[i]["texts"][int(np.argmax(results[i]["relevance"]))]),
                                  show_input(next(t for t, g in zip(inputs[i]["texts"], gold[i], strict=True)
                                                  if is_relevant(g)))] for i in worst]))
    if first.count(0):
        section.notes.append(f"{first.count(0)} queries have no relevant passage")
    return section


def show_ranking(result: dict[str, Any]) -> str:
    """The first ten texts in the order the model ranks them (their indices)."""
    order = sorted(range(len(result["relevance"])), key=lambda i: (-result["relevance"][i], i))
    return "ranked: " + ", ".join(f"#{i} {result['relevance'][i]:.2f}" for i in order[:10])


def ranked(result: dict[str, Any], body: RerankRequest) -> list[Rank]:
    """The answer: texts sorted by score (ties by index), the first `top_n`."""
    values = result["logits"] if body.raw_scores else result["relevance"]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[: body.top_n]
    return [Rank(index=i, score=values[i], text=body.texts[i] if body.return_text else None,
                 truncated=result["truncated"][i]) for i in order]


async def rerank(ctx: Any, body: RerankRequest, direction: str = "right") -> RerankResponse:
    model = ctx.model(body.model)
    limit = ctx.settings.max_rerank_texts
    ctx.check_text(body.query, "the query")
    ctx.check(body.texts, limit=limit, count_setting="BERTSERVE_MAX_RERANK_TEXTS")
    if body.top_n is not None and body.top_n < 1:
        raise ValidationError(f"top_n is {body.top_n}: send a number >= 1, or null for every text")
    item = {"query": body.query, "texts": body.texts, "truncate": body.truncate, "direction": direction}
    _, outputs = await ctx.infer(model, [item], body.truncate)
    return RerankResponse(ranked(postprocess(outputs, model.card)[0], body))


async def tei_rerank(ctx: Any, body: tei.RerankRequest) -> RerankResponse:
    """TEI's /rerank: our answer, with TEI's defaults (truncate false); Left cuts the longer side
    of a pair at its start."""
    return await rerank(ctx, RerankRequest(query=body.query, texts=body.texts, raw_scores=body.raw_scores,
                                           return_text=body.return_text, truncate=bool(body.truncate),
                                           model=body.model), tei.direction_of(body.truncation_direction))


async def hf_text_ranking(ctx: Any, body: hf.TextRankingRequest) -> RerankResponse:
    """The HF text-ranking task: the same ranks, every text."""
    return await rerank(ctx, RerankRequest(query=body.inputs.query, texts=body.inputs.texts, model=body.model))


def check_answer(payload: dict[str, Any], body: Any) -> str | None:
    """Load tests: the schema, one rank per text, sorted by score."""
    response, problem = validated(RerankResponse, body)
    if response is None:
        return problem
    ranks = response.root
    if sorted(r.index for r in ranks) != list(range(len(payload["texts"]))):
        return f"{len(ranks)} ranks for {len(payload['texts'])} texts"
    if any(a.score < b.score for a, b in pairwise(ranks)):
        return "ranks are not sorted by score"
    return None


def bench_inputs(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bench's rerank scenario: one query with 50 candidates (STS-B sentences), again and again."""
    texts = [ex["text_pair"] for ex in examples]
    return [{"query": examples[i]["text"], "texts": texts[i : i + 50]} for i in range(0, len(texts) - 49, 50)]


SPEC = register(
    TaskSpec(
        name="rerank",
        auto_model="AutoModelForSequenceClassification",
        optimum_task="text-classification",
        postprocess=postprocess,
        score=score,
        primary_metric=primary_metric,
        split_examples=split_examples,
        read_examples=read_examples,
        agree=agree,
        difference=difference,
        report=report,
        show_answer=show_ranking,
        parity_measures=parity_measures,
        routes=(Route("/rerank", RerankRequest, RerankResponse, rerank, exclude_none=True,
                      summary="Rank texts by relevance to a query (a cross-encoder; the TEI /rerank shape)",
                      scenario=Scenario(build=lambda src: {"query": src.question(), "texts": src.candidates()},
                                        check=check_answer)),
                # other servers' shapes: checked by the image test, not in the load mix (weight 0)
                Route(tei.PREFIX + "/rerank", tei.RerankRequest, RerankResponse, tei_rerank, exclude_none=True,
                      summary="TEI's /rerank",
                      scenario=Scenario(build=lambda src: {"query": src.question(), "texts": src.candidates(),
                                                           "truncate": True}, check=check_answer, weight=0)),
                Route(hf.PREFIX + "/text-ranking", hf.TextRankingRequest, RerankResponse, hf_text_ranking,
                      exclude_none=True, by_model=True, summary="Hugging Face Inference API text-ranking",
                      scenario=Scenario(build=lambda src: {"inputs": {"query": src.question(),
                                                                      "texts": src.candidates()}},
                                        check=lambda p, b: check_answer(p["inputs"], b), weight=0))),
        request_body=lambda inputs: {"query": inputs[0]["query"], "texts": list(inputs[0]["texts"])},
        parse_response=lambda body: [_unranked(body)],
        client_batch_size=1,
        featurize=featurize,
        warmup_inputs=({"query": "warm-up query", "texts": ["a warm-up text", "a second, longer warm-up text"]},),
        bench_data=("stsb/dev.tsv", {"text": "sentence1", "text_pair": "sentence2", "label": "score"}),
        bench_inputs=bench_inputs,
        scratch_labels=("0", "1"),
        scratch_problem_type="single_label",
        demo=None,
    )
)


def _unranked(body: Any) -> dict[str, Any]:
    """A /rerank answer back in input order (what `score` takes)."""
    ranks = sorted(body, key=lambda r: r["index"])
    return {"relevance": [r["score"] for r in ranks], "truncated": [r.get("truncated", False) for r in ranks]}
