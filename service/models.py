"""Loading published models at start-up (and on a reload, `service/reload.py`): which models are
served under which names, their files verified against the checksums recorded at export, warmed up,
each with its own batcher."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertserve.artifact import ModelCard, verify_files
from bertserve.errors import ArtifactError, ConfigError, UnknownModelError
from bertserve.registry import get_task, tasks
from bertserve.report import REPORT_HTML
from bertserve.runtime import Pipeline, providers
from bertserve.store import resolve
from bertserve.variants import Choice, choose, machine_isa, pin_problem, time_one, why_not_here
from service.batching import Batcher
from service.settings import ServiceSettings
from service.shadow import Shadow

log = logging.getLogger("bertserve.service")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class LoadedModel:
    name: str
    task: str
    tag: str
    card: ModelCard
    pipeline: Pipeline
    batcher: Batcher
    # the page export drew (`bertserve.report`), None for models exported before reports existed
    report: Path | None = None
    # shadow parity (BERTSERVE_SHADOW_RATE > 0): samples re-run on the fp32 reference; or why not
    shadow: Shadow | None = None
    shadow_off: str | None = None
    # which of the model's published variants this worker serves, and why (None: it has one)
    choice: Choice | None = None

    @property
    def variant(self) -> str | None:
        return self.choice.served if self.choice else self.card.variant

    def shadow_info(self) -> dict[str, Any] | None:
        """`/info`'s shadow entry: the counts, or why this model is not shadowed; None when off."""
        if self.shadow is not None:
            return self.shadow.info()
        return {"rate": 0.0, "off": self.shadow_off} if self.shadow_off else None


def shadow_of(name: str, path: Path, card: ModelCard, settings: ServiceSettings,
              served: str | None = None) -> tuple[Shadow | None, str | None]:
    """A served model's shadow when BERTSERVE_SHADOW_RATE > 0, or why it cannot have one (no fp32
    reference stored with it): that model is served unshadowed, with a warning, and /info says why."""
    if settings.shadow_rate <= 0:
        return None, None
    try:
        return Shadow(name, path, card, settings.shadow_rate, settings.shadow_queue, settings.device, served), None
    except ConfigError as exc:
        log.warning("%s", exc)
        return None, str(exc)


@dataclass(frozen=True)
class Published:
    """A published model chosen to be served: its name, store tag, directory and card."""

    name: str
    tag: str
    path: Path
    card: ModelCard


