"""The Hugging Face Trainer set up once for every task: validation, early stopping, best checkpoint,
warm-up and decay, dynamic padding with length grouping, a time budget, resume."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from training.config import TrainConfig

log = logging.getLogger(__name__)


class OrderedTrainer(Trainer):
    """Evaluation in dataset order. Under group_by_length, transformers 4.57 also shuffles the
    evaluation set by length; NER maps each prediction row back to its text's windows by position."""

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        if eval_dataset is None or self.args.world_size > 1:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset)


class TimeBudget(TrainerCallback):
    """Stop after `minutes`, evaluating and saving first so the best checkpoint is kept."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.monotonic()
        self.fired = False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.fired and time.monotonic() - self.start > self.seconds:
            log.warning("time budget of %.1f minutes reached at step %d: evaluating and stopping",
                        self.seconds / 60, state.global_step)
            self.fired = True
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


def fit(
    cfg: TrainConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    train_ds: Any,
    val_ds: Any,
    *,
    metric: str,
    collator: Any = None,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    trainer_cls: type[Trainer] = OrderedTrainer,
    args_cls: type[TrainingArguments] = TrainingArguments,
    args_overrides: dict[str, Any] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """Train, keep the best checkpoint by `metric` (higher is better), save it to cfg.output.

    `trainer_cls`/`args_cls` let a task use a Trainer subclass (sentence-transformers' for
    similarity) with the same validation, early stopping, time budget and resume behaviour."""
    steps_per_epoch = max(1, math.ceil(len(train_ds) / cfg.batch_size))
    # evals_per_epoch on large sets; on small ones at most once per epoch and not more often than
    # every 20 steps, since each evaluation also writes a checkpoint
    eval_steps = max(1, min(steps_per_epoch, max(20, steps_per_epoch // cfg.evals_per_epoch)))
    options: dict[str, Any] = dict(
        output_dir=str(cfg.checkpoint_dir),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        save_safetensors=True,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs_for(len(train_ds)),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(64, cfg.batch_size),
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        group_by_length=True,
        length_column_name="length",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=max(1, eval_steps // 4),
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # mixed precision on a GPU (bf16 where the card has it); full fp32 on CPU
        bf16=_gpu_bf16(),
        fp16=torch.cuda.is_available() and not _gpu_bf16(),
    )
    options.update(args_overrides or {})
    args = args_cls(**options)
    callbacks: list[TrainerCallback] = [EarlyStoppingCallback(cfg.early_stopping_patience)]
    if cfg.max_minutes:
        callbacks.append(TimeBudget(cfg.max_minutes))
    extra: dict[str, Any] = dict(trainer_kwargs or {})
    if issubclass(trainer_cls, OrderedTrainer):
        extra.update(processing_class=tokenizer, data_collator=collator, compute_metrics=compute_metrics,
                     compute_loss_func=loss_fn)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          callbacks=callbacks, **extra)
    resume = None
    if cfg.resume:
        resume = get_last_checkpoint(str(cfg.checkpoint_dir)) if cfg.checkpoint_dir.is_dir() else None
        log.info("resuming from %s", resume or "scratch (no checkpoint found)")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    duration = time.monotonic() - started
    state = trainer.state
    info = {
        "duration_s": round(duration, 1),
        "global_step": state.global_step,
        "epochs_completed": round(float(state.epoch or 0), 3),
        "max_steps": state.max_steps,
        "best_step": _step_of(state.best_model_checkpoint),
        "best_metric": state.best_metric,
        "stopped_early": state.global_step < state.max_steps,
        "train_loss": round(float(result.training_loss), 5),
        "train_examples": len(train_ds),
        "validation_examples": len(val_ds) if val_ds is not None else None,
    }
    trainer.save_model(cfg.output)  # the best checkpoint, loaded at the end, as safetensors
    # save_model also pickles TrainingArguments; a published model carries no pickle at all
    (Path(cfg.output) / "training_args.bin").unlink(missing_ok=True)
    return trainer, info


def _gpu_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def clean_checkpoints(cfg: TrainConfig) -> None:
    """Checkpoints exist for resuming; once the run is done they are only disk space."""
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    name = Path(checkpoint).name
    return int(name.rsplit("-", 1)[-1]) if name.startswith("checkpoint-") else None
