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
import weakref
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05

# Interpreter exit with a dataset iterator still alive (a script that takes a few batches and
# ends) must not hang. TensorFlow destroys that iterator during the interpreter's teardown,
# and its destructor waits for any generator call in flight; a TF thread that needs the GIL
# once the teardown has begun never gets it (Python ends such threads), so the call never
# returns. Such calls: a consumer waiting for its daemon producer (which Python freezes), and
# tf.data's `finalize` call that follows a generator's end. So at exit, while threads can
# still run, waiting consumers are told to end, producers to stop, and the hook returns only
# once no consumer waits, no producer runs and every ended consumer has been released by its
# owner (tf.data releases it in that finalize call), and that has lasted `quiet_s`.
_EXITING = threading.Event()
_lock = threading.Lock()
_started = False  # whether this process ever started a producer
_waiting = 0  # consumers blocked on their queue right now
_producers: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
_stops: "weakref.WeakSet[threading.Event]" = weakref.WeakSet()
_ended_unreleased: set = set()  # _Consumer states: ended, generator object still referenced


class _Consumer:
    """Exit bookkeeping of one `background_iter` generator."""

    __slots__ = ("released",)

    def __init__(self) -> None:
        self.released = False

    def ended(self) -> None:
        with _lock:
            if not self.released:  # a generator collected unfinished is released first
                _ended_unreleased.add(self)

    def release(self) -> None:
        with _lock:
            self.released = True
            _ended_unreleased.discard(self)


def _busy() -> bool:
    with _lock:
        if _waiting > 0 or _ended_unreleased:
            return True
    return any(t.is_alive() for t in list(_producers))


@atexit.register
def _settle_at_exit(timeout_s: float = 3.0, quiet_s: float = 0.1) -> None:
    """Let consumers end and producers stop; return once nothing has been busy for
    `quiet_s` (a tf.data thread may be just about to call a consumer) or after `timeout_s`."""
    if not _started:
        return
    _EXITING.set()
    for stop in list(_stops):
        stop.set()
    now = time.monotonic()
    deadline, quiet_since = now + timeout_s, now
    while now < deadline:
        if _busy():
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        time.sleep(0.01)
        now = time.monotonic()


def _get(items: queue.Queue):
    """The next item, or _DONE once the interpreter is exiting."""
    global _waiting
    with _lock:
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
        with _lock:
            _waiting -= 1


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def background_iter(make: Callable[[], Iterator[T]], depth: int = 2,
                    name: str = "synthpre-producer") -> Iterator[T]:
    """The items of `make()`, produced on a daemon thread up to `depth` items ahead.

    The thread starts on the first `next()`, stops when this iterator is closed or
    garbage-collected, and passes the producer's exception on to the consumer. When the
    interpreter exits, a consumer still waiting ends its iteration (see `_settle_at_exit`).
    Hand the returned generator itself to `tf.data.Dataset.from_generator` (not a generator
    that wraps it): its release is how the exit hook sees tf.data's last call finish.
    """
    state = _Consumer()
    it = _consume(make, depth, name, state)
    # not at exit: weakref's own exit hook runs before ours and would mark it released
    weakref.finalize(it, state.release).atexit = False
    return it


def _consume(make: Callable[[], Iterator[T]], depth: int, name: str,
             state: _Consumer) -> Iterator[T]:
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
    thread = threading.Thread(target=produce, name=name, daemon=True)
    with _lock:
        _started = True
        _producers.add(thread)
        _stops.add(stop)
    if _EXITING.is_set():
        stop.set()
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
        state.ended()
