"""Crash and preemption safety: one run of `synthpre train` is killed again and again and
restarted with the same command; it must end with exactly (bit for bit) the state of an
uninterrupted run, and no half-written checkpoint may ever be visible or restored.

The chain (20 steps, a checkpoint every 4, asynchronous checkpointing, dropout on):
  1. SIGKILL while Orbax commits checkpoint_4 (all data written, rename pending): exact moment;
  2. SIGKILL at a random moment (after a random step line plus a random delay: inside a step,
     between steps or while a checkpoint is written in the background); repeated
     SYNTHPRE_RELIABILITY_KILLS times (default 1);
  3. SIGTERM at a random step: the run saves at the next step boundary and exits cleanly with
     a message (exit code train.PREEMPTED_EXIT_CODE, so wrappers know it was preempted);
  4. the restart resumes from the checkpoint SIGTERM saved and is killed while Orbax commits
     its next periodic checkpoint (exact moment again);
  5. the checkpoint SIGTERM saved is then damaged on purpose (a truncated data file): the
     final restart must skip it with a warning, resume from the one before, and finish.
The reference is the same command run without interruption. Every loss logged by any
attempt must equal the reference's loss at that step, and the final checkpoints must hold
identical bits.
"""
import json
import os
import random
import re
import signal

from conftest import tiny_train_argv

import test_reliability_support as S
from synthpre_jax import train as train_mod

STEPS, PERIOD = 20, 4
EXTRA = S.QUIET + [f"--gin.CHECKPOINT_PERIOD={PERIOD}", "--gin.DROPOUT_RATE=0.1"]
SEED = int(os.environ.get("SYNTHPRE_RELIABILITY_SEED", "0"))
RANDOM_KILLS = int(os.environ.get("SYNTHPRE_RELIABILITY_KILLS", "1"))
PREEMPTED = getattr(train_mod, "PREEMPTED_EXIT_CODE", 0)   # a clean exit that says "preempted"


