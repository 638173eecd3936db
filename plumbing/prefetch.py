"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

Data loading in this project is mostly numpy, zarr codecs and torch
operations that release the GIL, so one producer thread overlaps batch
preparation with the consumer (a training step) on another core, the way
``DataLoader``'s pin-memory thread does, without shipping batches between
processes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.05


def prefetch_in_thread(items: Iterable[T], depth: int, *, name: str = "prefetch") -> Iterator[T]:
    """Yield the items of ``items`` in order, produced up to ``depth`` ahead in a daemon thread.

    An exception raised while producing is re-raised here, at the position
    of the item that failed. Closing the returned generator early (``break``,
    an exception in the consumer) stops the producer after its current item
    and joins it, and the source iterator is closed in the producer's own
    thread, so the resources it holds (read-ahead threads, worker
    processes) are released before this generator returns.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source: Iterator[T] | None = None
        try:
            source = iter(items)
            for item in source:
                if not put((True, item)):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            put((False, error))
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        put((False, done))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = slots.get()
            if ok:
                yield value  # type: ignore[misc]
            elif value is done:
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
