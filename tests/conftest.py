"""Shared test set-up: the repo root and tests/ on sys.path, quiet TensorFlow, tiny gin runs."""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Children with several simulated devices compile every program afresh (no persistent cache,
# see `subprocess_env`), and their programs are tiny: XLA:CPU's LLVM optimisation costs more
# than it saves there (an 8-device sharded training run: 37 s -> 28 s). Single-device tests
# keep the default: their programs come from the cache and some run hundreds of steps
# (tests/test_natural_pretrain.py: 27 s -> 45 s with these flags). Runs compared within a
# test are compiled alike; a test that compares a child's bits with this process's passes
# fast_compile=False (float results may differ in the last bit between the two settings).
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
for p in (str(REPO), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)


def subprocess_env(num_devices: int = 1, fast_compile: bool = True) -> dict:
    """Environment for a child python that must see `num_devices` simulated CPU devices.

    Children with several devices do not use the persistent compilation cache: an 8-device
    XLA:CPU executable with collectives that is *loaded from* that cache (jax 0.10.2)
    deadlocks in a rendezvous and aborts after 40 s ("Termination timeout for `all reduce
    ...`"), every time, while the same program compiled in the process runs fine.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    if num_devices > 1:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        if fast_compile:
            env["XLA_FLAGS"] += " " + FAST_COMPILE_XLA_FLAGS
    return env


def run_simulated_devices(args: list, num_devices: int, *, timeout: int = 600,
                          fast_compile: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(args)` in a child that sees `num_devices` simulated CPU devices."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run(args, env=subprocess_env(num_devices, fast_compile), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


TINY_BINDINGS = [
    # a tiny T5 over toy_copy's 32-token vocabulary: learns in seconds on a CPU
    "network.T5Config.vocab_size = 32",
    "network.T5Config.emb_dim = 32",
    "network.T5Config.num_heads = 2",
    "network.T5Config.head_dim = 16",
    "network.T5Config.mlp_dim = 64",
    "network.T5Config.num_encoder_layers = 2",
    "network.T5Config.num_decoder_layers = 2",
    "MIXTURE_OR_TASK_MODULE = 'toy_tasks'",
    "MIXTURE_OR_TASK_NAME = 'toy_copy'",
    "TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 12}",
]


def tiny_train_argv(model_dir, steps: int, *, batch: int = 16, extra=(), run: str = "runs/pretrain.gin") -> list:
    """argv for `synthpre train` on the toy copy task with the tiny model."""
    argv = ["--gin_file=models/t5_tiny.gin", f"--gin_file={run}"]
    argv += [f"--gin_bindings={b}" for b in TINY_BINDINGS]
    argv += [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch}"]
    argv += list(extra)
    return argv


def run_train_inprocess(argv):
    """Run `synthpre train` in this process with a clean gin config; returns train()'s result."""
    import gin
    from synthpre_jax import gin_utils, train as train_mod
    gin.clear_config()
    args = train_mod.parse_args(argv)
    train_mod._register_configurables()
    gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    try:
        return gin_utils.call_configurable(train_mod.train)
    finally:
        gin.clear_config()


# Compile once per distinct program across the whole suite (and its subprocesses): the tiny
# training runs differ only in data, so most compilations are cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# The longest test files first: with `-n 2 --dist loadfile --no-loadscope-reorder` (the
# Makefile) the workers take files in collection order, and a 3-minute file started last
# leaves the other worker idle meanwhile.
_SLOW_FILES_FIRST = ("test_train_sharded.py", "test_reliability_multihost.py",
                     "test_reliability_crash.py", "test_benchmarks_smoke.py",
                     "test_reliability_disk.py", "test_evaluation_sharded.py",
                     "test_inference.py", "test_natural_pretrain.py", "test_resume.py",
                     "test_experiment.py", "test_train_copy.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise
