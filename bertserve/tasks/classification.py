"""Text classification: single-label, multi-label and regression heads.

`postprocess` is the one function that turns logits into what `/classify` answers; export's
parity gate scores exactly these results, so parity is a statement about what users get.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.compat import answers, hf, tei
from bertserve.errors import DataError, ValidationError
from bertserve.metrics import accuracy, f1_per_class, multilabel_f1, prf, regression_metrics
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.report import (
    MAX_ROWS,
    Plot,
    Section,
    Series,
    Table,
    prf_table,
    sample_points,
    show_input,
)
from bertserve.runtime import Chunks, window_span
from bertserve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    WindowSpan,
    validated,
)

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
    # the arithmetic on the whole batch in numpy; the answers built from plain floats (`tolist()`
    # once: iterating an array makes a numpy scalar of every element)
    logits = np.asarray(logits, dtype=np.float64)
    if card.problem_type == REGRESSION:
        return [{"value": value} for value in logits[:, 0].tolist()]
    labels = card.labels
    if card.problem_type == MULTI:
        probs = sigmoid(logits)
        keep = (probs >= thresholds_of(card)).tolist()
        return [
            {
                "labels": [label for label, k in zip(labels, ks, strict=True) if k],
                "scores": dict(zip(labels, row, strict=True)),
            }
            for row, ks in zip(probs.tolist(), keep, strict=True)
        ]
    probs = softmax(logits)
    return [
        {"label": labels[b], "score": row[b], "scores": dict(zip(labels, row, strict=True))}
        for row, b in zip(probs.tolist(), probs.argmax(axis=-1).tolist(), strict=True)
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


def baseline(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, Any]:
    """The quality gate's reference (`bertserve.quality`): what a model that learned nothing scores on
    these examples. Single-label: the better of always the most frequent class and a guess by the
    class frequencies (whose expected macro-F1 is 1 / the number of labels); multi-label: the best
    constant label set (the k most frequent labels, k = 0..all); regression: always the mean, by MSE
    (Spearman is undefined for a constant)."""
    if card.problem_type == REGRESSION:
        g = np.array([float(x) for x in gold])
        p = np.array([r["value"] for r in results])
        return {"metric": "mse", "value": float(np.mean((g - p) ** 2)), "baseline": float(np.var(g)),
                "best": 0.0, "higher_is_better": False, "baseline_answer": f"always the mean ({g.mean():.4g})",
                "never_predicted": []}
    metric = primary_metric(card)
    value = score(results, gold, card)[metric]
    if card.problem_type == MULTI:
        ranked = [name for name, _ in Counter(str(x) for row in gold for x in row).most_common()]
        base, answer = -1.0, ""
        for k in range(len(ranked) + 1):
            constant = score([{"labels": ranked[:k]}] * len(gold), gold, card)[metric]
            if constant > base:
                base, answer = constant, f"always {ranked[:k]}"
        best = score([{"labels": list(row)} for row in gold], gold, card)[metric]
        return {"metric": metric, "value": value, "baseline": base, "best": best, "baseline_answer": answer,
                "never_predicted": []}
    counts = Counter(str(x) for x in gold)
    majority = counts.most_common(1)[0][0]
    constant = score([{"label": majority}] * len(gold), gold, card)[metric]
    # per class F1 of a guess by the frequencies is the class's share; classes absent here count 0
    chance = 1.0 / len(card.labels)
    answer = f"always {majority!r}" if constant >= chance else "a guess by the class frequencies"
    predicted = {r["label"] for r in results}
    best = score([{"label": str(x)} for x in gold], gold, card)[metric]  # all right: 1, less absent classes
    return {"metric": metric, "value": value, "baseline": min(max(constant, chance), best), "best": best,
            "baseline_answer": answer, "never_predicted": sorted(set(counts) - predicted)}


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


# --- the model report's quality section ------------------------------------------------------------


def report(card: Any, inputs: Sequence[Any], gold: Sequence[Any], results: Sequence[dict[str, Any]]) -> Section:
    section = Section("Quality")
    if card.problem_type == REGRESSION:
        g = np.array([float(x) for x in gold])
        p = np.array([r["value"] for r in results])
        xs, ys, note = sample_points(g, p)
        section.blocks.append(Plot("Predicted against gold", "scatter", "gold", "predicted",
                                   series=[Series("examples", xs, ys)], diagonal=True))
        if note:
            section.notes.append(note)
        worst = np.argsort(-np.abs(p - g))[:MAX_ROWS]
        section.blocks.append(Table("Largest errors", ["input", "gold", "predicted", "error"],
                                    [[show_input(inputs[i]), round(g[i], 3), round(p[i], 3), round(p[i] - g[i], 3)]
                                     for i in worst]))
        return section
    labels = list(card.labels)
    if card.problem_type == MULTI:
        return _multi_label_report(section, card, inputs, gold, results)
    g = np.array([_index(labels, x) for x in gold])
    p = np.array([_index(labels, r["label"]) for r in results])
    k = len(labels)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (g, p), 1)
    section.blocks.append(Plot("Confusion matrix (rows: gold, columns: predicted)", "heatmap", "predicted", "gold",
                               categories=labels, rows=labels, matrix=confusion.tolist()))
    rows = []
    for j, label in enumerate(labels):
        support = confusion[j].sum()
        rows.append((label, *prf(confusion[j, j], confusion[:, j].sum(), support), int(support)))
    section.blocks.append(prf_table("Per label", rows))
    never = [labels[j] for j in range(k) if confusion[j].sum() and not confusion[:, j].sum()]
    if never:
        section.warnings.append(f"The model never predicts {', '.join(never)} although the held-out data has "
                                "it: it is stuck on the other classes (often the majority class). Try more epochs, "
                                "a higher learning rate, class weights (--class-weights balanced) or more data.")
    wrong = [i for i in range(len(g)) if g[i] != p[i]]
    wrong.sort(key=lambda i: -results[i]["score"])
    section.blocks.append(Table(f"Most confident mistakes ({len(wrong)} wrong of {len(g):,})",
                                ["input", "gold", "predicted", "score"],
                                [[show_input(inputs[i]), labels[g[i]], labels[p[i]], round(results[i]["score"], 3)]
                                 for i in wrong[:MAX_ROWS]]))
    return section


def _multi_label_report(section: Section, card: Any, inputs: Sequence[Any], gold: Sequence[Any],
                        results: Sequence[dict[str, Any]]) -> Section:
    labels = list(card.labels)
    truth = np.zeros((len(gold), len(labels)), dtype=bool)
    for i, gl in enumerate(gold):
        truth[i, [_index(labels, x) for x in gl]] = True
    probs = np.array([[r["scores"][label] for label in labels] for r in results])
    chosen = thresholds_of(card)
    grid = np.linspace(0.05, 0.95, 19)
    support = truth.sum(axis=0)
    shown = [j for j in np.argsort(-support) if support[j]][:8]
    curves = Plot("F1 against the decision threshold (the most frequent labels)", "line", "threshold", "F1")
    for j in shown:
        f1s = []
        for t in grid:
            pred = probs[:, j] >= t
            tp = float((pred & truth[:, j]).sum())
            f1s.append(2 * tp / max(1.0, float(pred.sum() + truth[:, j].sum())))
        curves.series.append(Series(f"{labels[j]} (threshold {chosen[j]:.2f})", grid.tolist(), f1s))
    section.blocks.append(curves)
    if len(shown) < int((support > 0).sum()):
        section.notes.append(f"threshold curves for the {len(shown)} most frequent of "
                             f"{int((support > 0).sum())} labels present")
    predicted = probs >= chosen
    rows = []
    for j, label in enumerate(labels):
        tp = (predicted[:, j] & truth[:, j]).sum()
        rows.append((label, *prf(tp, predicted[:, j].sum(), support[j]), int(support[j])))
    section.blocks.append(prf_table("Per label, at the tuned thresholds", rows))
    errors = (predicted != truth).sum(axis=1)
    worst = [i for i in np.argsort(-errors, kind="stable") if errors[i]][:MAX_ROWS]
    section.blocks.append(Table("Examples with the most wrong labels", ["input", "gold", "predicted"],
                                [[show_input(inputs[i]), ", ".join(map(str, gold[i])), ", ".join(results[i]["labels"])]
                                 for i in worst]))
    return section


def show_prediction(result: dict[str, Any]) -> str:
    """`positive 0.93`, a label set with its scores, or a value."""
    if "value" in result:
        return f"{result['value']:.4g}"
    if "labels" in result:
        return ", ".join(f"{label} {result['scores'][label]:.2f}" for label in result["labels"]) or "(none)"
    return f"{result['label']} {result['score']:.3f}"


async def classify(ctx: Any, body: ClassifyRequest) -> ClassifyResponse:
    model = ctx.model(body.model)
    long_text = ctx.long_text(model, body, pairs=body.pairs is not None)
    inputs = checked_inputs(ctx, model, body.texts, body.pairs)
    features, outputs = await ctx.infer(model, inputs, long_text=long_text)
    if not isinstance(outputs, Chunks):
        results = [ClassifyResult(**r, truncated=group[0].truncated)
                   for r, group in zip(postprocess(outputs, model.card), features, strict=True)]
        return ClassifyResponse(model=model.tag, results=results)
    results = []
    for r, group, chosen in zip(postprocess(outputs.rows, model.card), features, outputs.chosen, strict=True):
        start, end = window_span(group[chosen])
        results.append(ClassifyResult(**r, windows=len(group), window=WindowSpan(index=chosen, start=start, end=end)))
    return ClassifyResponse(model=model.tag, results=results)


def window_strength(rows: np.ndarray, card: Any) -> np.ndarray:
    """How sure the model is of each window: the top probability (single- and multi-label), the
    value (regression: the highest-scored window)."""
    if card.problem_type == REGRESSION:
        return np.asarray(rows[:, 0])
    probs = sigmoid(rows) if card.problem_type == MULTI else softmax(rows)
    return np.asarray(probs.max(axis=-1))


def difference(x: dict[str, Any], y: dict[str, Any]) -> float:
    """How far apart two answers are: the largest probability difference over the labels, or the
    value difference (shadow parity's histogram)."""
    if "value" in x:
        return abs(float(x["value"]) - float(y["value"]))
    return max(abs(p - y["scores"][label]) for label, p in x["scores"].items())


def checked_inputs(ctx: Any, model: Any, texts: Sequence[str] | None,
                   pairs: Sequence[Sequence[str]] | None) -> list[Any]:
    """The model's inputs: texts, or pairs for a model trained on pairs (exactly one of them, of the
    kind the model reads, within the limits), each refusal a 422 that says how to fix it."""
    inputs: list[Any]
    if (texts is None) == (pairs is None):
        both = texts is not None
        raise ValidationError(("send `texts` or `pairs`, not both" if both else "texts or pairs: Field required")
                              + ": `texts` is a list of texts, `pairs` a list of [a, b] text pairs (for a model "
                              "trained on pairs)")
    if (pairs is not None) != reads_pairs(model.card):
        sent, trained = ("pairs", "single texts") if pairs is not None else ("texts", "pairs")
        raise ValidationError(f"model {model.name!r} was trained on {trained}, and {sent} were sent: send "
                              f"`{'texts' if trained == 'single texts' else 'pairs'}`, or name a model trained on "
                              f"{sent} in `model` (GET /info lists each model's `inputs`)")
    if pairs is not None:
        ctx.check_pairs(pairs)
        inputs = [(a, b) for a, b in pairs]
    else:
        inputs = list(texts or [])
        ctx.check(inputs)
    return inputs


# --- the shapes other servers answer in (TEI's /predict, the HF text-classification task) ----------

# what each head's scores are, in the HF pipeline's words (`function_to_apply`)
SCORE_FUNCTION = {SINGLE: "softmax", MULTI: "sigmoid", REGRESSION: "none"}


async def ranked_labels(ctx: Any, model: Any, inputs: Sequence[Any], truncate: bool, raw: bool = False,
                        direction: str = "right") -> list[list[tuple[str, float]]]:
    """Every label with its score, highest first, per input (checked: `checked_inputs`):
    probabilities as `postprocess` gives them (softmax; sigmoid for multi-label; the value for
    regression), or the logits when raw."""
    _, logits = await ctx.infer(model, inputs, truncate, direction)
    card = model.card
    labels = list(card.labels) or ["LABEL_0"]
    if raw or card.problem_type == REGRESSION:
        rows = [dict(zip(labels, map(float, row), strict=True)) for row in np.asarray(logits, dtype=np.float64)]
    else:
        rows = [r["scores"] for r in postprocess(logits, card)]
    return [sorted(row.items(), key=lambda kv: -kv[1]) for row in rows]


async def tei_predict(ctx: Any, body: tei.PredictRequest) -> tei.Predictions:
    direction = tei.direction_of(body.truncation_direction)
    inputs, batch = body.batch()
    kinds = {isinstance(x, str) for x in inputs}
    if len(kinds) > 1:
        raise ValidationError("inputs mixes single texts and pairs: a model reads one or the other "
                              "(GET /info shows each model's `inputs`); send them in separate requests")
    model = ctx.model(body.model)
    texts, pairs = ([str(x) for x in inputs], None) if True in kinds else (None, [list(x) for x in inputs])
    checked = checked_inputs(ctx, model, texts, pairs)
    ranked = await ranked_labels(ctx, model, checked, bool(body.truncate), body.raw_scores, direction)
    predictions = [[tei.Prediction(label=label, score=score) for label, score in row] for row in ranked]
    return tei.Predictions(predictions if batch else predictions[0])


async def hf_text_classification(ctx: Any, body: hf.TextClassificationRequest) -> hf.TextClassificationResponse:
    params = body.parameters or hf.TextClassificationParameters()
    model = ctx.model(body.model)
    ours = SCORE_FUNCTION[model.card.problem_type or SINGLE]
    if params.function_to_apply not in (None, ours):
        hf.refuse("function_to_apply", params.function_to_apply,
                  f"this {model.card.problem_type} model's scores are {ours} (leave it out, or send {ours!r})")
    ranked = await ranked_labels(ctx, model, checked_inputs(ctx, model, [body.inputs], None), truncate=True)
    top = ranked[0][: params.top_k] if params.top_k else ranked[0]
    return hf.TextClassificationResponse([[hf.LabelScore(label=label, score=score) for label, score in top]])


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
        window_strength=window_strength,
        difference=difference,
        report=report,
        baseline=baseline,
        show_answer=show_prediction,
        request_body=request_body,
        info=lambda card: {"inputs": "pairs" if reads_pairs(card) else "texts"},
        routes=(Route("/classify", ClassifyRequest, ClassifyResponse, classify, exclude_none=True,
                      summary="Classify texts (single-label, multi-label or regression)",
                      scenario=Scenario(build=lambda src: {"texts": src.texts()}, check=check_answer)),
                # other servers' shapes: checked by the image test, not in the load mix (weight 0)
                Route(tei.PREFIX + "/predict", tei.PredictRequest, tei.Predictions, tei_predict,
                      summary="TEI's /predict: labels by score for a text or a batch",
                      scenario=Scenario(build=lambda src: {"inputs": [[t] for t in src.texts()], "truncate": True},
                                        check=answers(tei.Predictions, lambda p: len(p["inputs"])), weight=0)),
                Route(hf.PREFIX + "/text-classification", hf.TextClassificationRequest, hf.TextClassificationResponse,
                      hf_text_classification, by_model=True,
                      summary="Hugging Face Inference API text-classification",
                      scenario=Scenario(build=lambda src: {"inputs": src.text()},
                                        check=answers(hf.TextClassificationResponse, lambda p: 1), weight=0))),
        bench_data=("sst2/dev.tsv", {"text": "sentence", "label": "label"}),
        scratch_labels=("negative", "positive"),
        scratch_problem_type=SINGLE,
        demo={"train": "classification/reviews.jsonl", "epochs": 6, "learning_rate": 1e-4, "max_length": 64},
    )
)