def parse_models(value: str) -> list[tuple[str, str]]:
    """`name=tag,name=tag` -> [(name, tag)], refusing what cannot be served as asked."""
    entries: list[tuple[str, str]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, sep, tag = (s.strip() for s in part.partition("="))
        if not sep or not name or not tag:
            raise ConfigError(f"BERTSERVE_MODELS entry {part!r} is not name=tag (e.g. sentiment=sst2:latest)")
        if not NAME.match(name):
            raise ConfigError(f"BERTSERVE_MODELS: model name {name!r} must be letters, digits, '.', '_' or '-'")
        if any(name == n for n, _ in entries):
            raise ConfigError(f"BERTSERVE_MODELS names {name!r} twice: each served model needs its own name")
        entries.append((name, tag))
    if not entries:
        raise ConfigError("BERTSERVE_MODELS is set but names no model: unset it, or list name=tag entries")
    return entries


def newest(tag: str) -> str:
    """The newest version of a store tag's model: `sst2:v3` -> `sst2:latest`."""
    return tag.partition(":")[0] + ":latest"


def verified_models(settings: ServiceSettings, *, latest: bool | Collection[str] = False,
                    verify: bool = True, warn: bool = True) -> list[Published]:
    """The published models to serve, in order (a task's default first among its own), with their
    files checked against the checksums recorded at export. A configured tag that is missing, or a
    file changed, truncated or missing, raises ArtifactError naming it. `latest` (a reload): each
    configured tag's newest version instead of the version it names (True: every served name's;
    names: theirs); `verify=False` resolves the tags only (the store watch's cheap look); `warn`:
    log each task that gets no model (once, at start)."""
    chosen: list[Published] = []

    def add(name: str, tag: str | None, task: str | None, default: bool = False) -> None:
        if tag and (latest is True or (not isinstance(latest, bool) and name in latest)):
            tag = newest(tag)
        found = resolve(task, tag)
        if found is None:
            return
        tag_found, path, card = found
        get_task(card.task)  # a model of a task this server does not know is refused here, by name
        if any(p.tag == tag_found and p.card.task == card.task for p in chosen):
            if default:  # already served under its own name: make that entry the default
                entry = next(p for p in chosen if p.tag == tag_found)
                chosen.remove(entry)
                chosen.insert(0, entry)
            return
        entry = Published(name, tag_found, path, card)
        if verify:
            verify_files(path, card)
            problem = pinned_problem(entry, settings)
            if problem:
                raise ArtifactError(problem)
        chosen.insert(0, entry) if default else chosen.append(entry)

    if settings.models:
        for name, tag in parse_models(settings.models):
            add(name, tag, None)
    for task, spec in tasks().items():
        configured = settings.task_default(task)
        if configured:
            if any(p.name == task and p.card.task != task for p in chosen):
                raise ConfigError(f"BERTSERVE_MODEL_{task.upper()} would serve a model named {task!r}, a name "
                                  "BERTSERVE_MODELS gives to a model of another task: rename that one")
            add(task, configured, task, default=True)
        elif not settings.models:
            add(task, None, task)
        if warn and not any(p.card.task == task for p in chosen):
            log.warning("no %s model is served: %s answers 503 (train and `bertserve export` one, "
                        "or run `bertserve quickstart`)", task, spec.endpoint)
    return chosen


class ServedModels:
    """The models a server holds, by name, and each task's default."""

    def __init__(self, models: list[LoadedModel]):
        self.by_name = {m.name: m for m in models}
        self.defaults: dict[str, str] = {}
        for m in models:
            self.defaults.setdefault(m.task, m.name)

    def names(self, task: str | None = None) -> list[str]:
        return [n for n, m in self.by_name.items() if task is None or m.task == task]

    def choose(self, task: str, requested: str | None) -> LoadedModel | None:
        """The model a request names (by name, store tag, or the task's name for its default);
        None when the task has no model at all; UnknownModelError when the name is not served."""
        if requested is None or requested == task:
            default = self.defaults.get(task)
            if default is None and requested is None:
                return None
            if default is not None:
                return self.by_name[default]
        model = self.by_name.get(requested or "") or next(
            (m for m in self.by_name.values() if m.tag == requested), None)
        served = ", ".join(self.names(task)) or "none"
        if model is None:
            raise UnknownModelError(f"no model named {requested!r} is served; {task} models served here: {served} "
                                    "(GET /info lists every served model)")
        if model.task != task:
            raise UnknownModelError(f"{requested!r} is a {model.task} model, this route needs a {task} model; "
                                    f"{task} models served here: {served}")
        return model


def open_variant(entry: Published, settings: ServiceSettings, variant: str | None = None) -> Pipeline:
    return Pipeline.from_artifact(entry.path, entry.card, threads=settings.intra_op_threads(), device=settings.device,
                                  spinning=settings.ort_spinning, variant=variant)


def _cuda(settings: ServiceSettings) -> bool:
    return settings.device != "cpu" and "CUDAExecutionProvider" in providers(settings.device)


def pinned_problem(entry: Published, settings: ServiceSettings) -> str | None:
    """Why BERTSERVE_VARIANT cannot be served for this model (checked at start, before workers)."""
    card = entry.card
    if not settings.variant:
        return None
    return pin_problem(card.variants or {str(card.variant): {}}, settings.variant, card.variant,
                       isa=machine_isa(settings.cpu_isa), cuda=_cuda(settings),
                       where=f"model {entry.name!r} ({entry.tag})")


def served_variant(entry: Published, settings: ServiceSettings) -> tuple[Pipeline, Choice | None]:
    """The model's variant this worker serves: BERTSERVE_VARIANT, or the only one that runs here,
    or the fastest of those that do, timed one input at a time on the held-out inputs stored
    with the model (BERTSERVE_VARIANT_TRIAL_S in all)."""
    card = entry.card
    if not card.variants or len(card.variants) == 1:
        why = why_not_here(str(card.variant), (card.variants or {}).get(str(card.variant), {}),
                           machine_isa(settings.cpu_isa), _cuda(settings))
        if why and card.variants:
            log.warning("%s: its one variant, %s, is served although %s; export it again to publish every "
                        "variant", entry.name, card.variant, why)
        return open_variant(entry, settings), None
    opened: dict[str, Pipeline] = {}
    inputs = card.samples or list(get_task(card.task).warmup_inputs)

    def measure(name: str, seconds: float) -> float:
        opened[name] = open_variant(entry, settings, name)
        return time_one(opened[name].predict, inputs, seconds)

    try:
        choice = choose(card.variants, card.variant, pinned=settings.variant, isa=machine_isa(settings.cpu_isa),
                        cuda=_cuda(settings), measure=measure, budget_s=settings.variant_trial_s)
    except ValueError as exc:
        raise ArtifactError(f"model {entry.name!r} ({entry.tag}) cannot be served: {exc}") from None
    log.info("%s: serving variant %s (%s; %s; %.1f s)%s", entry.name, choice.served, choice.reason,
             ", ".join(f"{n} {ms:.2f} ms" for n, ms in choice.measured_ms.items()) or "not measured", choice.seconds,
             "".join(f"; {n} not run: {why}" for n, why in choice.skipped.items()))
    pipeline = opened.pop(choice.served, None) or open_variant(entry, settings, choice.served)
    opened.clear()  # the others' sessions go
    return pipeline, choice


def load_model(entry: Published, settings: ServiceSettings) -> LoadedModel:
    """One verified model, its variant chosen, loaded and warmed up, with its own batcher (and shadow)."""
    card = entry.card
    pipeline, choice = served_variant(entry, settings)
    pipeline.predict(list(pipeline.spec.warmup_inputs))
    batcher = Batcher(pipeline, name=entry.name, enabled=settings.batching, max_batch_size=settings.max_batch_size,
                      max_latency_ms=settings.max_latency_ms, max_batch_tokens=settings.max_batch_tokens,
                      mode=settings.batcher)
    page = entry.path / REPORT_HTML
    served = choice.served if choice else card.variant
    shadow, off = shadow_of(entry.name, entry.path, card, settings, served)
    log.info("serving %s (%s) = %s (%s, %s)%s", entry.name, card.task, entry.tag, served,
             pipeline.backend.providers[0], " [demo model]" if card.demo else "")
    return LoadedModel(entry.name, card.task, entry.tag, card, pipeline, batcher,
                       page if page.is_file() else None, shadow, off, choice)


def check_names(entries: list[Published]) -> None:
    names = [m.name for m in entries]
    if len(set(names)) != len(names):
        raise ArtifactError(f"two served models share a name ({names}): give them distinct names in BERTSERVE_MODELS")


def load_models(settings: ServiceSettings, *, latest: bool | Collection[str] = False) -> list[LoadedModel]:
    """Every model to serve, loaded and warmed up, each with its own batcher (`latest`: as a reload
    would, a worker started after one)."""
    entries = verified_models(settings, latest=latest)
    check_names(entries)
    return [load_model(entry, settings) for entry in entries]
