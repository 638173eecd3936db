"""plumbing.prefetch: order, error propagation and clean shutdown of the producer thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from plumbing.prefetch import prefetch_in_thread


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def test_items_arrive_in_order_and_the_thread_ends() -> None:
    assert list(prefetch_in_thread(range(100), 3)) == list(range(100))
    assert list(prefetch_in_thread([], 1)) == []
    assert not producer_threads()


def test_an_error_while_producing_reaches_the_consumer_in_place() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("chunk 7 is damaged")

    got = []
    with pytest.raises(OSError, match="chunk 7 is damaged"):
        for item in prefetch_in_thread(failing(), 2):
            got.append(item)
    assert got == [1, 2] and not producer_threads()


def test_stopping_early_closes_the_source_in_the_producer_thread() -> None:
    closed_in: list[str] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed_in.append(threading.current_thread().name)

    items = prefetch_in_thread(endless(), 2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()
    assert closed_in == ["prefetch"] and not producer_threads()


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        next(prefetch_in_thread(range(3), 0))


def test_a_source_that_cannot_be_iterated_fails_instead_of_hanging() -> None:
    class Broken:
        def __iter__(self) -> Iterator[int]:
            raise OSError("store unreachable")

    with pytest.raises(OSError, match="store unreachable"):
        list(prefetch_in_thread(Broken(), 2))
    assert not producer_threads()
