"""Fine-tuning: turns labeled data into a bertserve model directory (torch, transformers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertserve.artifact import ModelCard
    from training.config import TrainConfig


def run_training(cfg: TrainConfig) -> ModelCard:
    """Dispatch to the task's trainer (one module per task)."""
    from bertserve.registry import get_task
    from training import dist

    card = get_task(cfg.task).training_module().train(cfg)  # unknown tasks are refused with the known ones
    dist.shutdown()  # a data-parallel run ends its process group before the process ends
    return card
