"""Fine-tuning for text classification: single-label, multi-label and regression."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bertserve.artifact import ModelCard
from bertserve.data import load_examples
from bertserve.errors import ConfigError, DataError
from bertserve.metrics import tune_thresholds
from bertserve.quality import assess
from bertserve.registry import get_task
from bertserve.rows import BadRows
from bertserve.tasks.classification import (
    HF_PROBLEM_TYPE,
    MULTI,
    PROBLEM_TYPES,
    REGRESSION,
    SINGLE,
    sigmoid,
)
from training.common import (
    checked,
    held_out_info,
    load_model,
    load_tokenizer,
    new_card,
    save_outputs,
    split_validation,
    warn_overlap,
)
from training.config import TrainConfig
from training.trainer import clean_checkpoints, fit

log = logging.getLogger(__name__)
SPEC = get_task("classification")
IMBALANCE_RATIO = 3.0  # single-label, class_weights=auto: weights from this largest/smallest class ratio


def selection_metric(card: ModelCard) -> tuple[str, bool]:
    """The validation metric that picks the kept checkpoint and drives early stopping, and whether
    higher is better. Regression keeps the lowest MSE: Spearman (still the reported and gated
    metric) ignores the scale of the values, and a head that has barely moved from zero can rank
    a few validation texts perfectly by chance (Spearman 1.0 at the first evaluation, MSE 8 on
    targets of 0.5-4.5), and then no later checkpoint can beat it."""
    if card.problem_type == REGRESSION:
        return "mse", False
    return card.primary_metric, True


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def detect_problem_type(labels: list[Any]) -> str:
    if any(isinstance(label, list) for label in labels):
        return MULTI
    if all(_is_number(label) for label in labels) and any(float(label) != int(float(label)) for label in labels):
        return REGRESSION
    return SINGLE


def label_set(examples: list[dict[str, Any]], problem_type: str) -> list[str]:
    if problem_type == REGRESSION:
        return ["value"]
    names: set[str] = set()
    for ex in examples:
        names.update(map(str, ex["label"]) if problem_type == MULTI else [str(ex["label"])])
    # numeric ids keep their numeric order ("2" before "10")
    return sorted(names, key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))


def normalise(examples: list[dict[str, Any]], problem_type: str, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """Labels in the problem type's form; a label that does not fit is a malformed row (`bad`)."""
    bad = bad or BadRows()
    out = []
    for i, ex in enumerate(examples):
        with bad.row():
            pair = {"text_pair": ex["text_pair"]} if "text_pair" in ex else {}
            out.append({"text": ex["text"], **pair,
                        "label": _label(ex["label"], problem_type, ex.get("where", f"example {i + 1}"))})
    return out


def _label(label: Any, problem_type: str, where: str) -> Any:
    if problem_type == MULTI:
        return [str(x) for x in (label if isinstance(label, list) else [label])]
    if problem_type == REGRESSION:
        if not _is_number(label) or not math.isfinite(float(label)):
            raise DataError(f"{where}: label {label!r}; a regression label must be a finite number")
        return float(label)
    if isinstance(label, list):
        raise DataError(f"{where}: a list of labels, but the problem type is single-label "
                        "(pass --problem-type multi_label, or give one label per text)")
    return str(label)


def _load(cfg: TrainConfig, source: str, problem_type: str | None,
          columns: Any = None) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Examples with labels in the problem type's form (detected from `source` when None)."""
    bad = BadRows(skip=cfg.skip_bad_rows)
    raw = load_examples(source, columns(source) if columns else cfg.columns, bad, locate=True)
    if problem_type is None:
        problem_type = detect_problem_type([ex["label"] for ex in raw])
        log.info("problem type detected from the labels: %s (override with --problem-type)", problem_type)
    examples, info = checked(normalise(raw, problem_type, bad), source, bad)
    return examples, problem_type, info


def check_labels(cfg: TrainConfig, problem_type: str, labels: list[str], train: list[dict[str, Any]],
                 val: list[dict[str, Any]]) -> None:
    """Refuse label sets nothing can be learned or measured from, before any model is loaded."""
    where = cfg.train
    if problem_type == REGRESSION:
        for name, examples in (("training", train), ("validation", val)):
            values = {ex["label"] for ex in examples}
            if len(values) < 2:
                raise DataError(f"every {name} label is {next(iter(values)):g}: regression needs varying "
                                "values (is --label-column the right column?)")
        return
    if problem_type == SINGLE and len(labels) < 2:
        raise DataError(f"{where}: only one label ({labels[0]!r}) occurs in the training data; single-label "
                        "classification needs two or more: add examples of the other classes, or check "
                        "--label-column")
    if problem_type == MULTI:
        if not labels:
            raise DataError(f"{where}: no training example has a label; multi-label classification needs "
                            "positive labels (check --label-column and --label-separator)")
        always = [name for name in labels if all(name in ex["label"] for ex in train)]
        if len(always) == len(labels):
            raise DataError(f"{where}: every training example carries every label ({', '.join(labels)}): "
                            "there is nothing to tell apart; add examples without some of the labels")
    unseen = Counter(name for ex in val for name in (ex["label"] if problem_type == MULTI else [ex["label"]])
                     if name not in set(labels))
    if unseen:
        listed = ", ".join(f"{name!r} ({n}x)" for name, n in unseen.most_common(5))
        raise DataError(f"{cfg.validation or 'the validation split'}: labels that never occur in the training "
                        f"data: {listed}; add training examples of them, or remove them from the validation data")
    if problem_type == SINGLE:
        missing = sorted(set(labels) - {ex["label"] for ex in val})
        if missing:
            log.warning("labels %s never occur in the validation data: their F1 is not measured and "
                        "macro-F1 is computed without them", missing)


