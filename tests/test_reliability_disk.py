"""A failing checkpoint write (the disk fills up) is reported as one line, stops the run, and
leaves every earlier checkpoint as it was; the same command resumes once there is room.

"Disk full" is simulated with RLIMIT_FSIZE: any write that would make a file larger than the
limit fails with EFBIG (Python ignores SIGXFSZ), which reaches Orbax/TensorStore exactly as a
full disk would. The limit is set in the failing process only (or, for the manager-level test,
in this one while the failing save runs) and sits between the size of the small files a run
writes (metrics, config) and a checkpoint's data files.
An unwritable MODEL_DIR is part of the bad-input matrix (test_reliability_bad_input.py).
"""
import contextlib
import os
import resource

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_train_argv

import test_reliability_support as S
from synthpre_jax import checkpoints as C
from synthpre_jax.errors import UserError

LIMIT = 32 * 1024


@contextlib.contextmanager
def _disk_full():
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_failing_async_checkpoint_write_stops_cleanly_and_resume_works(tmp_path):
    """Real processes, so the user's view (stderr, exit code) is what is checked."""
    run = tmp_path / "run"
    extra = S.QUIET + ["--gin.CHECKPOINT_PERIOD=4", "--gin.DROPOUT_RATE=0.0"]
    w = S.start_train(tiny_train_argv(run, 4, extra=extra), tmp_path / "1.log")
    assert w.join() == 0, w.log()[-3000:]
    before = S.tree_digest(run / "checkpoint_4")
    assert max(p.stat().st_size for p in (run / "checkpoint_4").rglob("*") if p.is_file()) > LIMIT

    w = S.start_train(tiny_train_argv(run, 12, extra=extra), tmp_path / "2.log", file_size_limit=LIMIT)
    code, log = w.join(), w.log()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in log, log[-3000:]
    assert errors[0].startswith(f"error: writing checkpoint {run}/checkpoint_8 failed (File too large"), errors[0]
    assert "earlier checkpoints are intact (latest complete: step 4)" in errors[0], errors[0]
    assert S.tree_digest(run / "checkpoint_4") == before
    assert S.checkpoint_listing(run) == {"checkpoint_4": None}

    w = S.start_train(tiny_train_argv(run, 12, extra=extra), tmp_path / "3.log")
    assert w.join() == 0, w.log()[-3000:]
    assert f"resuming from {run} at step 4" in w.log(), w.log()[-3000:]
    assert S.checkpoint_listing(run) == {"checkpoint_4": None, "checkpoint_8": None, "checkpoint_12": None}
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]   # the debris was cleaned
    assert S.tree_digest(run / "checkpoint_4") == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's closed event loop
def test_failing_sync_write_raises_user_error_and_keeps_earlier(tmp_path):
    state = {"step": jnp.int32(1), "params": {"w": jnp.asarray(np.arange(40000, dtype=np.float32))}}
    with C.CheckpointManager(str(tmp_path / "run"), C.SaveCheckpointConfig(period=1, async_save=False)) as m:
        assert m.save(1, state)
        before = S.tree_digest(tmp_path / "run" / "checkpoint_1")
        with _disk_full():
            try:
                m.save(2, {**state, "step": jnp.int32(2)})
                raise AssertionError("the write should have failed")
            except UserError as e:
                msg = str(e)
        assert "\n" not in msg and "checkpoint_2 failed (File too large" in msg, msg
        assert "latest complete: step 1" in msg, msg
        assert m.latest_step() == 1
    assert S.tree_digest(tmp_path / "run" / "checkpoint_1") == before
    assert S.checkpoint_listing(tmp_path / "run") == {"checkpoint_1": None}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the bad-input matrix "
                                               "covers unwritable MODEL_DIRs that stop root too")
def test_read_only_model_dir_is_reported_before_training(tmp_path, capsys):
    import gin
    from synthpre_jax import cli
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        gin.clear_config()
        code = cli.main(["train", *tiny_train_argv(parent / "run", 2, extra=S.QUIET)])
    finally:
        gin.clear_config()
        parent.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "is not writable (Permission denied); choose another directory" in err, err[-2000:]
    assert list(parent.iterdir()) == []
