"""The task registry: the one place a task lives. Training, export, evaluation, the service, the
client, the bench and the load tests all read a task's entry here and branch on nothing else.

An entry (`TaskSpec`) names the task's HF auto-model class and optimum export task (as strings, so
that this module stays importable without torch), its routes (request and response schemas, and
the handler that answers them), how its examples are read and split, the one post-processing,
scoring and parity agreement, its bench data and its load-test scenario. Per-task code lives in
`bertserve/tasks/<task>.py` (torch-free) and `training/<task>.py` (the PyTorch side: `train`, and
optionally `reference_backend`, `baseline` and `scratch_model`).

Tasks are found by registration: the built-in modules, every module named in
`BERTSERVE_TASK_MODULES` (comma-separated import paths) and every entry point in the
`bertserve.tasks` group. An unknown task name fails at once with the list of known ones.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any

from bertserve.errors import ConfigError
from bertserve.report import show_answer

TASK_MODULES_ENV = "BERTSERVE_TASK_MODULES"
ENTRY_POINT_GROUP = "bertserve.tasks"
BUILTIN_TASK_MODULES = ("bertserve.tasks.classification", "bertserve.tasks.ner", "bertserve.tasks.qa",
                        "bertserve.tasks.similarity", "bertserve.tasks.rerank")


@dataclass(frozen=True)
class Scenario:
    """A load-test scenario for one route: `build(source)` makes a request body from a text source
    (`loadtests/locustfile.TextSource`: `texts()`, `text()`, `paragraph()`, `question()`,
    `candidates()`), and
    `check(body_sent, answer)` says why a 200 answer is wrong, or None when it is right."""

    build: Callable[[Any], dict[str, Any]]
    check: Callable[[dict[str, Any], Any], str | None]
    weight: int = 1


@dataclass(frozen=True)
class Route:
    """One HTTP route of a task. `handle(ctx, body)` answers a validated request; `ctx` is the
    service's `service.routes.TaskContext`: `ctx.model(name)`, `ctx.check(...)`,
    `await ctx.infer(model, inputs, truncate)`, `await ctx.offload(fn, *args)`."""

    path: str
    request: type
    response: type
    handle: Callable[[Any, Any], Awaitable[Any]]
    summary: str
    exclude_none: bool = False
    scenario: Scenario | None = None
    # also served at `<path>/{model}`, the model named in the URL (for clients that cannot name it
    # in the body: the Hugging Face InferenceClient posts to a URL exactly as given)
    by_model: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str
    auto_model: str  # transformers class name, e.g. "AutoModelForSequenceClassification"
    optimum_task: str  # optimum export task, e.g. "text-classification"
    # (model outputs for a batch, model card) -> one JSON-ready result per input. The outputs are
    # one row per input, or for tasks with `featurize` one `runtime.Windows` per input.
    postprocess: Callable[[Any, Any], list[dict[str, Any]]]
    # (results, gold labels, model card) -> metrics dict
    score: Callable[[Sequence[dict[str, Any]], Sequence[Any], Any], dict[str, float]]
    # model card -> the metric that selects checkpoints and gates export (higher is better)
    primary_metric: Callable[[Any], str]
    # labeled examples -> (the inputs to run through the model, the gold answers `score` takes)
    split_examples: Callable[[Sequence[dict[str, Any]]], tuple[list[Any], list[Any]]]
    # (file or hf: source, data.Columns, data.BadRows | None) -> labeled examples
    read_examples: Callable[[str, Any, Any], list[dict[str, Any]]]
    # (reference result, variant result) -> does the variant answer as the reference does?
    agree: Callable[[dict[str, Any], dict[str, Any]], bool]
    # (reference results, variant results) -> continuous measures for the parity report
    parity_measures: Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]]], dict[str, float]] | None = None
    # the service's routes; the first is the task's own (the client, bench and evaluation use it)
    routes: tuple[Route, ...] = ()
    # client: (inputs) -> the first route's request body; (answer body) -> results as `postprocess`
    # returns them (what `score` takes)
    request_body: Callable[[Sequence[Any]], dict[str, Any]] = lambda inputs: {"texts": list(inputs)}
    parse_response: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda body: list(body["results"])
    client_batch_size: int | None = None  # inputs per request the client sends (None: its default)
    # how many "points" one unit of the metric is: 100 for 0-1 metrics, 1 for metrics on 0-100
    points_per_unit: float = 100.0
    # the model output the task reads (None: the first); several are stacked on a last axis
    output_name: str | tuple[str, ...] | None = None
    # (TextEncoder, inputs, model card) -> the windows of each input, for tasks whose inputs may be
    # longer than the model's window (NER texts, QA contexts). None: one (truncated) text each.
    featurize: Callable[[Any, Sequence[Any], Any], list[list[Any]]] | None = None
    # (output rows of one text's windows, model card) -> how sure the model is of each window; lets
    # `long_text=chunk` keep the surest window (aggregate=max) and report the strongest one.
    # None: the task's chunked texts are only averaged (embeddings).
    window_strength: Callable[[Any, Any], Any] | None = None
    # (reference result, variant result) -> how far apart they are (0: the same); shadow parity's
    # histogram of live traffic. None: only agreement is counted.
    difference: Callable[[dict[str, Any], dict[str, Any]], float] | None = None
    # inputs the service runs once before it reports ready
    warmup_inputs: tuple[Any, ...] = ("warm-up batch", "a second, slightly longer warm-up text")
    max_length: int = 128  # the default window in tokens (training's --max-length)
    # model card -> extra fields `/info` shows for a served model (e.g. NER's entity types)
    info: Callable[[Any], dict[str, Any]] = lambda card: {}
    # bench: (file under the data directory, data.Columns keyword arguments) of its real inputs,
    # and labeled examples -> the inputs to time (default: the first half of `split_examples`)
    bench_data: tuple[str, dict[str, Any]] | None = None
    bench_inputs: Callable[[Sequence[dict[str, Any]]], list[Any]] | None = None
    # an untrained head for the bench: its labels (empty: the head has no labels) and problem type
    scratch_labels: tuple[str, ...] = ()
    scratch_problem_type: str | None = None
    # `bertserve quickstart`: training options of the demo model (files relative to samples/)
    demo: dict[str, Any] | None = None
    # epochs=0 packages the base model as it is (a sentence encoder is already a similarity model)
    trains_with_zero_epochs: bool = False
    # the model report (`bertserve report`, GET /models/{name}/report): (model card, inputs, gold,
    # results) -> its quality section (`bertserve.report.Section`: plots and tables); None: no section
    report: Callable[[Any, Sequence[Any], Sequence[Any], Sequence[dict[str, Any]]], Any] | None = None
    # one result as the report shows it beside another variant's
    show_answer: Callable[[dict[str, Any]], str] = show_answer
    # the quality gate (`bertserve.quality`): (results, gold, model card) -> what a model that learned
    # nothing scores on the same examples: {"metric", "value" (the model's), "baseline", "best" (a
    # perfect score), "higher_is_better" (default true), "baseline_answer" (in words),
    # "never_predicted" (classes)}. None: not gated.
    baseline: Callable[[Sequence[dict[str, Any]], Sequence[Any], Any], dict[str, Any]] | None = None
    # the module holding the PyTorch side (`train(cfg)`, ...); None: training.<name>
    trainer: str | None = None

    @property
    def endpoint(self) -> str:
        """The task's own route (the first)."""
        return self.routes[0].path if self.routes else f"/{self.name}"

    def inputs_for_bench(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        if self.bench_inputs is not None:
            return self.bench_inputs(examples)
        return list(self.split_examples(examples)[0])

    def training_module(self) -> ModuleType:
        """The task's PyTorch side (imported on demand: it loads torch)."""
        return import_module(self.trainer or f"training.{self.name}")


_REGISTRY: dict[str, TaskSpec] = {}
_loaded = False


class UnknownTaskError(ConfigError, KeyError):
    """A task name that no registered module declares (a ConfigError for the command line, a
    KeyError for lookups)."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task. Called by a task module at import; a name registered twice is refused."""
    if not spec.name.isidentifier():
        raise ValueError(f"task name {spec.name!r} must be a Python identifier (it names env variables)")
    known = _REGISTRY.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"task {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a task (tests that define one)."""
    _REGISTRY.pop(name, None)


def get_task(name: str) -> TaskSpec:
    _load_tasks()
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {available}") from None


def tasks() -> dict[str, TaskSpec]:
    _load_tasks()
    return dict(_REGISTRY)


def _load_tasks() -> None:
    """Import the built-in task modules, those named in BERTSERVE_TASK_MODULES and the entry points
    of the `bertserve.tasks` group; importing a task module registers it (idempotent)."""
    global _loaded
    for module in BUILTIN_TASK_MODULES:
        import_module(module)
    for module in (m.strip() for m in os.environ.get(TASK_MODULES_ENV, "").split(",")):
        if module:
            import_module(module)
    if not _loaded:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _loaded = True
