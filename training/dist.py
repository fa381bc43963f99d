"""Data-parallel training (`torchrun --nproc_per_node N`, `accelerate launch`): every process runs
the same code on its share of each batch; only the first one writes files and reports.

The launchers describe the run in the environment (RANK, WORLD_SIZE, LOCAL_RANK); the Trainer sets
up the process group from it (NCCL on GPUs, gloo on CPUs). These helpers read the same variables,
so they answer correctly before the Trainer exists (data loading, checks) and after it.
(torch is imported where it is used: `training.config` asks `is_main` before any model exists.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes the model directory, the checkpoints and the final report."""
    return rank() == 0


def initialized() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def wait_for_everyone() -> None:
    """Every process reaches this point before any goes on (no-op in a single process): the first
    process must not delete checkpoints another is still loading the best model from."""
    if initialized():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def shutdown() -> None:
    if initialized():
        import torch

        torch.distributed.destroy_process_group()


def any_process(flag: bool, device: torch.device | str) -> bool:
    """True on every process when it is true on any: decisions taken from a process's own clock
    (the time budget) must be the same everywhere, or the others wait forever at the next step."""
    if not initialized():
        return flag
    import torch

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


_CPU_INDEX_LOADS = False


def load_onto_indexed_cpu() -> None:
    """Let torch.load map storages onto "cpu:0". A resumed data-parallel run loads its optimizer
    state onto the Trainer's device, which accelerate names cpu:0 on CPUs; torch.load knows only
    "cpu" and would stop the resume. (On GPUs the device is cuda:N, which it knows.)"""
    global _CPU_INDEX_LOADS
    import torch

    if _CPU_INDEX_LOADS:
        return

    def deserialize(obj: Any, location: str) -> Any:
        return obj if location.startswith("cpu:") else None

    torch.serialization.register_package(11, lambda obj: None, deserialize)
    _CPU_INDEX_LOADS = True
