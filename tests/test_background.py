"""background_iter: the wrapped iterator's items in order, its errors, and a thread that
stops when the consumer does."""
import threading
import time

import pytest

from synthpre_jax.data.background import background_iter


def test_items_in_order_and_end():
    assert list(background_iter(lambda: iter(range(50)), depth=3)) == list(range(50))
    assert list(background_iter(lambda: iter([]))) == []


def test_producer_error_reaches_the_consumer_after_the_items_before_it():
    def make():
        yield 1
        yield 2
        raise ValueError("bad block")

    it = background_iter(make)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="bad block"):
        next(it)


def test_thread_stops_when_the_consumer_closes():
    produced = []

    def make():
        i = 0
        while True:  # an infinite stream, like a training split
            produced.append(i)
            yield i
            i += 1

    it = background_iter(make, depth=2, name="test-producer")
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    deadline = time.time() + 5
    while any(t.name == "test-producer" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "test-producer" for t in threading.enumerate())
    assert len(produced) <= 5 + 2 + 1  # never more than `depth` (+ the one being put) ahead
