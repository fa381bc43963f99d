"""Fine-tuning for extractive question answering (SQuAD v1.1 / v2.0 style).

Windows come from the service's own featurization: every window whose context holds the answer
is labeled with its start and end tokens, every other window (and every window of an
unanswerable question) with the null token (CLS, found by the sequence ids). Validation scores
SQuAD F1 through the task's own post-processing; models trained with unanswerable questions get a
null-score threshold tuned on validation and stored in the card.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bertserve.artifact import ModelCard
from bertserve.errors import DataError
from bertserve.registry import get_task
from bertserve.runtime import Encoded, TextEncoder, Windows
from bertserve.tasks.qa import (
    NO_ANSWER,
    WITH_UNANSWERABLE,
    best_span,
    context_span,
    featurize,
    item_scores,
    max_question_tokens,
    null_position,
    question_tokens,
    window_stride,
)
from training.common import (
    held_out_info,
    load_model,
    load_tokenizer,
    new_card,
    read_examples,
    save_outputs,
    split_validation,
)
from training.config import TrainConfig
from training.trainer import clean_checkpoints
from training.windows import WindowedData, fit_windows

log = logging.getLogger(__name__)
SPEC = get_task("qa")
ANSWERABLE_ONLY = "answerable_only"


def answer_positions(item: Encoded, answer: dict[str, Any] | None) -> tuple[int, int]:
    """Start and end token of the answer in this window, or the null token (CLS, wherever the
    tokenizer puts it) twice when the window's context does not hold the whole answer."""
    enc = item.encoding
    span = context_span(enc)
    null = null_position(enc)
    if answer is None or span is None:
        return null, null
    lo, hi = span
    first, last = answer["start"], answer["start"] + len(answer["text"])
    if enc.offsets[lo][0] > first or enc.offsets[hi][1] < last:
        return null, null
    start = lo
    while start < hi and enc.offsets[start + 1][0] <= first:
        start += 1
    end = hi
    while end > start and enc.offsets[end - 1][1] >= last:
        end -= 1
    return start, end


def tune_null_threshold(outputs: list[Windows], gold: list[list[str]]) -> float:
    """The null-score margin that maximises F1 on validation: answer "" when
    null score - best span score exceeds it."""
    diffs, f1_answer, f1_empty = [], [], []
    for windows, answers in zip(outputs, gold, strict=True):
        score, null, start, end, _ = best_span(windows)
        text = windows.source["context"][start:end]
        diffs.append(null - score)
        f1_answer.append(item_scores(text, answers)[1])
        f1_empty.append(item_scores("", answers)[1])
    order = np.argsort(diffs)[::-1]  # largest margins first: the first to become "no answer"
    diffs_arr = np.asarray(diffs)
    total = float(np.sum(f1_answer))
    best_total, best_threshold = total, float(diffs_arr.max() + 1.0)  # nothing unanswered
    for i in order:
        total += f1_empty[i] - f1_answer[i]
        if total > best_total:
            best_total, best_threshold = total, float(diffs_arr[i] - 1e-6)
    return best_threshold


def train(cfg: TrainConfig) -> ModelCard:
    from transformers import DataCollatorWithPadding

    train_ex, train_info = read_examples(cfg, cfg.train)
    if cfg.validation:
        val_ex, val_info = read_examples(cfg, cfg.validation)
    else:
        # whole contexts go to one side: questions on a context seen in training would flatter validation
        train_ex, val_ex = split_validation(train_ex, cfg, None, group=lambda ex: ex["context"])
        val_info = held_out_info(cfg, " (by context)")
    unanswerable = sum(not ex["answers"] for ex in train_ex)
    if unanswerable == len(train_ex):
        raise DataError(f"{cfg.train}: none of the {len(train_ex)} training questions has an answer; extractive "
                        "QA learns from answered ones (answers with 'text' and 'answer_start')")
    problem_type = WITH_UNANSWERABLE if unanswerable else ANSWERABLE_ONLY
    log.info("%d training / %d validation questions (%d unanswerable in training)", len(train_ex), len(val_ex),
             unanswerable)

    tokenizer = load_tokenizer(cfg.base_model)
    card = new_card(cfg, problem_type, [], len(train_ex), len(val_ex), train_info, val_info)
    encoder = TextEncoder(tokenizer.backend_tokenizer, cfg.max_length)
    limit = max_question_tokens(card)

    def fitting(examples: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
        """The questions that leave room for context in a window."""
        lengths = question_tokens(encoder, [ex["question"] for ex in examples])
        kept = [ex for ex, n in zip(examples, lengths, strict=True) if n <= limit]
        if not kept:
            raise DataError(f"{source}: every question is longer than {limit} tokens, the most a "
                            f"{cfg.max_length}-token window leaves room for: raise --max-length")
        if len(kept) < len(examples):
            log.warning("%s: skipped %d questions longer than %d tokens", source, len(examples) - len(kept), limit)
        return kept

    def windowed(examples: list[dict[str, Any]]) -> tuple[WindowedData, list[list[str]]]:
        """Features of the questions, and their reference answers."""
        items = [{"question": ex["question"], "context": ex["context"]} for ex in examples]
        windows = featurize(encoder, items, card)
        labels = []
        for ex, group in zip(examples, windows, strict=True):
            spans = [answer_positions(item, ex["answers"][0] if ex["answers"] else None) for item in group]
            labels.append({"start_positions": [s for s, _ in spans], "end_positions": [e for _, e in spans]})
        return WindowedData(items, windows, labels), [[a["text"] for a in ex["answers"]] for ex in examples]

    train_kept = fitting(train_ex, cfg.train)
    val_kept = fitting(val_ex, cfg.validation or "the validation split")
    train_f, _ = windowed(train_kept)
    val_f, val_gold = windowed(val_kept)
    model = load_model(SPEC.auto_model, cfg.base_model, seed=cfg.seed)
    log.info("%d training windows (window %d tokens, stride %d)", len(train_f), cfg.max_length, window_stride(card))
    prediction, metrics = fit_windows(cfg, SPEC, card, model, tokenizer, train_f, val_f, val_gold,
                                      DataCollatorWithPadding(tokenizer))
    if problem_type == WITH_UNANSWERABLE:
        card.thresholds = {NO_ANSWER: tune_null_threshold(val_f.outputs(prediction.predictions), val_gold)}
        log.info("null-score threshold tuned on validation: %.3f", card.thresholds[NO_ANSWER])
    card.metrics = metrics(prediction)
    # the questions validation scored: the export gate reads them, and a longer one the model
    # cannot take would stop it
    save_outputs(cfg, card, tokenizer, val_kept)
    clean_checkpoints(cfg)
    return card


def baseline(model_dir: Any, card: ModelCard, batch_size: int) -> Any:
    """The bench's baseline: transformers' question-answering pipeline with our window and stride."""
    from training.predict import hf_pipeline

    pipe = hf_pipeline("question-answering", model_dir)
    stride = window_stride(card)
    return lambda items: pipe(question=[i["question"] for i in items], context=[i["context"] for i in items],
                              batch_size=batch_size, max_seq_len=card.max_length, doc_stride=stride)