def _losses(model_dir):
    """{step: [loss logged by each attempt that reached it]} from MODEL_DIR/train/metrics.jsonl."""
    out = {}
    for line in (model_dir / "train" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out.setdefault(m["step"], []).append(m["loss"])
    return out


def _resumed_from(log):
    m = re.search(r"resuming from .* at step (\d+)", log)
    return int(m.group(1)) if m else 0


def _assert_only_complete_checkpoints(model_dir, allow_damaged=()):
    listing = S.checkpoint_listing(model_dir)
    bad = {k: v for k, v in listing.items() if v is not None and k not in allow_damaged}
    assert not bad, f"a half-written or damaged checkpoint is visible: {bad}"
    return sorted(int(k.split("_")[1]) for k, v in listing.items() if v is None)


def _damage(step_dir):
    """Truncate the largest data file of a committed checkpoint (a disk error after the fact)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(files, key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)


def test_kill_and_preempt_then_restart_is_bit_identical(tmp_path):
    rng = random.Random(SEED)
    ref_dir, run = tmp_path / "reference", tmp_path / "run"
    argv = tiny_train_argv(run, STEPS, extra=EXTRA)
    # The reference runs alongside the first attempt.
    ref = S.start_train(tiny_train_argv(ref_dir, STEPS, extra=EXTRA), tmp_path / "reference.log")
    tried = []

    # 1. SIGKILL in the middle of the asynchronous write of checkpoint_4 (before its commit).
    w = S.start_train(argv, tmp_path / "a1.log", kill_at_commit=f"checkpoint_{PERIOD}")
    assert w.join() == -signal.SIGKILL, w.log()[-3000:]
    assert any(p.name.startswith(f"checkpoint_{PERIOD}.orbax-checkpoint-tmp") for p in run.iterdir()), \
        sorted(p.name for p in run.iterdir())
    assert _assert_only_complete_checkpoints(run) == []
    tried.append("SIGKILL during async commit of checkpoint_4")

    # 2. SIGKILL at random moments.
    for i in range(RANDOM_KILLS):
        before = _assert_only_complete_checkpoints(run)
        w = S.start_train(argv, tmp_path / f"a2_{i}.log")
        start = _resumed_from(w.wait_for(r"^(resuming from .*|step \d+/)", 600).string)
        kill_after = max(start + 2, rng.randint(start + 2, STEPS - 8))
        assert w.wait_for(rf"^step {kill_after}/{STEPS}\b") is not None, w.log()[-3000:]
        w.proc.join(rng.uniform(0.0, 0.05))
        w.signal(signal.SIGKILL)
        assert w.join() == -signal.SIGKILL, w.log()[-3000:]
        assert start == (max(before) if before else 0), (start, before)
        tried.append(f"SIGKILL after step {kill_after} (+jitter)")

    # 3. SIGTERM at a random step: checkpoint at the next step boundary, clean exit.
    before = _assert_only_complete_checkpoints(run)
    w = S.start_train(argv, tmp_path / "a3.log")
    start = _resumed_from(w.wait_for(r"^(resuming from .*|step \d+/)", 600).string)
    assert start == (max(before) if before else 0), (start, before)
    term_after = rng.randint(start + 1, max(start + 1, STEPS - 4))
    assert w.wait_for(rf"^step {term_after}/{STEPS}\b") is not None, w.log()[-3000:]
    w.signal(signal.SIGTERM)
    assert w.join() == PREEMPTED, w.log()[-3000:]
    m = re.search(r"SIGTERM received: saved checkpoint at step (\d+)", w.log())
    assert m, w.log()[-3000:]
    saved = int(m.group(1))
    assert term_after <= saved < STEPS
    complete = _assert_only_complete_checkpoints(run)
    assert saved in complete and max(complete) == saved, complete
    tried.append(f"SIGTERM after step {term_after} (saved at {saved})")

    # 4. The restart continues from the SIGTERM checkpoint; kill it while it commits the next one.
    following = (saved // PERIOD + 1) * PERIOD
    w = S.start_train(argv, tmp_path / "a4.log", kill_at_commit=f"checkpoint_{following}")
    assert w.join() == -signal.SIGKILL, w.log()[-3000:]
    assert _resumed_from(w.log()) == saved, w.log()[-3000:]
    assert _assert_only_complete_checkpoints(run) == complete
    tried.append(f"resumed from the SIGTERM checkpoint_{saved}, SIGKILL during commit of checkpoint_{following}")

    # 5. Damage the SIGTERM checkpoint; the restart skips it with a warning and uses the one before.
    _damage(run / f"checkpoint_{saved}")
    previous = max([s for s in complete if s < saved], default=0)
    w = S.start_train(argv, tmp_path / "a5.log")
    assert w.join() == 0, w.log()[-3000:]
    log = w.log()
    assert re.search(rf"skipping damaged checkpoint .*checkpoint_{saved}\b", log), log[-3000:]
    assert _resumed_from(log) == previous, log[-3000:]
    assert "Traceback" not in log
    tried.append(f"restart with damaged latest checkpoint_{saved} (resumed from {previous})")

    assert ref.join() == 0, ref.log()[-3000:]
    final = S.read_state(run / f"checkpoint_{STEPS}")
    expected = S.read_state(ref_dir / f"checkpoint_{STEPS}")
    assert int(final["step"]) == STEPS
    assert S.differing_leaves(final, expected) == []
    ref_losses = {s: v[0] for s, v in _losses(ref_dir).items()}
    assert sorted(ref_losses) == list(range(1, STEPS + 1))
    for step, logged in _losses(run).items():
        assert all(x == ref_losses[step] for x in logged), (step, logged, ref_losses[step])
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))
    print(f"crash chain (seed {SEED}): {len(tried)} interruptions, all recovered bit-identically: {tried}")
