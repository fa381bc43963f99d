"""The worker's heap kept out of the garbage collector's full walks (service/heap.py)."""

import gc
import weakref

import pytest

from service import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


@pytest.fixture(autouse=True)
def thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the suite's own heap is never left frozen


def frozen_cycle() -> weakref.ref:
    node = Node()
    ref = weakref.ref(node)
    heap.settle()
    del node
    return ref


def test_settle_freezes_what_is_alive_and_the_collector_then_skips_it():
    ref = frozen_cycle()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert ref() is not None  # frozen: a full collection does not walk it


def test_refreeze_reclaims_frozen_cycles_that_died_and_freezes_again():
    ref = frozen_cycle()
    heap.refreeze()
    assert ref() is None
    assert gc.get_freeze_count() > 0


def test_the_settler_settles_once_after_its_count_of_answers(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append(1))
    settler = heap.Settler(True, after=3)
    for _ in range(10):
        settler.answered()
    assert calls == [1]
    off = heap.Settler(False, after=1)
    off.answered()
    assert calls == [1]


def test_a_reload_retiring_models_reclaims_them_when_the_heap_is_frozen():
    from service.reload import _retire

    ref = frozen_cycle()
    _retire([])
    assert ref() is None
