"""Text classification: single-label, multi-label and regression heads.

`postprocess` is the one function that turns logits into what `/classify` answers; export's
parity gate scores exactly these results, so parity is a statement about what users get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.errors import DataError, ValidationError
from bertserve.metrics import accuracy, f1_per_class, multilabel_f1, regression_metrics
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult, validated

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)
# transformers' names for the same three heads (config.problem_type)
HF_PROBLEM_TYPE = {
    SINGLE: "single_label_classification",
    MULTI: "multi_label_classification",
    REGRESSION: "regression",
}


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def thresholds_of(card: Any) -> np.ndarray:
    given = card.thresholds or {}
    return np.array([given.get(label, 0.5) for label in card.labels], dtype=np.float64)


def postprocess(logits: np.ndarray, card: Any) -> list[dict[str, Any]]:
    logits = np.asarray(logits, dtype=np.float64)
    if card.problem_type == REGRESSION:
        return [{"value": float(row[0])} for row in logits]
    labels = card.labels
    if card.problem_type == MULTI:
        probs = sigmoid(logits)
        keep = probs >= thresholds_of(card)
        return [
            {
                "labels": [labels[j] for j in np.flatnonzero(k)],
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
            }
            for row, k in zip(probs, keep, strict=True)
        ]
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    return [
        {
            "label": labels[b],
            "score": float(row[b]),
            "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
        }
        for row, b in zip(probs, best, strict=True)
    ]


def _index(labels: Sequence[str], value: Any) -> int:
    try:
        return labels.index(str(value))
    except ValueError:
        raise DataError(f"label {value!r} is not one the model knows ({', '.join(labels[:10])})") from None


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    if card.problem_type == REGRESSION:
        return regression_metrics(np.array([float(g) for g in gold]), np.array([r["value"] for r in results]))
    labels = list(card.labels)
    if card.problem_type == MULTI:
        g = np.zeros((len(gold), len(labels)), dtype=bool)
        p = np.zeros_like(g)
        for i, (gl, r) in enumerate(zip(gold, results, strict=True)):
            g[i, [_index(labels, x) for x in gl]] = True
            p[i, [_index(labels, x) for x in r["labels"]]] = True
        return multilabel_f1(g, p)
    g = np.array([_index(labels, x) for x in gold])
    p = np.array([_index(labels, r["label"]) for r in results])
    per_class = f1_per_class(g, p, len(labels))
    out = {"accuracy": accuracy(g, p), "macro_f1": float(per_class.mean())}
    out.update({f"f1/{label}": float(f) for label, f in zip(labels, per_class, strict=True)})
    return out


def primary_metric(card: Any) -> str:
    return {SINGLE: "macro_f1", MULTI: "micro_f1", REGRESSION: "spearman"}[card.problem_type]


def model_input(ex: dict[str, Any]) -> str | tuple[str, str]:
    """A text, or a pair `(text, text_pair)` read as one pair input."""
    return (ex["text"], ex["text_pair"]) if "text_pair" in ex else ex["text"]


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    return [model_input(ex) for ex in examples], [ex["label"] for ex in examples]


def reads_pairs(card: Any) -> bool:
    """Whether the model was trained on pairs: training records it (`inputs`); a card without it
    reads pairs when its training named a pair column (--text-pair-column)."""
    training = card.training or {}
    if "inputs" in training:
        return bool(training["inputs"] == "pairs")
    return bool(((training.get("config") or {}).get("columns") or {}).get("text_pair"))


def request_body(inputs: Sequence[Any]) -> dict[str, Any]:
    """The client's /classify body: `texts`, or `pairs` for pair inputs."""
    if inputs and not isinstance(inputs[0], str):
        return {"pairs": [list(x) for x in inputs]}
    return {"texts": list(inputs)}


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data import load_examples

    return load_examples(source, columns, bad)


def agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """The same label (or label set), or a regression value within 1 %."""
    if "value" in x:
        return abs(x["value"] - y["value"]) <= 1e-2 * max(1.0, abs(x["value"]))
    key = "labels" if "labels" in x else "label"
    return bool(x[key] == y[key])


async def classify(ctx: Any, body: ClassifyRequest) -> ClassifyResponse:
    model = ctx.model(body.model)
    inputs: list[Any]
    if (body.texts is None) == (body.pairs is None):
        both = body.texts is not None
        raise ValidationError(("send `texts` or `pairs`, not both" if both else "texts or pairs: Field required")
                              + ": `texts` is a list of texts, `pairs` a list of [a, b] text pairs (for a model "
                              "trained on pairs)")
    if (body.pairs is not None) != reads_pairs(model.card):
        sent, trained = ("pairs", "single texts") if body.pairs is not None else ("texts", "pairs")
        raise ValidationError(f"model {model.name!r} was trained on {trained}, and {sent} were sent: send "
                              f"`{'texts' if trained == 'single texts' else 'pairs'}`, or name a model trained on "
                              f"{sent} in `model` (GET /info lists each model's `inputs`)")
    if body.pairs is not None:
        ctx.check_pairs(body.pairs)
        inputs = [(a, b) for a, b in body.pairs]
    else:
        inputs = body.texts or []
        ctx.check(inputs)
    features, outputs = await ctx.infer(model, inputs, body.truncate)
    results = postprocess(outputs, model.card)
    return ClassifyResponse(
        model=model.tag,
        results=[ClassifyResult(**r, truncated=group[0].truncated) for r, group in zip(results, features, strict=True)],
    )


def check_answer(payload: dict[str, Any], body: Any) -> str | None:
    """Load tests: the answer has the schema and one result per text."""
    response, problem = validated(ClassifyResponse, body)
    if response is None:
        return problem
    sent = payload.get("texts") or payload.get("pairs") or []
    if len(response.results) != len(sent):
        return f"{len(response.results)} results for {len(sent)} inputs"
    return None


SPEC = register(
    TaskSpec(
        name="classification",
        auto_model="AutoModelForSequenceClassification",
        optimum_task="text-classification",
        postprocess=postprocess,
        score=score,
        primary_metric=primary_metric,
        split_examples=split_examples,
        read_examples=read_examples,
        agree=agree,
        request_body=request_body,
        info=lambda card: {"inputs": "pairs" if reads_pairs(card) else "texts"},
        routes=(Route("/classify", ClassifyRequest, ClassifyResponse, classify, exclude_none=True,
                      summary="Classify texts (single-label, multi-label or regression)",
                      scenario=Scenario(build=lambda src: {"texts": src.texts()}, check=check_answer)),),
        bench_data=("sst2/dev.tsv", {"text": "sentence", "label": "label"}),
        scratch_labels=("negative", "positive"),
        scratch_problem_type=SINGLE,
        demo={"train": "classification/reviews.jsonl", "epochs": 8, "learning_rate": 1e-4, "max_length": 64},
    )
)
