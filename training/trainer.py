"""The Hugging Face Trainer set up once for every task: validation, early stopping, best checkpoint,
warm-up and decay, dynamic padding with length grouping, a time budget, resume, and data-parallel
runs under torchrun or accelerate launch."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
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

from bertserve.errors import ConfigError
from bertserve.registry import get_task
from bertserve.report import HISTORY_FILE
from training import dist
from training.config import RUN_FILE, TrainConfig, checkpoint_step

log = logging.getLogger(__name__)


class OrderedTrainer(Trainer):
    """Evaluation in dataset order. Under group_by_length, transformers 4.57 also shuffles the
    evaluation set by length; NER and QA map each prediction row back to its input's windows by
    position. With several processes too: accelerate hands each process whole batches in turn
    and gathers the predictions back in dataset order."""

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        if eval_dataset is None:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset)


class TimeBudget(TrainerCallback):
    """Stop after `minutes`, evaluating and saving first so the best checkpoint is kept."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.monotonic()
        self.fired = False

    def on_step_end(self, args, state, control, **kwargs):
        # every process stops at the same step, decided by the slowest clock
        if not self.fired and dist.any_process(time.monotonic() - self.start > self.seconds, args.device):
            log.warning("time budget of %.1f minutes reached at step %d: evaluating and stopping",
                        self.seconds / 60, state.global_step)
            self.fired = True
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


class BestPossible(TrainerCallback):
    """Stop once the selection metric reaches the best value it can take (F1 1.0, or 100 on a
    0-100 scale). The Trainer keeps a later checkpoint only if it scores strictly better, so every
    step after that one would be spent without changing the model that is kept: on the sample set
    of `bertserve quickstart` the QA demo reached F1 100 at step 65, and early stopping ended it at
    step 104."""

    def __init__(self, metric: str, ceiling: float, patience: int):
        self.key = metric if metric.startswith("eval_") else f"eval_{metric}"  # as the Trainer looks it up
        self.ceiling = ceiling
        self.patience = patience
        self.active = True
        self.fired = False

    def on_train_begin(self, args, state, control, **kwargs):
        # a patience as long as the run's evaluations is early stopping turned off: the run goes on
        self.active = self.patience < math.ceil(state.max_steps / args.eval_steps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.key)
        if self.active and value is not None and value >= self.ceiling * (1 - 1e-12):
            log.info("%s reached %g, the best possible, at step %d: stopping (no later checkpoint could be kept)",
                     self.key.removeprefix("eval_"), self.ceiling, state.global_step)
            self.fired = True
            control.should_training_stop = True
        return control


# Callbacks added to every run for as long as `observe` holds them: `bertserve fit` shows the steps.
_observers: list[TrainerCallback] = []


