"""Multi-host training on localhost: two real processes (jax.distributed with gloo CPU
collectives, 4 simulated devices each) against one process with 8 devices.

Three processes run at once, each in two phases:
  phase 1  the pair trains MODEL_DIR A for 4 steps; the single process trains B for 4 steps;
  phase 2  the single process resumes A (written by the pair) to step 6, and the pair resumes B
           (written by the single process) to step 6.
Checked: the same losses at every step in both layouts (1e-6 relative; the cross-process
all-reduce may sum in another order), each process's host batch is exactly its half of the
single process's global batch, each process generated only example indices of its own
blocks (the training pipeline and the set-up probe alike), and a checkpoint written by one
layout restores bit for bit in the other.

The task is a copy task whose source hands out blocks of 8 consecutive example indices, block b
to host b % num_hosts (the scheme of the project's synthetic sources, with blocks of 32 there):
with a per-host batch of 8 the global batch at every step is the same for any number of hosts.
"""
import hashlib
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
from conftest import tiny_train_argv

import test_reliability_support as S

BLOCK = BATCH_PER_HOST = 8
BATCH = 2 * BATCH_PER_HOST
TASK = "reliability_blocks"
EXTRA = S.QUIET + ["--gin.CHECKPOINT_PERIOD=2", "--gin.DROPOUT_RATE=0.1", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'"]
_GENERATED: list = []


# ------------------------------------------------------------------ in the worker processes
def _register_task() -> None:
    import seqio
    import tensorflow as tf

    class BlockSource(seqio.FunctionDataSource):
        @property
        def supports_arbitrary_sharding(self) -> bool:
            return True

        @property
        def performs_internal_shuffling(self) -> bool:  # an i.i.d. stream, like the synthetic sources
            return True

        def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *,
                        sequence_length=None, use_cached=False, num_epochs=1):
            index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)

            def gen():
                block = index
                while True:
                    for i in range(block * BLOCK, (block + 1) * BLOCK):
                        _GENERATED.append(i)
                        rng = np.random.default_rng([7, i])
                        x = rng.integers(2, 32, size=int(rng.integers(4, 11)), dtype=np.int32)
                        yield {"inputs": x, "targets": x.copy()}
                    block += count

            spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
            return tf.data.Dataset.from_generator(gen, output_signature=spec)

    vocab = seqio.PassThroughVocabulary(size=32, eos_id=1)
    seqio.TaskRegistry.add(
        TASK, source=BlockSource(lambda split, shuffle_files: None, splits=("train",)),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocab, add_eos=True), "targets": seqio.Feature(vocab, add_eos=True)},
        metric_fns=[], shuffle_buffer_size=None)


def _instrument() -> dict:
    """Record host batches, restored states (as digests) and generated example indices."""
    from synthpre_jax import checkpoints
    from synthpre_jax.partitioning import PjitPartitioner
    rec = {"batches": [], "restored": None}
    make, restore = PjitPartitioner.make_global_batch, checkpoints.CheckpointManager.restore

    def make_global_batch(self, host_batch, global_batch_size):
        rec["batches"].append(np.asarray(host_batch["encoder_input_tokens"]).tolist())
        return make(self, host_batch, global_batch_size)

    def restore_and_record(self, step, abstract_state):
        import jax
        from synthpre_jax.checkpoint_utils import tree_paths
        state = restore(self, step, abstract_state)
        rec["restored"] = {p: _digest(np.asarray(jax.device_get(x.addressable_data(0))))
                           if getattr(x, "is_fully_replicated", True) else "sharded"
                           for p, x in tree_paths(state).items()}
        return state

    PjitPartitioner.make_global_batch = make_global_batch
    checkpoints.CheckpointManager.restore = restore_and_record
    return rec


def _phase(rec: dict, argv: list, out: Path) -> None:
    from synthpre_jax import cli
    rec["batches"], rec["restored"] = [], None
    del _GENERATED[:]
    print(f"PHASE START {time.time():.1f}", flush=True)
    code = cli.main(["train", *argv])
    print(f"PHASE END {time.time():.1f}", flush=True)
    out.write_text(json.dumps({"code": code, "generated": sorted(set(_GENERATED)), **rec}))
    if code:
        sys.exit(code)


