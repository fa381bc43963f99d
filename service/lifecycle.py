"""Readiness, graceful shutdown, and bounded worker starts.

On SIGTERM (what Kubernetes, `podman stop` and BentoML's arbiter send), the worker does not stop
at once: `/readyz` turns 503 so that load balancers take it out of rotation, requests keep being
served for `BERTSERVE_SHUTDOWN_DRAIN_S` seconds (connections are closed after each answer, so
clients reconnect elsewhere), and only then does uvicorn stop accepting and let the requests in
flight finish. Stopping to accept at once would not help the caller: BentoML's arbiter keeps the
listening socket open while its worker stops, so connections made in that window would wait in the
kernel's queue and be reset when the arbiter exits.

The shutdown takes at most the drain plus BERTSERVE_REQUEST_TIMEOUT_S (a request still running
then is answered 504); BentoML's arbiter itself waits for its worker. Give the orchestrator's grace
period more than both (Kubernetes: terminationGracePeriodSeconds). A second SIGTERM skips the drain.

A worker that dies while serving (killed, out of memory) is replaced by BentoML's arbiter, and the
new one is ready only once its models are loaded and warmed up. A worker that cannot start at all
would be replaced forever outside containers (BentoML respawns exited workers unless
BENTOML_CONTAINERIZED is set): `WorkerStarts` bounds that (its docstring says how).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("bertserve.service")


class Lifecycle:
    """One per process: whether models are loaded and whether the process is draining."""

    def __init__(self) -> None:
        self.loaded = False
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def drain_on_sigterm(self, drain_s: float) -> bool:
        """Install the SIGTERM handler in front of the server's own (uvicorn's, which stops
        accepting), delaying it by `drain_s`. Only possible from the main thread with a running
        event loop, as in a `bentoml serve` worker; returns whether it was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        stop_server = signal.getsignal(signal.SIGTERM)
        if not callable(stop_server):
            return False

        def stop(sig: int, frame: Any) -> None:
            log.info("draining finished; stopping to accept, finishing the requests in flight")
            stop_server(sig, frame)

        def on_sigterm(sig: int, frame: Any) -> None:
            if self.draining:  # the second SIGTERM: stop now
                stop(sig, frame)
                return
            self.draining = True
            log.info("SIGTERM: /readyz is now 503; serving for %g s more (BERTSERVE_SHUTDOWN_DRAIN_S)", drain_s)
            loop.call_soon_threadsafe(loop.call_later, drain_s, stop, sig, None)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True


LIFECYCLE = Lifecycle()

# How the server process tells its workers where the record of failed starts is (`WorkerStarts`).
STARTS_ENV = "BERTSERVE_WORKER_STARTS"


class WorkerStarts:
    """Bounded worker starts under `bentoml serve`. The server process (the `on_deployment` hook,
    before any worker exists) creates a record its workers share, through the environment they
    inherit. A worker whose start fails (an exception while loading its models: onnxruntime refusing
    a file whose checksum matched, memory running out) notes the cause there; the one whose failure
    is the BERTSERVE_WORKER_START_TRIES-th in a row asks the server to stop (SIGTERM: BentoML's
    arbiter stops its workers and returns), and the server process then exits with status 1, the
    cause on stderr. A worker that starts clears the count. In process (tests, `to_asgi()`) there
    is no record, and a failed start simply raises."""

    FAILURES, GAVE_UP = "failures", "gave-up"

    def arm(self, tries: int) -> None:
        """In the server process: the record, and the exit status read from it at exit."""
        directory = Path(tempfile.mkdtemp(prefix="bertserve-starts-"))
        os.environ[STARTS_ENV] = json.dumps({"dir": str(directory), "server": os.getpid(), "tries": tries})
        atexit.register(self._exit_if_gave_up, directory)

    def started(self) -> None:
        """In a worker, once its models are loaded and warm."""
        record = self._record()
        if record is not None:
            (Path(record["dir"]) / self.FAILURES).unlink(missing_ok=True)

    def failed(self, exc: BaseException) -> None:
        """In a worker whose start raised `exc` (the caller re-raises it)."""
        record = self._record()
        if record is None:
            return
        directory, tries = Path(record["dir"]), int(record["tries"])
        cause = f"{type(exc).__name__}: {exc}"
        with (directory / self.FAILURES).open("a") as failures:  # one line per failed start
            failures.write(json.dumps({"pid": os.getpid(), "cause": cause}) + "\n")
        count = len((directory / self.FAILURES).read_text().splitlines())
        log.error("worker start failed (%d of %d tries, BERTSERVE_WORKER_START_TRIES): %s", count, tries, cause)
        if count < tries:
            return
        (directory / self.GAVE_UP).write_text(
            f"a worker failed to start {count} times in a row (BERTSERVE_WORKER_START_TRIES={tries}); "
            f"the last time: {cause}")
        server = int(record["server"])
        if os.getppid() == server:  # never signal a process that is not our server
            os.kill(server, signal.SIGTERM)

    @staticmethod
    def _record() -> dict[str, Any] | None:
        raw = os.environ.get(STARTS_ENV)
        if not raw:
            return None
        try:
            record: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return record if Path(str(record.get("dir", ""))).is_dir() else None

    @classmethod
    def _exit_if_gave_up(cls, directory: Path) -> None:
        gave_up = directory / cls.GAVE_UP
        cause = gave_up.read_text() if gave_up.is_file() else None
        shutil.rmtree(directory, ignore_errors=True)
        if cause is None:
            return
        logging.shutdown()
        sys.stderr.write(f"bertserve cannot start: {cause}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)  # the arbiter returned as after any SIGTERM; the exit status says it gave up


WORKER_STARTS = WorkerStarts()
