"""Hot reload: a running service serves the newest published version of its models, no restart.

What asks for one:
- `POST /admin/reload` (when BERTSERVE_ADMIN_RELOAD is on; behind BERTSERVE_API_KEY like every
  POST), for every served model or the ones it names;
- SIGHUP, sent to `bentoml serve` or to any of its workers;
- the store watch (BERTSERVE_WATCH_STORE_S > 0): a worker that sees the BentoML store change
  reloads when a served name has a newer version, or a task with no model has one now (`make
  serve` turns it on, so that the demo models are served as they land).

What a reload serves is what a start would, with each configured tag's newest version (`sst2:v3`
becomes `sst2:latest`; a restart goes back to the configured tag) and, where no tag is configured,
each task's latest published model, also for tasks that had none. A new model's files are checked
against the checksums recorded at export and it runs a warm-up batch before it is swapped in; when
anything fails, every model stays as it was (409 `reload_failed`, the cause named). Models whose
tag has not changed are kept as they are.

The swap: the routes look the served models up per request. A request that has chosen its model
keeps it to its end (that model's batcher keeps running); requests that come after get the new one.
The old model's batcher and shadow stop once no request can still hold it, BERTSERVE_REQUEST_TIMEOUT_S
later.

Reaching every worker (each has its own models): the server process creates a record its workers
share, a directory named in the environment they inherit (as `service.lifecycle.WorkerStarts`
does). Asking for a reload adds one to the generation written there; every worker looks at it
twice a second, reloads when it has grown and notes the generation it serves and its tags. POST
/admin/reload answers once every worker has reloaded. A worker started later (one replaced after a
crash) loads as the reloads so far did, so that workers never disagree for long.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from bertserve.artifact import verify_files
from bertserve.errors import (
    ArtifactError,
    BertserveError,
    ConfigError,
    ReloadError,
    TimeoutError_,
    UnknownModelError,
)
from bertserve.schemas import ModelSwap, ReloadResponse
from bertserve.store import store_signature
from service import heap
from service.models import (
    LoadedModel,
    Published,
    ServedModels,
    check_names,
    load_model,
    verified_models,
)
from service.settings import ServiceSettings

log = logging.getLogger("bertserve.reload")

RECORD_ENV = "BERTSERVE_RELOAD_RECORD"
POLL_S = 0.5  # how often a worker looks at the record: one small file read


class ReloadRecord:
    """The directory the server process and its workers share: `state.json` (the generation and
    the names each reload asked for) and one `ack-<pid>.json` per worker (the generation it serves,
    its tags, or why its reload failed)."""

    STATE = "state.json"

    def __init__(self, directory: Path):
        self.directory = directory

    @classmethod
    def arm(cls) -> ReloadRecord:
        """In `bentoml serve`'s own process, before any worker starts: the record its workers inherit."""
        record = cls.private()
        os.environ[RECORD_ENV] = str(record.directory)
        return record

    @classmethod
    def private(cls) -> ReloadRecord:
        """A record of this process alone (the service run in process: tests, `to_asgi()`)."""
        directory = Path(tempfile.mkdtemp(prefix="bertserve-reload-"))
        atexit.register(shutil.rmtree, directory, True)
        return cls(directory)

    @classmethod
    def shared(cls) -> ReloadRecord:
        """In a worker: its server's record, else a private one."""
        named = os.environ.get(RECORD_ENV)
        if named and Path(named).is_dir():
            return cls(Path(named))
        return cls.private()

    def state(self) -> dict[str, Any]:
        """{"generation": n, "requests": [{"generation", "names"}, ...]} (names null: all)."""
        try:
            state: dict[str, Any] = json.loads((self.directory / self.STATE).read_text())
            return state
        except (OSError, ValueError):
            return {"generation": 0, "requests": []}

    def request(self, names: list[str] | None) -> int:
        """Ask every worker to reload (`names`: only those); returns the new generation."""
        with (self.directory / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two requests at once each get their own generation
            state = self.state()
            generation = int(state["generation"]) + 1
            requests = [*state["requests"], {"generation": generation, "names": names}]
            self._write(self.STATE, {"generation": generation, "requests": requests})
        return generation

    def names_since(self, generation: int) -> list[str] | None:
        """The names the reloads after `generation` asked for; None when one of them asked for all."""
        names: set[str] = set()
        for request in self.state()["requests"]:
            if request["generation"] > generation:
                if request["names"] is None:
                    return None
                names.update(request["names"])
        return sorted(names)

    def ack(self, generation: int, tags: dict[str, str], error: str | None = None) -> None:
        self._write(f"ack-{os.getpid()}.json", {"pid": os.getpid(), "generation": generation, "tags": tags,
                                                "error": error})

    def acks(self) -> list[dict[str, Any]]:
        """The notes of the workers alive now."""
        found = []
        for path in self.directory.glob("ack-*.json"):
            try:
                note = json.loads(path.read_text())
                os.kill(int(note["pid"]), 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)  # a worker that is gone
                continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append(note)
        return found

    def _write(self, name: str, content: dict[str, Any]) -> None:
        staged = self.directory / f".{name}.{os.getpid()}.{threading.get_ident()}"
        staged.write_text(json.dumps(content))
        os.replace(staged, self.directory / name)  # readers see the old file or the new one, whole


def plan(settings: ServiceSettings, served: ServedModels, names: list[str] | None,
         verify: bool = True) -> tuple[list[Published | LoadedModel], list[str]]:
    """What a reload would serve, in order: each entry a model kept (LoadedModel) or one to load
    (Published, its files verified unless `verify` is off); and the names that change."""
    targets = verified_models(settings, latest=True if names is None else set(names), verify=False, warn=False)
    check_names(targets)
    known = set(served.by_name) | {t.name for t in targets}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise UnknownModelError(f"{', '.join(map(repr, unknown))}: not a served model, and no published model "
                                f"would be served under that name; served: {', '.join(served.by_name) or 'none'} "
                                "(GET /info lists them)")
    entries: list[Published | LoadedModel] = []
    changed: list[str] = []
    for target in targets:
        current = served.by_name.get(target.name)
        if names is not None and target.name not in names:
            if current is not None:
                entries.append(current)
            continue
        if current is not None and current.tag == target.tag:
            entries.append(current)
            continue
        if verify:
            verify_files(target.path, target.card)
        entries.append(target)
        changed.append(target.name)
    listed = {e.name for e in entries}
    entries += [m for name, m in served.by_name.items() if name not in listed]  # no longer published: kept
    return entries, changed


class Reloader:
    """One per worker: does reloads, looks at the record (and the store) for asked-for ones."""

    def __init__(self, settings: ServiceSettings, served: Callable[[], ServedModels | None],
                 swap: Callable[[ServedModels], None], record: ReloadRecord):
        self.settings = settings
        self._served = served
        self._swap = swap
        self.record = record
        self.generation = int(record.state()["generation"])  # a worker starts as the reloads so far left it
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._store: tuple[tuple[str, int], ...] | None = None
        self._store_looked = 0.0

    def startup_latest(self) -> bool | list[str]:
        """How a worker loads its models when reloads happened before it started (see `load_models`)."""
        if self.generation == 0:
            return False
        names = self.record.names_since(0)
        return True if names is None else names

    def start(self) -> bool:
        """In a worker with a running event loop: look at the record (and the store) from now on, and
        reload on SIGHUP. Returns whether the looking started (not without a running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._task = loop.create_task(self._look())
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(self.request_from_signal))
        return True

    def request_from_signal(self) -> None:
        generation = self.record.request(None)
        log.info("SIGHUP: reload %d asked of every worker", generation)

    async def reload(self, names: list[str] | None = None) -> tuple[dict[str, ModelSwap], list[str]]:
        """Serve the newest published version of `names` (None: every served model, and new tasks):
        verified and warmed up in a thread, then swapped in. Returns every served name's tags before and
        after, and the names that changed. ReloadError (nothing changed) when something fails."""
        async with self._lock:
            served = self._served() or ServedModels([])
            try:
                entries, changed = await anyio.to_thread.run_sync(plan, self.settings, served, names)
                loaded = await anyio.to_thread.run_sync(self._load, entries)
            except (UnknownModelError, ReloadError):
                raise
            except (ArtifactError, ConfigError) as exc:
                raise ReloadError(f"reload refused, every model stays as it was: {exc}") from None
            except Exception as exc:
                log.exception("reload failed")
                raise ReloadError(f"reload failed, every model stays as it was: {type(exc).__name__}: {exc} "
                                  "(the server log has the details)") from None
            new = ServedModels(loaded)
            swaps = {m.name: ModelSwap(before=served.by_name[m.name].tag if m.name in served.by_name else None,
                                       after=m.tag) for m in loaded}
            if changed:
                self._swap(new)
                retired = [m for m in served.by_name.values() if new.by_name.get(m.name) is not m]
                asyncio.get_running_loop().call_later(self.settings.request_timeout_s + 1.0, _retire, retired)
                log.info("reloaded: %s", ", ".join(f"{n} {swaps[n].before} -> {swaps[n].after}" for n in changed))
            return swaps, changed

    def _load(self, entries: list[Published | LoadedModel]) -> list[LoadedModel]:
        return [e if isinstance(e, LoadedModel) else load_model(e, self.settings) for e in entries]

    async def everywhere(self, names: list[str] | None) -> ReloadResponse:
        """POST /admin/reload: ask every worker, reload this one, wait for the others."""
        if names is not None:  # a name no worker could reload is refused before any is asked
            await anyio.to_thread.run_sync(plan, self.settings, self._served() or ServedModels([]), names, False)
        generation = self.record.request(names)
        self.generation = generation  # this worker reloads now, not when it next looks
        swaps, changed = await self._reload_and_note(generation, names)
        expected = self.settings.worker_count()
        deadline = time.monotonic() + self.settings.reload_timeout_s
        while True:
            notes = [n for n in self.record.acks() if n["generation"] >= generation]
            failed = next((n for n in notes if n["error"]), None)
            if failed is not None:
                raise ReloadError(f"worker {failed['pid']}: {failed['error']}")
            if len(notes) >= expected:
                return ReloadResponse(generation=generation, models=swaps, changed=changed, workers=len(notes))
            if time.monotonic() > deadline:
                raise TimeoutError_(f"{len(notes)} of {expected} workers had reloaded after "
                                    f"{self.settings.reload_timeout_s:g} s (BERTSERVE_RELOAD_TIMEOUT_S); the others "
                                    "are still loading: GET /info shows what the answering worker serves")
            await asyncio.sleep(0.1)

    async def _reload_and_note(self, generation: int, names: list[str] | None
                               ) -> tuple[dict[str, ModelSwap], list[str]]:
        try:
            swaps, changed = await self.reload(names)
        except BertserveError as exc:
            self.record.ack(generation, self._tags(), str(exc))
            raise
        self.record.ack(generation, self._tags())
        return swaps, changed

    def _tags(self) -> dict[str, str]:
        served = self._served()
        return {name: m.tag for name, m in served.by_name.items()} if served else {}

    async def _look(self) -> None:
        """Twice a second: a reload asked for through the record; every BERTSERVE_WATCH_STORE_S: the store."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._asked()
                await self._watch_store()
            except asyncio.CancelledError:
                raise
            except BertserveError as exc:  # noted in the record; the models stay as they were
                log.error("%s", exc)
            except Exception:
                log.exception("looking for reloads failed")

    async def _asked(self) -> None:
        generation = int(self.record.state()["generation"])
        if generation <= self.generation:
            return
        names = self.record.names_since(self.generation)
        self.generation = generation
        await self._reload_and_note(generation, names)

    async def _watch_store(self) -> None:
        every = self.settings.watch_store_s
        if every <= 0 or time.monotonic() - self._store_looked < every:
            return
        self._store_looked = time.monotonic()
        signature = await anyio.to_thread.run_sync(store_signature)
        if signature == self._store:
            return
        first, self._store = self._store is None, signature
        served = self._served() or ServedModels([])
        _, changed = await anyio.to_thread.run_sync(plan, self.settings, served, None, False)
        if changed:
            log.info("the store has new versions for %s%s: reloading", ", ".join(changed),
                     " (seen at start)" if first else "")
            await self.reload(None)


def reload_on_sighup(record: ReloadRecord) -> bool:
    """In `bentoml serve`'s own process: SIGHUP asks every worker to reload. BentoML's process manager
    (circus) would otherwise restart every worker on SIGHUP, dropping the requests they hold; its
    handler is replaced before it is installed. Returns whether it was (False: circus changed)."""
    try:
        from circus.sighandler import SysHandler  # type: ignore[import-untyped]
    except ImportError:
        return False
    if not hasattr(SysHandler, "handle_hup"):
        return False

    def handle_hup(self: Any) -> None:
        generation = record.request(None)
        log.info("SIGHUP: reload %d asked of every worker", generation)

    SysHandler.handle_hup = handle_hup
    return True


def _retire(models: list[LoadedModel]) -> None:
    """Swapped-out models, once no request can still hold them: their batchers and shadows stop."""
    for model in models:
        with contextlib.suppress(Exception):
            model.batcher.close()
            if model.shadow is not None:
                model.shadow.close()
    heap.refreeze()  # the old models were frozen with the rest (service/heap.py): reclaim them