def _wait_file(path: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


def pair_worker(log_path: str, rank: int, port: int, root: str) -> None:
    S._redirect(log_path)
    S.start_devices(4)
    _register_task()
    rec, root = _instrument(), Path(root)
    dist = [f"--coordinator_address=localhost:{port}", "--process_count=2", f"--process_index={rank}",
            "--cpu_collectives"]
    _phase(rec, tiny_train_argv(root / "A", 4, batch=BATCH, extra=EXTRA) + dist, root / f"pair{rank}_A.json")
    if rank == 0:
        (root / "A.done").touch()
    _wait_file(root / "B.done")
    _phase(rec, tiny_train_argv(root / "B", 6, batch=BATCH, extra=EXTRA), root / f"pair{rank}_B.json")
    import jax
    jax.distributed.shutdown()   # atexit would do it in a plain process; forked workers skip atexit


def single_worker(log_path: str, root: str) -> None:
    S._redirect(log_path)
    S.start_devices(8)
    _register_task()
    rec, root = _instrument(), Path(root)
    _phase(rec, tiny_train_argv(root / "B", 4, batch=BATCH, extra=EXTRA), root / "single_B.json")
    (root / "B.done").touch()
    _wait_file(root / "A.done")
    _phase(rec, tiny_train_argv(root / "A", 6, batch=BATCH, extra=EXTRA), root / "single_A.json")


def _digest(a: np.ndarray) -> str:
    return f"{a.dtype}{a.shape}" + hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


# ------------------------------------------------------------------ the test
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(model_dir: Path) -> dict:
    return {m["step"]: m["loss"] for m in map(json.loads, (model_dir / "train" / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_match_one_process_and_checkpoints_cross_over(tmp_path):
    port = _free_port()
    workers = [S.Worker(pair_worker, tmp_path / f"pair{r}.log", r, port, str(tmp_path)) for r in (0, 1)]
    workers.append(S.Worker(single_worker, tmp_path / "single.log", str(tmp_path)))
    try:
        codes = [w.join(900) for w in workers]
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.proc.kill()
    assert codes == [0, 0, 0], "\n\n".join(w.log()[-2500:] for w in workers)
    rec = {name: json.loads((tmp_path / f"{name}.json").read_text())
           for name in ("pair0_A", "pair1_A", "pair0_B", "pair1_B", "single_B", "single_A")}

    # Same losses, steps 1-4 from scratch and 5-6 after crossing over.
    a, b = _losses(tmp_path / "A"), _losses(tmp_path / "B")
    assert sorted(a) == sorted(b) == list(range(1, 7)), (a, b)
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * abs(b[step]), (step, a[step], b[step])

    # Each host's batch is its half of the single process's global batch (same rows, same order).
    for pair_dir, single in (("A", "single_B"), ("B", "single_A")):
        halves = [rec[f"pair{r}_{pair_dir}"]["batches"] for r in (0, 1)]
        full = rec[single]["batches"]
        assert len(halves[0]) == len(halves[1]) == len(full) > 0
        for h0, h1, g in zip(halves[0], halves[1], full):
            assert len(h0) == len(h1) == BATCH_PER_HOST and len(g) == BATCH
            assert h0 + h1 == g

    # Each host generated only example indices of its own blocks, and the two never overlap.
    for r in (0, 1):
        for phase in ("A", "B"):
            gen = rec[f"pair{r}_{phase}"]["generated"]
            assert gen and all((i // BLOCK) % 2 == r for i in gen), (r, phase, gen[:40])
    assert not set(rec["pair0_A"]["generated"]) & set(rec["pair1_A"]["generated"])

    # The pair really wrote one checkpoint together; each layout restored the other's bit for bit.
    assert sorted(p.name for p in (tmp_path / "A" / "checkpoint_4" / "state").iterdir()
                  if p.name.startswith("ocdbt.process_")) == ["ocdbt.process_0", "ocdbt.process_1"]
    written_by_pair = {k: _digest(v) for k, v in S.read_state(tmp_path / "A" / "checkpoint_4").items()}
    written_by_single = {k: _digest(v) for k, v in S.read_state(tmp_path / "B" / "checkpoint_4").items()}
    assert rec["single_A"]["restored"] == written_by_pair
    assert rec["pair0_B"]["restored"] == rec["pair1_B"]["restored"] == written_by_single
    assert "resuming from" in workers[2].log() and "at step 4" in workers[2].log()
