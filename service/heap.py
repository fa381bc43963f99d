"""Python's cyclic garbage collector, kept off the request path.

A worker holds a few hundred thousand long-lived Python objects (BentoML, FastAPI, pydantic,
the tokenizers' and the models' wrappers, what the first requests import lazily). CPython's
full (generation 2) collection walks all of them, holding the GIL: measured in a `/classify`
worker on the 2-core EPYC (gc.callbacks timing each collection, Poisson arrivals at 350
requests/s), a full collection every 10-30 s took **61-111 ms**, and every request of that
worker waited for it: those pauses were most of the slowest 1 %. `gc.freeze()` moves the objects
alive at that moment into a permanent generation that collections skip (CPython's documented
use: objects that live as long as the process). Frozen, the same collections took 9-18 ms.

When: once the worker's models are loaded and warm (`settle`), and once more after its first
`SETTLE_AFTER_REQUESTS` answers (the request path imports and caches things on first use). A
model replaced by a reload was frozen with everything else; when the reload retires it, the heap
is thawed, collected and frozen again (`refreeze`), so that its cyclic garbage is reclaimed.
Objects that die later while frozen are still freed by reference counting; only cycles among
them would wait for the next `refreeze`. Off with BERTSERVE_GC_FREEZE=false.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("bertserve.service")

SETTLE_AFTER_REQUESTS = 1_000


def settle() -> None:
    """Collect what is garbage now, then freeze what is left."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug("gc: %d objects frozen in %.1f ms", gc.get_freeze_count(), 1000 * (time.perf_counter() - started))


def refreeze() -> None:
    """After objects that were frozen were let go (a reload's old models): thaw, collect, freeze.
    Nothing to do where nothing was frozen (BERTSERVE_GC_FREEZE=false)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        settle()


class Settler:
    """Counts a worker's answers and settles the heap once, after the first `after` of them."""

    def __init__(self, enabled: bool, after: int = SETTLE_AFTER_REQUESTS):
        self.left = after if enabled else 0

    def answered(self) -> None:
        if self.left > 0:
            self.left -= 1
            if not self.left:
                settle()