@contextlib.contextmanager
def observe(callback: TrainerCallback) -> Iterator[None]:
    """Runs trained meanwhile (any task) also call `callback`."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


class StepReporter(TrainerCallback):
    """Tells `report(step, max_steps, metrics)` after every optimizer step and evaluation
    (`metrics` is the evaluation's, or empty)."""

    def __init__(self, report: Callable[[int, int, dict[str, float]], None]):
        self.report = report

    def on_step_end(self, args, state, control, **kwargs):
        self.report(state.global_step, state.max_steps, {})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.report(state.global_step, state.max_steps, dict(metrics or {}))


def fit(
    cfg: TrainConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    train_ds: Any,
    val_ds: Any,
    *,
    metric: str,
    greater_is_better: bool = True,
    collator: Any = None,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    trainer_cls: type[Trainer] = OrderedTrainer,
    args_cls: type[TrainingArguments] = TrainingArguments,
    args_overrides: dict[str, Any] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    small_data: bool = False,
) -> tuple[Trainer, dict[str, Any]]:
    """Train, keep the best checkpoint by `metric` (higher is better, or lower with
    `greater_is_better=False`), save it to cfg.output.

    `trainer_cls`/`args_cls` let a task use a Trainer subclass (sentence-transformers' for
    similarity) with the same validation, early stopping, time budget and resume behaviour.
    `small_data`: the task takes the small-data schedule where the learning rate or epochs are left
    out (training/defaults.py)."""
    processes = dist.world_size()
    plan = cfg.schedule_for(len(train_ds), cfg.batch_size * processes, small_data)
    log.info("schedule: learning rate %g, %g epochs (%s)", plan.learning_rate, plan.epochs, plan.why)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / (cfg.batch_size * processes)))
    # evals_per_epoch on large sets; on small ones at most once per epoch and not more often than
    # every 20 steps, since each evaluation also writes a checkpoint
    eval_steps = cfg.checkpoint_steps or max(1, min(steps_per_epoch,
                                                    max(20, steps_per_epoch // cfg.evals_per_epoch)))
    # several processes without a GPU: the Trainer runs data parallel over gloo only when told the
    # device is the CPU (otherwise each process would train a whole model of its own)
    cpu_parallel = processes > 1 and not torch.cuda.is_available()
    options: dict[str, Any] = dict(
        output_dir=str(cfg.checkpoint_dir),
        # the best checkpoint is chosen by its evaluation, so each checkpoint comes with one
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        save_safetensors=True,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better,
        learning_rate=plan.learning_rate,
        num_train_epochs=plan.epochs,
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
        use_cpu=cpu_parallel,
        ddp_backend="gloo" if cpu_parallel else None,
    )
    options.update(args_overrides or {})
    args = args_cls(**options)
    if args.world_size != processes:
        raise ConfigError(f"launched as {processes} processes, but the Trainer set up {args.world_size}: "
                          "check the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK)")
    resume = _prepare_checkpoints(cfg)
    if resume is not None and cpu_parallel:
        dist.load_onto_indexed_cpu()
    callbacks: list[TrainerCallback] = [EarlyStoppingCallback(cfg.early_stopping_patience), *_observers]
    if greater_is_better:  # every metric selected by "higher" tops out at 1, or 100 (points_per_unit 1)
        callbacks.append(BestPossible(metric, 100.0 / get_task(cfg.task).points_per_unit, cfg.early_stopping_patience))
    if cfg.max_minutes:
        callbacks.append(TimeBudget(cfg.max_minutes))
    extra: dict[str, Any] = dict(trainer_kwargs or {})
    if issubclass(trainer_cls, OrderedTrainer):
        extra.update(processing_class=tokenizer, data_collator=collator, compute_metrics=compute_metrics,
                     compute_loss_func=loss_fn)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          callbacks=callbacks, **extra)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    duration = time.monotonic() - started
    state = trainer.state
    info = {
        "duration_s": round(duration, 1),
        "global_step": state.global_step,
        "epochs_completed": round(float(state.epoch or 0), 3),
        "max_steps": state.max_steps,
        "best_step": checkpoint_step(state.best_model_checkpoint),
        "best_metric": state.best_metric,
        "stopped_early": state.global_step < state.max_steps,
        "train_loss": round(float(result.training_loss), 5),
        "train_examples": len(train_ds),
        "validation_examples": len(val_ds) if val_ds is not None else None,
        "checkpoint_steps": eval_steps,
        "resumed_from_step": checkpoint_step(resume),
        "processes": args.world_size,
        "effective_batch_size": cfg.batch_size * args.world_size,
        "schedule": plan.record(),
    }
    info["stop_reason"] = stop_reason(info, metric, cfg,
                                      time_budget=any(isinstance(c, TimeBudget) and c.fired for c in callbacks),
                                      best_possible=any(isinstance(c, BestPossible) and c.fired for c in callbacks))
    trainer.save_model(cfg.output)  # the best checkpoint, loaded at the end, as safetensors (first process)
    if dist.is_main():
        write_history(Path(cfg.output), state, info, metric)
        # save_model also pickles TrainingArguments; a published model carries no pickle at all
        (Path(cfg.output) / "training_args.bin").unlink(missing_ok=True)
    return trainer, info



def stop_reason(info: dict[str, Any], metric: str, cfg: TrainConfig, *, time_budget: bool,
                best_possible: bool) -> str:
    """Why training ended, in words (the card and the training history keep it)."""
    if time_budget:
        return f"the time budget (--max-minutes {cfg.max_minutes:g}) ran out"
    if best_possible:
        return f"validation {metric.removeprefix('validation_')} reached its best possible value"
    if info["stopped_early"]:
        return (f"early stopping: {metric} did not improve for {cfg.early_stopping_patience} "
                "evaluations in a row")
    return "all planned epochs finished"


def write_history(out: Path, state: Any, info: dict[str, Any], metric: str) -> None:
    """What the model report draws: the Trainer's log (training loss and learning rate every
    `logging_steps`, validation loss and metrics at every evaluation), the best step and why
    training stopped."""
    history = {
        "metric": metric,
        "best_step": info["best_step"],
        "best_metric": info["best_metric"],
        "global_step": info["global_step"],
        "max_steps": info["max_steps"],
        "eval_steps": info["checkpoint_steps"],
        "stop_reason": info["stop_reason"],
        "log": [{k: v for k, v in entry.items() if isinstance(v, (int, float, str))}
                for entry in state.log_history],
    }
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")


def _gpu_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def clean_checkpoints(cfg: TrainConfig) -> None:
    """Checkpoints exist for resuming; once the run is done they are only disk space. (Called after
    `save_outputs`, whose wait means no process still reads them.)"""
    if dist.is_main():
        shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)


def _prepare_checkpoints(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (with --resume; TrainConfig has checked it comes from a run with
    the same settings and data). A fresh run starts from an empty checkpoint directory."""
    resume = cfg.last_checkpoint() if cfg.resume else None
    run_file = cfg.checkpoint_dir / RUN_FILE
    if cfg.resume:
        log.info("resuming from %s", resume or "scratch (no complete checkpoint found)")
        earlier = json.loads(run_file.read_text()).get("processes", 1) if run_file.is_file() else 1
        if resume is not None and earlier != dist.world_size():
            log.warning("resuming a run of %d processes with %d: the examples per step change with it",
                        earlier, dist.world_size())
    if dist.is_main():
        if resume is None:  # stale checkpoints of an earlier run must be neither resumed nor rotated in
            shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**cfg.run_settings(), "processes": dist.world_size()}, indent=1))
        os.replace(tmp, run_file)  # other processes may be reading the checkpoints
    return resume

