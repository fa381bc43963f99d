"""Readiness and graceful shutdown.

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
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
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
