"""Non-finite loss: `train.on_nonfinite_loss='stop'` (default) stops at the first bad step with
its number and leaves the last good checkpoint intact (no checkpoint of a later state is ever
written); 'skip' keeps the old params/optimizer state for bad steps and counts them.

Bad steps are injected at exactly one step, so the expected step numbers and states are known
by hand: a NaN loss (and gradients) from a Trainer subclass, a NaN learning rate (the update is
non-finite, the loss is not), or a huge finite learning rate (the next forward pass overflows).
In 'skip' mode the state after the bad step must equal, bit for bit, the state before it.
"""
import json
import math

import gin
import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_train_argv

import test_reliability_support as S
from synthpre_jax import cli, gin_utils
from synthpre_jax import train as train_mod
from synthpre_jax.checkpoints import latest_step_in
from synthpre_jax.trainer import Trainer

BAD = 6          # the step (1-based, as logged) whose update is poisoned
STEPS = 8


@gin.configurable(module="reliability_test")
def spiked_schedule(at_step: int = gin.REQUIRED, value: float = float("nan"), base: float = 0.01):
    """Constant `base`, except `value` at optimizer step `at_step` (0-based: it makes step at_step+1)."""
    def schedule(step):
        return jnp.where(jnp.asarray(step) == at_step, jnp.float32(value), jnp.float32(base))
    return schedule


class PoisonTrainer(Trainer):
    """Makes the loss and every gradient NaN at global step index BAD - 1 (logged as step BAD).

    Keyed on the global step, not the optimizer's count: 'skip' leaves the optimizer state (and
    its count, as optax.apply_if_finite does) untouched, so a count-keyed fault would recur."""

    def _train_step_fn(self, state, batch):
        self._traced_step = state["step"]
        return super()._train_step_fn(state, batch)

    def _grads(self, params, batch, rng):
        grads, sums = super()._grads(params, batch, rng)
        factor = jnp.where(self._traced_step == BAD - 1, jnp.float32(jnp.nan), jnp.float32(1.0))
        return jax.tree_util.tree_map(lambda g: g * factor, grads), {**sums, "loss": sums["loss"] * factor}


def _argv(model_dir, *extra, at_step=None, value=None, steps=STEPS, period=2):
    spike = []
    if at_step is not None:
        spike = ["--gin.trainer.Trainer.learning_rate_fn=@reliability_test.spiked_schedule()",
                 f"--gin.reliability_test.spiked_schedule.at_step={at_step}"]
    if value is not None:
        spike.append(f"--gin.reliability_test.spiked_schedule.value={value}")
    return tiny_train_argv(model_dir, steps, extra=S.QUIET + [f"--gin.CHECKPOINT_PERIOD={period}",
                                                               "--gin.DROPOUT_RATE=0.0", *spike, *extra])


def _cli(argv, capsys):
    gin.clear_config()
    try:
        code = cli.main(["train", *argv])
    finally:
        gin.clear_config()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _metrics(model_dir):
    return {m["step"]: m for m in map(json.loads, (model_dir / "train" / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory):
    """The poisoned run in 'skip' mode with a checkpoint after every step."""
    d = tmp_path_factory.mktemp("skip") / "run"
    gin.clear_config()
    try:
        args = train_mod.parse_args(_argv(d, "--gin.train.on_nonfinite_loss='skip'", period=1))
        train_mod._register_configurables()
        gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
        result = gin_utils.call_configurable(train_mod.train, trainer_cls=PoisonTrainer)
    finally:
        gin.clear_config()
    assert result["skipped_steps"] == [BAD] and result["step"] == STEPS
    return d


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, skip_run):
    """A NaN learning rate at step BAD: the update is non-finite (the loss is not)."""
    run = tmp_path / "run"
    code, out, err = _cli(_argv(run, at_step=BAD - 1), capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"at step {BAD};" in errors[0] and "last good checkpoint is step 4" in errors[0], errors[0]
    # checkpoint_6 was due but its state came from the bad step: it must not exist.
    assert sorted(S.checkpoint_listing(run)) == ["checkpoint_2", "checkpoint_4"]
    assert set(S.checkpoint_listing(run).values()) == {None}
    assert latest_step_in(str(run)) == 4
    # ... and checkpoint_4 holds exactly what a healthy run has at step 4.
    assert S.differing_leaves(S.read_state(run / "checkpoint_4"), S.read_state(skip_run / "checkpoint_4")) == []
    logged = _metrics(run)
    assert sorted(logged) == list(range(1, BAD)) and all(math.isfinite(m["loss"]) for m in logged.values())


def test_skip_keeps_the_state_and_counts(skip_run):
    before, after = S.read_state(skip_run / f"checkpoint_{BAD - 1}"), S.read_state(skip_run / f"checkpoint_{BAD}")
    assert int(before["step"]) == BAD - 1 and int(after["step"]) == BAD
    del before["step"], after["step"]
    assert S.differing_leaves(before, after) == []          # params and optimizer state untouched
    nxt = S.read_state(skip_run / f"checkpoint_{BAD + 1}")
    changed = S.differing_leaves({k: v for k, v in nxt.items() if k != "step"}, after)
    assert "params/token_embedder/embedding" in changed     # training went on after the skip
    logged = _metrics(skip_run)
    assert sorted(logged) == list(range(1, STEPS + 1))
    assert [s for s, m in logged.items() if m["skipped_steps"]] == [BAD]
    assert logged[BAD]["skipped_steps"] == 1.0 and "loss" not in logged[BAD]
    assert all(math.isfinite(m["loss"]) for s, m in logged.items() if s != BAD)
    assert set(S.checkpoint_listing(skip_run).values()) == {None}


def test_stop_on_a_genuinely_non_finite_loss(tmp_path, capsys):
    """A learning-rate spike (finite) blows the weights up; the next forward pass overflows."""
    run = tmp_path / "run"
    code, out, err = _cli(_argv(run, at_step=2, value=1e30, steps=6), capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "at step 4;" in errors[0] and "last good checkpoint is step 2" in errors[0], errors[0]
    logged = _metrics(run)
    assert sorted(logged) == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in logged.values())
    assert sorted(S.checkpoint_listing(run)) == ["checkpoint_2"]


def test_bad_policy_is_a_user_error(tmp_path, capsys):
    code, out, err = _cli(_argv(tmp_path / "run", "--gin.train.on_nonfinite_loss='ignore'"), capsys)
    assert code == 2 and "on_nonfinite_loss" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