def _key(ex: dict[str, Any]) -> Any:
    return (ex["text"], ex["text_pair"]) if "text_pair" in ex else ex["text"]


def check_pairs(cfg: TrainConfig, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> bool:
    """Whether the model reads pairs; training and validation must both be pairs or both single texts."""
    pairs = "text_pair" in train[0]
    if any(("text_pair" in ex) != pairs for ex in val):
        what = ("pairs", "single texts") if pairs else ("single texts", "pairs")
        raise DataError(f"{cfg.validation or 'the validation split'}: the training data holds {what[0]} and the "
                        f"validation data {what[1]}: validate on the same kind of input (for pairs, name the "
                        "second text with --text-pair-column, or a `text_pair` field in JSONL)")
    return pairs


def encode_labels(examples: list[dict[str, Any]], labels: list[str], problem_type: str) -> list[Any]:
    index = {name: i for i, name in enumerate(labels)}
    out: list[Any] = []
    for ex in examples:
        if problem_type == REGRESSION:
            out.append(float(ex["label"]))
        elif problem_type == MULTI:
            row = [0.0] * len(labels)
            for name in ex["label"]:
                if name not in index:
                    raise DataError(f"validation label {name!r} never occurs in the training data")
                row[index[name]] = 1.0
            out.append(row)
        else:
            if ex["label"] not in index:
                raise DataError(f"validation label {ex['label']!r} never occurs in the training data")
            out.append(index[ex["label"]])
    return out


def class_weights(cfg: TrainConfig, train_labels: list[Any], n_labels: int, problem_type: str) -> torch.Tensor | None:
    if problem_type == REGRESSION or cfg.class_weights == "none":
        return None
    if problem_type == MULTI:
        # Each label is a binary problem, mostly negative: weighting its positives (capped at 10)
        # keeps rare labels from collapsing to "never"; thresholds are tuned afterwards anyway.
        pos = np.asarray(train_labels).sum(axis=0)
        weights = np.clip((len(train_labels) - pos) / np.maximum(pos, 1), 1.0, 10.0)
        log.info("multi-label positive weights: min %.2f, max %.2f", weights.min(), weights.max())
        return torch.tensor(weights, dtype=torch.float32)
    counts = np.bincount(np.asarray(train_labels), minlength=n_labels).astype(float)
    ratio = counts.max() / max(counts.min(), 1)
    if cfg.class_weights == "auto" and ratio < IMBALANCE_RATIO:
        log.info("classes are balanced enough (largest/smallest = %.1f): no class weights", ratio)
        return None
    weights = counts.sum() / (n_labels * np.maximum(counts, 1))
    log.info("class weights (largest/smallest class = %.1f): %s", ratio, np.round(weights, 3).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(weights: torch.Tensor | None, problem_type: str):
    if weights is None:
        return None

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        w = weights.to(logits.device)
        if problem_type == MULTI:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=w)
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), weight=w)

    return loss_fn


def gold_from_ids(label_ids: np.ndarray, card: ModelCard) -> list[Any]:
    if card.problem_type == REGRESSION:
        return [float(v) for v in np.ravel(label_ids)]
    if card.problem_type == MULTI:
        return [[card.labels[j] for j in np.flatnonzero(row > 0.5)] for row in label_ids]
    return [card.labels[int(i)] for i in label_ids]


