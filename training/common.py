"""Pieces every task's training shares: loading the encoder safely, validation splits, outputs."""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bertserve.artifact import ModelCard, read_card, write_card
from bertserve.data import describe_source, load_task_examples
from bertserve.errors import ConfigError, DataError
from bertserve.registry import get_task
from bertserve.rows import BadRows
from training import dist
from training.config import TrainConfig

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.jsonl"


def load_tokenizer(base_model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_model, use_fast=True, trust_remote_code=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot load a tokenizer from {base_model!r} ({exc}); pass a local model directory or a "
            "Hugging Face id the hub can serve"
        ) from None
    if not tok.is_fast:
        raise ConfigError(f"{base_model} has no fast (Rust) tokenizer; bertserve serves tokenizer.json")
    return tok


def load_model(auto_class: str, base_model: str, seed: int | None = None, **kwargs: Any) -> Any:
    """Weights from safetensors only; remote code never runs. With `seed`, a new head's random
    weights come from it (not from whatever ran before in the process: the Trainer seeds later)."""
    import transformers

    cls = getattr(transformers, auto_class)
    if seed is not None:
        transformers.set_seed(seed)
    try:
        return cls.from_pretrained(base_model, use_safetensors=True, trust_remote_code=False, **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"cannot load {base_model!r} with safetensors weights ({exc}); bertserve never loads "
            "pickled (.bin) weights: convert the model to safetensors first"
        ) from None


def base_model_info(base_model: str) -> dict[str, Any]:
    """When continuing from an earlier bertserve model, record where its own encoder came from."""
    path = Path(base_model)
    if (path / "bertserve.json").is_file():
        earlier = read_card(path)
        return {"base_model": earlier.base_model, "continued_from": str(path.resolve()),
                "earlier_labels": earlier.labels}
    return {"base_model": base_model}


def read_examples(cfg: TrainConfig, source: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The task's examples from one file, and what the card says about it. A malformed row stops the
    run with its file, line and reason, or, with --skip-bad-rows, is left out and counted."""
    bad = BadRows(skip=cfg.skip_bad_rows)
    return checked(load_task_examples(cfg.task, source, cfg.columns, bad), source, bad)


def checked(examples: list[dict[str, Any]], source: str, bad: BadRows) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Log what `bad` skipped; refuse a file left with no examples. Returns the examples and the
    file's provenance for the card."""
    if bad.errors:
        log.warning("%s: %s", source, bad.summary())
    if not examples:
        raise DataError(f"{source}: no usable examples{bad.note()}")
    return examples, {**describe_source(source), "skipped_rows": len(bad.errors)}


def held_out_info(cfg: TrainConfig, how: str = "") -> dict[str, Any]:
    return {"source": f"held out from {cfg.train}{how}", "sha256": None}


def new_card(cfg: TrainConfig, problem_type: str, labels: list[str], n_train: int, n_val: int,
             train_info: dict[str, Any], val_info: dict[str, Any]) -> ModelCard:
    """The card every task's training output starts from: what, from which data, from which encoder."""
    card = ModelCard(task=cfg.task, labels=labels, problem_type=problem_type, max_length=cfg.max_length,
                     demo=cfg.demo, data={"train": {**train_info, "rows": n_train},
                                          "validation": {**val_info, "rows": n_val}})
    info = base_model_info(cfg.base_model)
    card.base_model = info.pop("base_model")
    card.training = {"config": cfg.summary(), **info}
    card.primary_metric = get_task(cfg.task).primary_metric(card)
    return card


def split_validation(
    examples: list[dict[str, Any]], cfg: TrainConfig, key: Callable[[dict[str, Any]], Any] | None,
    group: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out a validation set, stratified by `key` when given, reproducibly by seed. With
    `group`, examples sharing a group (QA questions on one context) stay on one side."""
    if len(examples) < 2:
        raise DataError(f"{cfg.train}: {len(examples)} example cannot be split into training and validation: "
                        "add training data, or pass --validation")
    train, val = _split(examples, cfg, key, group)
    if not train or not val:
        unit = "context" if group is not None else "example"
        raise DataError(f"{cfg.train}: holding out validation left {len(train)} training and {len(val)} "
                        f"validation examples (too few of each {unit}): add training data, or pass --validation")
    return train, val


def _split(
    examples: list[dict[str, Any]], cfg: TrainConfig, key: Callable[[dict[str, Any]], Any] | None,
    group: Callable[[dict[str, Any]], Any] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(cfg.seed)
    n_val = min(max(1, int(len(examples) * cfg.validation_fraction)), cfg.max_validation_examples)
    if group is not None:
        members_of: dict[Any, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            members_of[group(ex)].append(i)
        keys = list(members_of)
        rng.shuffle(keys)
        held: set[int] = set()
        for k in keys[:-1]:  # at least one group stays for training
            if len(held) >= n_val:
                break
            held.update(members_of[k])
        log.info("no --validation given: held out %d of %d examples (%d groups) for validation", len(held),
                 len(examples), sum(1 for k in keys if members_of[k][0] in held))
        return ([ex for i, ex in enumerate(examples) if i not in held],
                [ex for i, ex in enumerate(examples) if i in held])
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[key(ex) if key else None].append(i)
    chosen: set[int] = set()
    for members in groups.values():
        rng.shuffle(members)
        take = round(len(members) * n_val / len(examples))
        if len(members) > 1:
            take = max(1, min(take, len(members) - 1))
        chosen.update(members[:take])
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    val = [ex for i, ex in enumerate(examples) if i in chosen]
    log.info("no --validation given: held out %d of %d training examples for validation", len(val), len(examples))
    return train, val


def warn_overlap(train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]],
                 field: str | Callable[[dict[str, Any]], Any] = "text") -> None:
    """Warn about validation examples found in the training data (by a field, or a key of each)."""
    key = field if callable(field) else (lambda ex: ex[field])
    seen = {key(ex) for ex in train}
    overlap = sum(key(ex) in seen for ex in val)
    if overlap:
        log.warning("%d validation examples also appear in the training data: validation metrics will "
                    "be optimistic (de-duplicate the data before splitting)", overlap)


def save_outputs(cfg: TrainConfig, card: ModelCard, tokenizer: Any, validation: Sequence[dict[str, Any]]) -> None:
    """The model directory's files besides the weights; in a data-parallel run the first process
    writes them, once every process is done with the checkpoints."""
    dist.wait_for_everyone()
    if not dist.is_main():
        return
    out = Path(cfg.output)
    tokenizer.save_pretrained(out)
    with open(out / VALIDATION_FILE, "w", encoding="utf-8") as fh:
        for ex in validation:
            fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(card.metrics, indent=2) + "\n")
    write_card(out, card)
    log.info("model written to %s; validation metrics: %s", out, json.dumps(card.metrics))
