"""background_iter: the wrapped iterator's items in order, its errors, and a thread that
stops when the consumer does."""
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import REPO, subprocess_env

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


EXIT_SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tasks.synthetic
    from synthpre_jax.data import dataset as D
    cfg = D.DatasetConfig(mixture_or_task_name="synthpre_sort", batch_size=64, pack=True,
                          task_feature_lengths={"inputs": 512, "targets": 512})
    it = D.get_dataset(cfg).as_numpy_iterator()
    for _ in range(3):
        next(it)
    print("took 3 batches", flush=True)
""")


def test_interpreter_exits_with_a_training_iterator_still_alive():
    """A script that takes a few batches of the training path and ends (iterator alive)
    used to hang forever at exit: the producer thread is a daemon, frozen at exit, while
    TensorFlow's iterator destructor waited for the generator call that waited for it."""
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], cwd=REPO, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "took 3 batches" in proc.stdout, proc.stderr[-3000:]


SETTLE_SCRIPT = textwrap.dedent("""
    import time
    from synthpre_jax.data import background as bg

    def settle():
        t = time.monotonic()
        bg._settle_at_exit(timeout_s=1.5, quiet_s=0.05)
        return time.monotonic() - t

    # A consumer that ended and was released (as tf.data does in its finalize call), and
    # one collected before its end: nothing to wait for.
    done = bg.background_iter(lambda: iter(range(3)))
    assert list(done) == [0, 1, 2]
    del done
    early = bg.background_iter(lambda: iter(range(100)))
    assert next(early) == 0
    del early
    print("released %.2f" % settle())
    # A consumer that ended while its owner still holds it (tf.data's finalize call still
    # to come): the hook waits for it, up to its timeout.
    held = bg.background_iter(lambda: iter(range(3)))
    assert list(held) == []  # the interpreter is exiting: consumers end at once
    print("held %.2f" % settle())
""")


def test_exit_hook_waits_for_ended_consumers_to_be_released():
    """At exit the hook must outlast tf.data's finalize call after a consumer ends (a TF
    thread that needs the GIL once teardown has begun never gets it: the exit hangs), and
    must not wait for consumers that were released or collected."""
    proc = subprocess.run([sys.executable, "-c", SETTLE_SCRIPT], cwd=REPO,
                          env=subprocess_env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    times = dict(line.split() for line in proc.stdout.splitlines())
    assert float(times["released"]) < 0.5, proc.stdout
    assert float(times["held"]) >= 1.4, proc.stdout
