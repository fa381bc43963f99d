"""Data-parallel training (`torchrun --nproc_per_node N`, `accelerate launch`): every process runs
the same code on its share of each batch; only the first one writes files and reports.

The launchers describe the run in the environment (RANK, WORLD_SIZE, LOCAL_RANK); the Trainer sets
up the process group from it (NCCL on GPUs, gloo on CPUs). These helpers read the same variables,
so they answer correctly before the Trainer exists (data loading, checks) and after it.
(torch is imported where it is used: `training.config` asks `is_main` before any model exists.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bertserve.errors import ConfigError

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# what mpirun (Open MPI, MPICH/Intel MPI, MVAPICH) tells each process about the group
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
TORCHRUN = "torchrun --standalone --nproc_per_node N -m bertserve_cli train ..."


def check_launch(environ: Mapping[str, str] | None = None) -> None:
    """Refuse launches that would silently not be the data-parallel run asked for. On CPUs,
    `accelerate launch --num_processes N` (with or without --cpu) starts one process, not N, unless
    under mpirun; under mpirun the processes learn their rank from MPI variables, not from RANK and
    WORLD_SIZE, and each would train a whole model of its own into the same --output."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return  # torchrun, or accelerate launch --multi_gpu (torchrun's launcher, on CPUs too)
    mpi = next((int(env[v]) for v in MPI_SIZE_VARIABLES if env.get(v, "").isdigit()), 1)
    if mpi > 1:
        raise ConfigError(f"started by mpirun as {mpi} processes: bertserve runs data parallel under torchrun "
                          f"(RANK, WORLD_SIZE), not MPI, so each would train a model of its own; run {TORCHRUN}")
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env:  # accelerate's one-process launcher, asked for more
        raise ConfigError("accelerate launch started one process, not the several asked for (it starts several "
                          "with --multi_gpu; with --cpu or without --multi_gpu, only under mpirun). Run "
                          f"`{TORCHRUN}`, or `accelerate launch --multi_gpu --num_processes N ...` (GPUs, or "
                          "gloo processes on CPUs), or pass --num_processes 1")


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
