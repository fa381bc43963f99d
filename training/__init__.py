"""Fine-tuning: turns labeled data into a bertserve model directory (torch, transformers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertserve.artifact import ModelCard
    from training.config import TrainConfig


def run_training(cfg: TrainConfig) -> ModelCard:
    """Dispatch to the task's trainer (one module per task), once the data has been read."""
    from bertserve.registry import get_task
    from training import dist

    spec = get_task(cfg.task)  # refuses unknown tasks with the list of known ones
    check_data(cfg)
    card: ModelCard = spec.training_module().train(cfg)
    dist.shutdown()  # a data-parallel run ends its process group before the process ends
    if dist.is_main():
        from bertserve.quality import warn

        warn(card.training.get("quality"), f"the model in {cfg.output}")
    return card


def check_data(cfg: TrainConfig) -> None:
    """Read the data files once before torch and transformers load (10 s or more): a missing file,
    a wrong column, an empty file or a malformed row is reported in about a second, not after that.
    The trainer reads them again (reading is a small fraction of a run); hub datasets (`hf:`) are
    checked by the trainer, which needs `datasets` to read them anyway."""
    from bertserve.data import HF_PREFIX, load_task_examples
    from bertserve.errors import DataError
    from bertserve.rows import BadRows

    for source in (cfg.train, cfg.validation):
        if not source or source.startswith(HF_PREFIX):
            continue
        bad = BadRows(skip=cfg.skip_bad_rows)
        if not load_task_examples(cfg.task, source, cfg.columns, bad):
            raise DataError(f"{source}: no usable examples{bad.note()}")
