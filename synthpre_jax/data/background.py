"""Run a Python iterator on a plain thread and hand its items over through a queue.

Why: tf.data's `from_generator` runs its generator on a TensorFlow thread-pool thread, and
Python-heavy generators run measurably slower there than on a plain Python thread
(nonsense_summary's per-example Python: ~0.75x on a 2-core VM; the cause was not found,
see benchmarks/RESULTS.md). Producing on a plain thread and letting the tf.data generator
only take finished items from a queue recovers most of it. The items and their order are
exactly those of the wrapped iterator.
"""
from __future__ import annotations

import atexit
import queue
import threading
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05

# Interpreter exit with a dataset iterator still alive (a script that takes a few batches and
# ends) used to hang forever: the producer is a daemon thread, which Python freezes at exit,
# so a consumer waiting inside tf.data's generator call never got its item, and TensorFlow's
# iterator destructor (run during the interpreter's teardown) waits for that call. At exit,
# before threads are frozen, waiting consumers are told to end their iteration instead.
_EXITING = threading.Event()
_started = False  # whether this process ever started a producer
_waiting = 0  # consumers blocked on their queue right now
_waiting_lock = threading.Lock()


@atexit.register
def _release_waiting_consumers(timeout_s: float = 2.0, quiet_s: float = 0.1) -> None:
    """Let waiting consumers end; return once none has waited for `quiet_s` (a prefetch
    thread may be just about to call one) or after `timeout_s`."""
    if not _started:
        return
    _EXITING.set()
    now = time.monotonic()
    deadline, quiet_since = now + timeout_s, now
    while now < deadline:
        with _waiting_lock:
            busy = _waiting > 0
        if busy:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        time.sleep(0.01)
        now = time.monotonic()


def _get(items: queue.Queue):
    """The next item, or _DONE once the interpreter is exiting."""
    global _waiting
    with _waiting_lock:
        _waiting += 1
    try:
        while True:
            if _EXITING.is_set():
                return _DONE
            try:
                return items.get(timeout=_POLL_S)
            except queue.Empty:
                continue
    finally:
        with _waiting_lock:
            _waiting -= 1


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def background_iter(make: Callable[[], Iterator[T]], depth: int = 2,
                    name: str = "synthpre-producer") -> Iterator[T]:
    """The items of `make()`, produced on a daemon thread up to `depth` items ahead.

    The thread starts on the first `next()`, stops when this iterator is closed or
    garbage-collected, and passes the producer's exception on to the consumer. When the
    interpreter exits, a consumer still waiting ends its iteration (see
    `_release_waiting_consumers`).
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

    global _started
    _started = True
    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = _get(items)
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
