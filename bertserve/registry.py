"""The task registry: one entry per task, read by training, export, the service and the load tests.

An entry names the task's HF auto-model class and optimum export task (as strings, so that this
module stays importable without torch), the endpoint that serves it, the metric it is judged by
and the post-processing that turns model outputs into answers. Per-task code lives in
`bertserve/tasks/<task>.py`; this file only holds the shape and the lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The tasks bertserve knows about. Registering anything else is a programming error, caught at
# import time rather than at the first request.
KNOWN_TASKS = ("classification", "ner", "qa", "similarity")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    auto_model: str  # transformers class name, e.g. "AutoModelForSequenceClassification"
    optimum_task: str  # optimum export task, e.g. "text-classification"
    endpoint: str  # the service route, e.g. "/classify"
    # (model outputs for a batch, model card) -> one JSON-ready result per input. The outputs are
    # one row per input, or for tasks with `featurize` one `runtime.Windows` per input.
    postprocess: Callable[[Any, Any], list[dict[str, Any]]]
    # (results, gold labels, model card) -> metrics dict
    score: Callable[[Sequence[dict[str, Any]], Sequence[Any], Any], dict[str, float]]
    # model card -> the metric that selects checkpoints and gates export (higher is better)
    primary_metric: Callable[[Any], str]
    # labeled examples -> (the texts to run through the model, the gold answers `score` takes)
    split_examples: Callable[[Sequence[dict[str, Any]]], tuple[list[str], list[Any]]]
    # how many "points" one unit of the metric is: 100 for 0-1 metrics, 1 for metrics on 0-100
    points_per_unit: float = 100.0
    # the model output the task reads (None: the first); several are stacked on a last axis
    output_name: str | tuple[str, ...] | None = None
    # (TextEncoder, inputs, model card) -> the windows of each input, for tasks whose inputs may be
    # longer than the model's window (NER texts, QA contexts). None: one (truncated) text each.
    featurize: Callable[[Any, Sequence[Any], Any], list[list[Any]]] | None = None
    # inputs the service runs once before it reports ready
    warmup_inputs: tuple[Any, ...] = ("warm-up batch", "a second, slightly longer warm-up text")


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name not in KNOWN_TASKS:
        raise ValueError(f"unknown task {spec.name!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    _load_builtin_tasks()
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"task {name!r} is not available; available tasks: {available}") from None


def tasks() -> dict[str, TaskSpec]:
    _load_builtin_tasks()
    return dict(_REGISTRY)


def _load_builtin_tasks() -> None:
    # Importing a task module registers it; the import is idempotent.
    from bertserve.tasks import classification, ner, qa, similarity  # noqa: F401
