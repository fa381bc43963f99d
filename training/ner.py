"""Fine-tuning for named-entity recognition (token classification).

Training sees exactly the windows and words the service sees: the windows come from the same
`TextEncoder` over the model's own (Rust) tokenizer, labels sit on each word's first sub-token,
and validation scores entity-level F1 through the task's own post-processing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from bertserve.artifact import ModelCard
from bertserve.errors import DataError
from bertserve.registry import get_task
from bertserve.runtime import TextEncoder
from bertserve.tasks.ner import bio_labels, featurize, training_labels, window_stride
from training.common import (
    held_out_info,
    load_model,
    load_tokenizer,
    new_card,
    read_examples,
    save_outputs,
    split_validation,
    warn_overlap,
)
from training.config import TrainConfig
from training.trainer import clean_checkpoints
from training.windows import WindowedData, fit_windows

log = logging.getLogger(__name__)
SPEC = get_task("ner")


def entity_counts(examples: list[dict[str, Any]]) -> Counter[str]:
    return Counter(ent["label"] for ex in examples for ent in ex["entities"])


def check_entities(cfg: TrainConfig, train: Counter[str], val: Counter[str]) -> None:
    """Refuse entity sets nothing can be learned or measured from, before any model is loaded."""
    if not train:
        raise DataError(f"{cfg.train}: no entities found, every tag is 'O'; NER needs tagged entities: tags "
                        "like B-PER/I-PER (IOB2), bare types, or BIOES in the last column of a CoNLL file, "
                        "'tags' in JSONL, or character spans under 'entities'")
    missing = sorted(set(val) - set(train))
    if missing:
        raise DataError(f"validation entity types {missing} never occur in the training data: "
                        "add examples of them to --train or remove them from --validation")
    if not val:
        raise DataError(f"{cfg.validation or 'the validation split'}: no entities in the validation data, so "
                        "entity F1 cannot be measured: give validation sentences with entities (--validation)")
    unmeasured = sorted(set(train) - set(val))
    if unmeasured:
        log.warning("entity types %s never occur in the validation data: their F1 is not measured", unmeasured)


def train(cfg: TrainConfig) -> ModelCard:
    from transformers import DataCollatorForTokenClassification

    train_ex, train_info = read_examples(cfg, cfg.train)
    if cfg.validation:
        val_ex, val_info = read_examples(cfg, cfg.validation)
    else:
        train_ex, val_ex = split_validation(train_ex, cfg, None)
        val_info = held_out_info(cfg)
    warn_overlap(train_ex, val_ex)
    counts = entity_counts(train_ex)
    check_entities(cfg, counts, entity_counts(val_ex))
    labels = bio_labels(counts)
    log.info("%d training / %d validation texts; entities in training: %s", len(train_ex), len(val_ex),
             dict(counts.most_common()))

    tokenizer = load_tokenizer(cfg.base_model)
    card = new_card(cfg, "token_classification", labels, len(train_ex), len(val_ex), train_info, val_info)
    encoder = TextEncoder(tokenizer.backend_tokenizer, cfg.max_length)
    label_ids = {name: i for i, name in enumerate(labels)}

    def windowed(examples: list[dict[str, Any]]) -> WindowedData:
        texts = [ex["text"] for ex in examples]
        windows = featurize(encoder, texts, card)
        per_window = [{"labels": training_labels(ex["text"], items, ex["entities"], label_ids)}
                  for ex, items in zip(examples, windows, strict=True)]
        return WindowedData(texts, windows, per_window)

    train_f, val_f = windowed(train_ex), windowed(val_ex)
    model = load_model(
        SPEC.auto_model,
        cfg.base_model,
        seed=cfg.seed,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
        ignore_mismatched_sizes=True,
    )
    log.info("%d training windows from %d texts (window %d tokens, stride %d)", len(train_f),
             len(train_ex), cfg.max_length, window_stride(card))
    prediction, metrics = fit_windows(cfg, SPEC, card, model, tokenizer, train_f, val_f,
                                      [e["entities"] for e in val_ex], DataCollatorForTokenClassification(tokenizer))
    card.metrics = metrics(prediction)
    save_outputs(cfg, card, tokenizer, val_ex)
    clean_checkpoints(cfg)
    return card


def baseline(model_dir: Any, card: ModelCard, batch_size: int) -> Any:
    """The bench's baseline: transformers' token-classification pipeline (it takes no truncation
    arguments: it reads long texts whole, as /ner does)."""
    from training.predict import hf_pipeline

    pipe = hf_pipeline("token-classification", model_dir, aggregation_strategy="simple")
    return lambda texts: pipe(list(texts), batch_size=batch_size)
