"""Run a Python iterator on a plain thread and hand its items over through a queue.

Why: tf.data's `from_generator` runs its generator on a TensorFlow thread-pool thread, and
Python-heavy generators run measurably slower there than on a plain Python thread
(nonsense_summary's per-example Python: ~0.75x on a 2-core VM; the cause was not found,
see benchmarks/RESULTS.md). Producing on a plain thread and letting the tf.data generator
only take finished items from a queue recovers most of it. The items and their order are
exactly those of the wrapped iterator.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def background_iter(make: Callable[[], Iterator[T]], depth: int = 2,
                    name: str = "synthpre-producer") -> Iterator[T]:
    """The items of `make()`, produced on a daemon thread up to `depth` items ahead.

    The thread starts on the first `next()`, stops when this iterator is closed or
    garbage-collected, and passes the producer's exception on to the consumer.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(e))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