def train(cfg: TrainConfig, columns: Callable[[str], Any] | None = None,
          check: Callable[[str, list[str], list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
          extra_metrics: Callable[[list[dict[str, Any]], np.ndarray, ModelCard], dict[str, float]] | None = None,
          group: Callable[[dict[str, Any]], Any] | None = None, small_data: bool = True) -> ModelCard:
    """Train a classification head. Tasks built on it (rerank) pass `columns` (the columns of a
    file), `check` (problem type, labels, training and validation examples: refuse what the task
    cannot use) and `extra_metrics` (validation examples, their logits, the card: metrics that
    join the classification ones, among them the task's primary metric); `group` keeps examples
    of one group (a query's pairs) on one side of a held-out validation split. `small_data`: a small
    set trains with the small-data schedule where the learning rate or epochs are left out
    (training/defaults.py; measured on classification only, so rerank passes False)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    if cfg.problem_type != "auto" and cfg.problem_type not in PROBLEM_TYPES:
        raise ConfigError(f"problem type must be auto or one of {PROBLEM_TYPES}, got {cfg.problem_type!r}")
    train_ex, problem_type, train_info = _load(cfg, cfg.train, None if cfg.problem_type == "auto" else cfg.problem_type,
                                               columns)
    if cfg.validation:
        val_ex, _, val_info = _load(cfg, cfg.validation, problem_type, columns)
    else:
        stratify = (lambda ex: ex["label"]) if problem_type == SINGLE else None
        train_ex, val_ex = split_validation(train_ex, cfg, stratify, group)
        val_info = held_out_info(cfg)
    pairs = check_pairs(cfg, train_ex, val_ex)
    warn_overlap(train_ex, val_ex, _key)
    labels = label_set(train_ex, problem_type)
    check_labels(cfg, problem_type, labels, train_ex, val_ex)
    if check is not None:
        check(problem_type, labels, train_ex, val_ex)
    log.info("%d training / %d validation examples, labels: %s", len(train_ex), len(val_ex),
             labels if len(labels) <= 12 else f"{len(labels)} labels")
    if problem_type == SINGLE:
        log.info("label counts: %s", dict(Counter(ex["label"] for ex in train_ex).most_common()))

    tokenizer = load_tokenizer(cfg.base_model)
    card = new_card(cfg, problem_type, labels, len(train_ex), len(val_ex), train_info, val_info)
    card.training["inputs"] = "pairs" if pairs else "texts"  # /classify takes what the model was trained on

    def to_dataset(examples: list[dict[str, Any]]) -> Dataset:
        # pairs: the tokenizer's pair input, cut longest side first (`longest_first`, as served)
        second = [ex["text_pair"] for ex in examples] if pairs else None
        enc = tokenizer([ex["text"] for ex in examples], second, truncation="longest_first",
                        max_length=cfg.max_length)
        columns = dict(enc)
        columns["labels"] = encode_labels(examples, labels, problem_type)
        columns["length"] = [len(ids) for ids in enc["input_ids"]]
        return Dataset.from_dict(columns)

    train_ds, val_ds = to_dataset(train_ex), to_dataset(val_ex)
    model = load_model(
        SPEC.auto_model,
        cfg.base_model,
        seed=cfg.seed,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=HF_PROBLEM_TYPE[problem_type],
        ignore_mismatched_sizes=True,
    )
    weights = class_weights(cfg, train_ds["labels"], len(labels), problem_type)
    card.training["class_weights"] = None if weights is None else [round(float(w), 4) for w in weights]

    def compute_metrics(pred: Any) -> dict[str, float]:
        results = SPEC.postprocess(pred.predictions, card)
        metrics = SPEC.score(results, gold_from_ids(pred.label_ids, card), card)
        if extra_metrics is not None:
            metrics.update(extra_metrics(val_ex, pred.predictions, card))
        return metrics

    metric, greater_is_better = selection_metric(card)
    trainer, info = fit(
        cfg, model, tokenizer, train_ds, val_ds,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        metric=metric,
        greater_is_better=greater_is_better,
        loss_fn=make_loss(weights, problem_type),
        small_data=small_data,
    )
    card.training.update(info)
    prediction = trainer.predict(val_ds)
    if problem_type == MULTI:
        flat = compute_metrics(prediction)
        probs = sigmoid(prediction.predictions)
        tuned = tune_thresholds(prediction.label_ids > 0.5, probs)
        card.thresholds = {name: float(t) for name, t in zip(labels, tuned, strict=True)}
        card.metrics = compute_metrics(prediction)
        card.metrics.update({f"{k}@0.5": v for k, v in flat.items()})
    else:
        card.metrics = compute_metrics(prediction)
    # the quality gate's measure: the kept model against a constant answer on the same examples
    card.training["quality"] = assess(card, SPEC.postprocess(prediction.predictions, card),
                                      gold_from_ids(prediction.label_ids, card))
    save_outputs(cfg, card, tokenizer, val_ex)
    clean_checkpoints(cfg)
    return card


def baseline(model_dir: Any, card: ModelCard, batch_size: int) -> Any:
    """The bench's baseline: transformers' text-classification pipeline."""
    from training.predict import hf_pipeline

    pipe = hf_pipeline("text-classification", model_dir)

    def run(inputs: Any) -> Any:  # pairs as the pipeline takes them: {"text", "text_pair"}
        texts = [x if isinstance(x, str) else {"text": x[0], "text_pair": x[1]} for x in inputs]
        return pipe(texts, batch_size=batch_size, truncation=True, max_length=card.max_length)

    return run
