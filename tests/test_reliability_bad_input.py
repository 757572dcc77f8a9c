"""The bad-input matrix: every case gives exactly one actionable line on stderr ('error: ...'),
exit code 2, no traceback, and leaves MODEL_DIR as it was (absent stays absent; an existing run
keeps every file byte for byte).

One table, three kinds of input: 'cli' (flags and commands), 'gin' (files and bindings) and
'api' (library calls, run through the same `run_guarded` as the commands). To add a case, add a
row: name -> (kind, make, pattern). `make(ctx)` returns an argv for `synthpre` or a
zero-argument callable; `pattern` is a regex the error line must match, normally naming both
what is wrong and what to do. Cases that need 8 devices run in one forked 8-device process.
"""
import os
import re
import shutil
from pathlib import Path

import gin
import pytest
import seqio
import tensorflow as tf
from conftest import tiny_train_argv

import test_reliability_support as S
from synthpre_jax import cli

EMPTY_TASK = "reliability_empty"
if EMPTY_TASK not in seqio.TaskRegistry.names():
    _vocab = seqio.PassThroughVocabulary(size=32, eos_id=1)
    seqio.TaskRegistry.add(
        EMPTY_TASK,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {"inputs": tf.zeros([0, 3], tf.int32), "targets": tf.zeros([0, 3], tf.int32)}),
            splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(_vocab), "targets": seqio.Feature(_vocab)}, metric_fns=[])


class Ctx:
    """Paths a case may use; `model_dir` is what must stay unchanged."""

    def __init__(self, tmp: Path, trained: Path):
        self.tmp, self.trained = tmp, trained
        self.model_dir = tmp / "run"

    def argv(self, *extra, steps=2, run="runs/pretrain.gin"):
        return ["train", *tiny_train_argv(self.model_dir, steps, extra=list(S.QUIET) + list(extra), run=run)]

    def existing_run(self):
        """MODEL_DIR is a copy of a trained tiny run (checkpoint_2)."""
        shutil.copytree(self.trained, self.model_dir)
        return self

    def file(self, name, text, encoding="utf-8"):
        p = self.tmp / name
        p.write_text(text, encoding=encoding)
        return str(p)


def _replace(argv, prefix, new):
    return [new if a.startswith(prefix) else a for a in argv]


def _drop(argv, *needles):
    return [a for a in argv if not any(n in a for n in needles)]


# ------------------------------------------------------------------ API callables
def _api_train(ctx, **overrides):
    """train() through gin (as a Python user calls it), with some arguments overridden."""
    def call():
        from synthpre_jax import gin_utils
        from synthpre_jax import train as T
        gin.clear_config()
        args = T.parse_args(ctx.argv()[1:])
        T._register_configurables()
        gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
        return gin_utils.call_configurable(T.train, **overrides)
    return call


def _api(fn_name, *args, **kwargs):
    def call():
        module, attr = fn_name.rsplit(".", 1)
        obj = __import__(module, fromlist=[attr])
        for part in attr.split("/"):
            obj = getattr(obj, part)
        return obj(*args, **kwargs)
    return call


def _restore_missing_step(ctx):
    def call():
        from synthpre_jax import checkpoints as C
        with C.CheckpointManager(str(ctx.trained), C.SaveCheckpointConfig(async_save=False)) as m:
            m.restore(99, {})
    return call


def _restore_initial_wrong_shapes(ctx):
    def call():
        import jax.numpy as jnp
        from synthpre_jax import checkpoints as C
        fresh = {"token_embedder": {"embedding": jnp.zeros((32, 48))}}
        C.restore_initial_params(C.RestoreCheckpointConfig(path=str(ctx.trained)), fresh)
    return call


def _partitioner_with_devices(num_partitions):
    def call():
        from synthpre_jax.partitioning import PjitPartitioner
        PjitPartitioner(num_partitions=num_partitions)
    return call


# ------------------------------------------------------------------ the table
WRONG_SIZE = ["--gin.network.T5Config.emb_dim=48"]
CASES = {
    # --- command line
    "cli: no gin file": ("cli", lambda c: ["train"], r"no --gin_file given.*--gin_file=models/"),
    "cli: unknown flag": ("cli", lambda c: c.argv("--model_dir=/tmp/x"), r"unknown argument '--model_dir.*--help"),
    "cli: bad flag value": ("cli", lambda c: c.argv("--process_count=two"), r"invalid int value: 'two'.*--help"),
    "cli: gin file not found": ("cli", lambda c: c.argv("--gin_file=models/t5_nope.gin"), r"t5_nope\.gin' not found"),
    "cli: --gin.NAME without value": ("cli", lambda c: c.argv("--gin.TRAIN_STEPS"), r"--gin\.TRAIN_STEPS has no value: use --gin\.NAME=VALUE"),
    "cli: missing tfds data dir": ("cli", lambda c: c.argv(f"--tfds_data_dir={c.tmp}/no_tfds"),
                                   r"--tfds_data_dir .*no_tfds' does not exist; give the directory"),
    "cli: coordinator without process flags": ("cli", lambda c: c.argv("--coordinator_address=localhost:1",
                                                                        "--cpu_collectives"),
                                               r"needs --process_count and --process_index"),
    "cli: multiprocess_gpu without coordinator": ("cli", lambda c: c.argv("--multiprocess_gpu"),
                                                  r"--multiprocess_gpu needs --coordinator_address"),
    "cli: MODEL_DIR under a file (unwritable)": ("cli", lambda c: _replace(
        c.argv(), "--gin.MODEL_DIR", f"--gin.MODEL_DIR='{c.file('a_file', 'x')}/run'"),
        r"MODEL_DIR .* is not writable \(Not a directory\); choose another directory"),
    "cli: MODEL_DIR is a file": ("cli", lambda c: _replace(
        c.argv(), "--gin.MODEL_DIR", f"--gin.MODEL_DIR='{c.file('run_file', 'x')}'"),
        r"is a file, not a directory; choose a directory"),
    "cli: unknown command": ("cli", lambda c: ["trian"], r"unknown command 'trian' \(did you mean 'train'\?\)"),
    "cli: gen unknown task": ("cli", lambda c: ["gen", "identiti"], r"unknown synthetic task 'identiti'.*identity"),
    "cli: inspect unknown task": ("cli", lambda c: ["inspect", "toy_cpy", "--module=toy_tasks"],
                                  r"no task or mixture named 'toy_cpy' \(did you mean 'toy_copy'"),
    "cli: weight-stats unknown scheme": ("cli", lambda c: ["weight-stats", f"--source={c.trained}",
                                                           "--scheme=per_param_sclae", f"--out={c.tmp}/ws"],
                                         r"unknown weight-stats scheme 'per_param_sclae'.*per_param_scale"),
    # --- gin files and bindings
    "gin: unknown task, close match": ("gin", lambda c: c.argv("--gin.MIXTURE_OR_TASK_NAME='toy_cpy'"),
                                       r"unknown task or mixture 'toy_cpy' \(did you mean 'toy_copy'[^)]*\); register"),
    "gin: unknown mixture, close match": ("gin", lambda c: c.argv("--gin.MIXTURE_OR_TASK_NAME='synthpre_lime_tny'"),
                                          r"unknown task or mixture 'synthpre_lime_tny' \(did you mean 'synthpre_lime_tiny'"),
    "gin: unquoted string": ("gin", lambda c: c.argv("--gin.MIXTURE_OR_TASK_NAME=toy_copy"),
                             r"not a value gin can parse; string values need quotes, e.g. --gin.NAME=\"'value'\""),
    "gin: unknown parameter": ("gin", lambda c: c.argv("--gin.network.T5Config.embdim=32"),
                               r"'network\.T5Config' doesn't have a parameter named 'embdim'.*did you mean 'emb_dim'"),
    "gin: unknown configurable": ("gin", lambda c: c.argv("--gin.network.T5Confg.emb_dim=32"),
                                  r"No configurable matching 'network\.T5Confg'.*did you mean 'network\.T5Config'"),
    "gin: missing MODEL_DIR": ("gin", lambda c: _drop(c.argv(), "MODEL_DIR"),
                               r"missing required macro MODEL_DIR: add --gin\.MODEL_DIR="),
    "gin: missing TRAIN_STEPS": ("gin", lambda c: _drop(c.argv(), "TRAIN_STEPS"),
                                 r"missing required macro TRAIN_STEPS: add --gin\.TRAIN_STEPS="),
    "gin: missing TASK_FEATURE_LENGTHS": ("gin", lambda c: _drop(c.argv(), "TASK_FEATURE_LENGTHS"),
                                          r"missing required macro TASK_FEATURE_LENGTHS"),
    "gin: missing MIXTURE_OR_TASK_NAME": ("gin", lambda c: _drop(c.argv(), "MIXTURE_OR_TASK_NAME"),
                                          r"missing required macro MIXTURE_OR_TASK_NAME"),
    "gin: zero steps": ("gin", lambda c: c.argv(steps=0), r"TRAIN_STEPS must be a positive integer, got 0"),
    "gin: negative steps": ("gin", lambda c: c.argv(steps=-3), r"TRAIN_STEPS must be a positive integer, got -3"),
    "gin: steps not a number": ("gin", lambda c: c.argv("--gin.TRAIN_STEPS='many'"),
                                r"TRAIN_STEPS must be a positive integer, got 'many'"),
    "gin: zero EVAL_PERIOD": ("gin", lambda c: c.argv("--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0"), r"EVAL_PERIOD must be a positive integer"),
    "gin: negative EVAL_STEPS": ("gin", lambda c: c.argv("--gin.EVAL_STEPS=-1"), r"EVAL_STEPS must be a positive integer"),
    "gin: zero stats period": ("gin", lambda c: c.argv("--gin.train.stats_period=0"),
                               r"train\.stats_period must be a positive integer, got 0"),
    "gin: zero batch size": ("gin", lambda c: c.argv("--gin.BATCH_SIZE=0"), r"BATCH_SIZE must be a positive integer, got 0"),
    "gin: zero feature length": ("gin", lambda c: c.argv("--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"),
                                 r"TASK_FEATURE_LENGTHS\['inputs'\] must be a positive integer, got 0"),
    "gin: feature lengths not a dict": ("gin", lambda c: c.argv("--gin.TASK_FEATURE_LENGTHS=512"),
                                        r"TASK_FEATURE_LENGTHS must be a dict like"),
    "gin: feature length too short for the task": ("gin", lambda c: c.argv(
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 3}"),
        r"TASK_FEATURE_LENGTHS\['targets'\]=3 is too short for 'toy_copy'.*set it to at least 11"),
    "gin: vocabulary larger than the embedding": ("gin", lambda c: c.argv("--gin.network.T5Config.vocab_size=16"),
                                                  r"has 32 ids but the model's embedding has 16 rows; set "
                                                  r"--gin\.network\.T5Config\.vocab_size=32"),
    "gin: checkpoint in MODEL_DIR from another model size": ("gin", lambda c: c.existing_run().argv(*WRONG_SIZE, steps=4),
                                                             r"checkpoint_2: params/\S+ has shape \(32,\) but the "
                                                             r"model expects \(48,\).*; use the model config"),
    "gin: INITIAL_CHECKPOINT_PATH from another model size": ("gin", lambda c: c.argv(
        *WRONG_SIZE, f"--gin.INITIAL_CHECKPOINT_PATH='{c.trained}'"),
        r"has shape .* but the model's .* has shape .*; use the matching model config"),
    "gin: INITIAL_CHECKPOINT_PATH missing": ("gin", lambda c: c.argv(f"--gin.INITIAL_CHECKPOINT_PATH='{c.tmp}/nope'"),
                                             r"no checkpoint at .*nope.*check INITIAL_CHECKPOINT_PATH"),
    "gin: model parallelism larger than the devices": ("gin", lambda c: c.argv("--gin.NUM_PARTITIONS=2"),
                                                       r"num_partitions=2 does not divide the 1 available devices"),
    "gin: microbatches do not divide the batch": ("gin", lambda c: c.argv("--gin.NUM_MICROBATCHES=3"),
                                                  r"gives 16 rows per data-parallel device, which "
                                                  r"NUM_MICROBATCHES=3 does not divide"),
    "gin: zero checkpoint period": ("gin", lambda c: c.argv("--gin.CHECKPOINT_PERIOD=0"),
                                    r"SaveCheckpointConfig\.period must be a positive integer"),
    "gin: zero checkpoints to keep": ("gin", lambda c: c.argv("--gin.CHECKPOINTS_TO_KEEP=0"),
                                      r"SaveCheckpointConfig\.keep must be None or >= 1"),
    "gin: bad checkpoint dtype": ("gin", lambda c: c.argv("--gin.checkpoints.SaveCheckpointConfig.dtype='int8'"),
                                  r"SaveCheckpointConfig\.dtype must be one of"),
    "gin: dropout rate out of range": ("gin", lambda c: c.argv("--gin.DROPOUT_RATE=1.5"),
                                       r"T5Config\.dropout_rate must be in \[0, 1\)"),
    "gin: unknown activation": ("gin", lambda c: c.argv("--gin.network.T5Config.mlp_activations=('swishy',)"),
                                r"unknown activation 'swishy'"),
    "gin: unknown learning-rate factor": ("gin", lambda c: c.argv("--gin.utils.create_learning_rate_scheduler.factors='cosine'"),
                                          r"unknown learning-rate factor 'cosine'.*known: constant"),
    "gin: unknown loss normalizer": ("gin", lambda c: c.argv("--gin.LOSS_NORMALIZING_FACTOR='PER_TOKEN'"),
                                     r"unknown loss_normalizing_factor 'PER_TOKEN'"),
    "gin: unknown non-finite policy": ("gin", lambda c: c.argv("--gin.train.on_nonfinite_loss='ignore'"),
                                       r"train\.on_nonfinite_loss must be one of 'stop', 'skip'"),
    "gin: task module not importable": ("gin", lambda c: c.argv("--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks_mod'"),
                                        r"cannot import task module 'no_such_tasks_mod'.*PYTHONPATH"),
    "gin: train split missing": ("gin", lambda c: c.argv("--gin.train/utils.DatasetConfig.split='dev'"),
                                 r"'toy_copy' has no split 'dev'; it has \['train', 'validation'\]"),
    "gin: eval split missing": ("gin", lambda c: c.argv("--gin.train.train_eval_dataset_cfg=@train_eval/utils.DatasetConfig()",
                                                        "--gin.train_eval/utils.DatasetConfig.split='test'"),
                                r"has no split 'test'"),
    "gin: empty dataset": ("gin", lambda c: c.argv(f"--gin.MIXTURE_OR_TASK_NAME='{EMPTY_TASK}'"),
                           r"the 'train' split of 'reliability_empty' is empty; check the task's data source"),
    "gin: missing data directory": ("gin", lambda c: c.argv("--gin.MIXTURE_OR_TASK_NAME='mtop'",
                                                            f"--gin.DOWNSTREAM_DATA_DIR='{c.tmp}/no_data'",
                                                            "--gin.network.T5Config.vocab_size=32128"),
                                    r"no_data.*prepare-data"),
    "gin: unknown weight-statistics scheme": ("gin", lambda c: c.argv(
        "--gin_file=init/per_param_scale.gin", "--gin.init_modes.InitConfig.scheme='per_param_sclae'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{c.trained}'", run="runs/finetune.gin"),
        r"unknown weight-stats scheme 'per_param_sclae'.*per_param_scale"),
    "gin: unknown init mode": ("gin", lambda c: c.argv("--gin.init_modes.InitConfig.mode='laod'",
                                                       f"--gin.INITIAL_CHECKPOINT_PATH='{c.trained}'",
                                                       run="runs/finetune.gin"),
                               r"unknown InitConfig\.mode 'laod' \(did you mean 'load'"),
    "gin: no optimizer": ("gin", lambda c: c.argv("--gin.models.EncoderDecoderModel.optimizer_def=None"),
                          r"the model has no optimizer: bind EncoderDecoderModel\.optimizer_def"),
    "gin: misspelled macro": ("gin", lambda c: c.argv("--gin.DROPOUT_RAT=0.0"),
                              r"gin macro DROPOUT_RAT is set but no binding uses it \(did you mean 'DROPOUT_RATE'"),
    "gin: gin file not UTF-8": ("gin", lambda c: c.argv("--gin_file=" + c.file("latin1.gin", "TRAIN_STEPS = 3  # d\u00e9j\u00e0", "latin-1")),
                                r"gin file \S*latin1\.gin is not UTF-8 text .*save it as UTF-8"),
    "gin: an included gin file not UTF-8": ("gin", lambda c: c.argv("--gin_file=" + c.file(
        "top.gin", "include '" + c.file("inner.gin", "TRAIN_STEPS = 3  # d\u00e9j\u00e0", "latin-1") + "'\n")),
        r"gin file \S*inner\.gin \(included by \S*top\.gin\) is not UTF-8 text"),
    "gin: an include that is a directory": ("gin", lambda c: c.argv("--gin_file=" + c.file(
        "top.gin", "include '" + (os.makedirs(c.tmp / "incdir") or str(c.tmp / "incdir")) + "'\n")),
        r"gin file \S*top\.gin includes '\S*incdir', which is a directory .*include a \.gin file"),
    "gin: an include next to the including file": ("gin", lambda c: c.argv("--gin_file=" + c.file(
        "top.gin", "include '" + os.path.basename(c.file("sibling_xyz.gin", "TRAIN_STEPS = 3\n")) + "'\n")),
        r"includes 'sibling_xyz\.gin', which gin looks for only in its search paths, not next to "
        r"the including file; add --gin_search_paths=\S+"),
    "cli: --gin.NAME followed by another flag": ("cli", lambda c: c.argv("--gin.TRAIN_STEPS", "--gin.EVAL_PERIOD=2"),
                                        r"--gin\.TRAIN_STEPS has no value: use --gin\.NAME=VALUE"),
    "gin: gin file is a directory": ("gin", lambda c: c.argv("--gin_file=models"),
                                     r"gin file 'models' is a directory"),
    "gin: syntax error in a gin file": ("gin", lambda c: c.argv(f"--gin_file={c.file('bad.gin', 'TRAIN_STEPS = = 3')}"),
                                        r"in gin file \S*bad\.gin: .*bad\.gin"),
    "gin: unknown configurable in a gin file": ("gin", lambda c: c.argv(
        f"--gin_file={c.file('bad2.gin', 'network.T5Confg.emb_dim = 3')}"),
        r"in gin file \S*bad2\.gin: No configurable matching 'network\.T5Confg'.*did you mean 'network\.T5Config'"),
    # --- Python API
    "api: train() with zero steps": ("api", lambda c: _api_train(c, total_steps=0), r"TRAIN_STEPS must be a positive"),
    "api: train() without model_dir": ("api", lambda c: _api_train(c, model_dir=""), r"MODEL_DIR is not set"),
    "api: SaveCheckpointConfig(period=0)": ("api", lambda c: _api("synthpre_jax.checkpoints.SaveCheckpointConfig", period=0),
                                            r"period must be a positive integer, got 0"),
    "api: RestoreCheckpointConfig(mode='newest')": ("api", lambda c: _api("synthpre_jax.checkpoints.RestoreCheckpointConfig",
                                                                           mode="newest"),
                                                    r"mode must be 'specific' or 'latest'"),
    "api: load_params of a missing path": ("api", lambda c: _api("synthpre_jax.checkpoints.load_params", f"{c.tmp}/nope"),
                                           r"does not exist"),
    "api: restore a step that is not there": ("api", _restore_missing_step,
                                              r"no checkpoint for step 99 .*steps there: \[2\]"),
    "api: restore_initial_params with wrong shapes": ("api", _restore_initial_wrong_shapes,
                                                      r"token_embedder/embedding has shape \(32, 32\) but the model's"),
    "api: PjitPartitioner larger than the devices": ("api", lambda c: _partitioner_with_devices(4),
                                                     r"num_partitions=4 does not divide the 1 available devices"),
    "api: unknown task": ("api", lambda c: _api("synthpre_jax.data.dataset.get_task_or_mixture", "toy_cpy"),
                          r"did you mean 'toy_copy'"),
    "api: learning-rate factor": ("api", lambda c: _api("synthpre_jax.optimizers.create_learning_rate_scheduler",
                                                        factors="constant * warmup"), r"unknown learning-rate factor 'warmup'"),
    "api: T5Config dropout": ("api", lambda c: _api("synthpre_jax.models.network.T5Config", dropout_rate=2.0),
                              r"dropout_rate must be in \[0, 1\), got 2\.0"),
    "api: weight-stats scheme": ("api", lambda c: _api("synthpre_jax.weight_stats_groups.resolve_scheme", "per_parm_scale"),
                                 r"unknown weight-stats scheme 'per_parm_scale'"),
    "api: gin binding": ("api", lambda c: _api("synthpre_jax.gin_utils.parse_gin", [], ["TRAIN_STEPS = = 1"]),
                         r"bad gin binding 'TRAIN_STEPS = = 1'"),
    "api: distributed without counts": ("api", lambda c: _api("synthpre_jax.partitioning.initialize_distributed",
                                                              coordinator_address="localhost:1", cpu_collectives=True),
                                        r"needs --process_count and --process_index"),
}

# Need 8 devices: run together in one forked process (see `_eight_device_results`).
EIGHT_DEVICE_CASES = {
    "8 devices: batch not divisible by the data-parallel size": (
        ["--gin.BATCH_SIZE=12"], r"batch size 12 is not divisible by the data-parallel size 8 .*change BATCH_SIZE"),
    "8 devices: mesh larger than the device count": (
        ["--gin.NUM_PARTITIONS=16"], r"num_partitions=16 does not divide the 8 available devices; choose a divisor of 8"),
    "8 devices: model parallelism not dividing the devices": (
        ["--gin.NUM_PARTITIONS=3"], r"num_partitions=3 does not divide the 8 available devices"),
    "8 devices: submesh larger than the device count": (
        ["--gin.partitioning.PjitPartitioner.model_parallel_submesh=(4, 4, 1, 1)"], r"num_partitions=16 does not divide"),
    "8 devices: microbatches vs rows per device": (
        ["--gin.NUM_MICROBATCHES=4"], r"BATCH_SIZE 16 gives 2 rows per data-parallel device, which NUM_MICROBATCHES=4"),
}


# ------------------------------------------------------------------ running a case
def _check_output(code, err, pattern):
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert code == 2, f"exit code {code}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    i = errors[0]
    assert i + 1 == len(lines) or not lines[i + 1][:1].isspace(), f"the message continues:\n{err[-1500:]}"
    assert re.search(pattern, lines[i]), lines[i]
    return lines[i]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained") / "run"
    gin.clear_config()
    try:
        assert cli.main(["train", *tiny_train_argv(d, 2, extra=S.QUIET + ["--gin.CHECKPOINT_PERIOD=2"])]) == 0
    finally:
        gin.clear_config()
    return d


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, trained, capfd):
    kind, make, pattern = CASES[name]
    ctx = Ctx(tmp_path, trained)
    target = make(ctx)
    before = S.tree_digest(ctx.model_dir)
    capfd.readouterr()
    gin.clear_config()
    try:
        if kind == "api":
            code = cli.run_guarded(lambda _argv: target(), [])
        else:
            code = cli.main(target)
    finally:
        gin.clear_config()
    err = capfd.readouterr().err
    line = _check_output(code, err, pattern)
    assert S.tree_digest(ctx.model_dir) == before, "MODEL_DIR changed"
    with capfd.disabled():
        print(f"[{name}] {line}")   # shown with -s: the matrix as the user sees it


def eight_device_worker(log_path, cases, root, out_path):
    """Runs the 8-device cases one after the other in this forked process."""
    import io
    import json
    import sys
    S._redirect(log_path)
    S.start_devices(8)
    results = {}
    for name, extra in cases.items():
        model_dir = Path(root) / re.sub(r"\W+", "_", name)
        before = S.tree_digest(model_dir)
        err, old = io.StringIO(), sys.stderr
        sys.stderr = err
        try:
            gin.clear_config()
            code = cli.main(["train", *tiny_train_argv(model_dir, 2, extra=list(S.QUIET) + list(extra))])
        except BaseException:  # noqa: BLE001 - reported as the case's failure
            import traceback
            code, _ = 1, traceback.print_exc(file=err)
        finally:
            sys.stderr = old
        results[name] = {"code": code, "err": err.getvalue(), "unchanged": S.tree_digest(model_dir) == before}
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def eight_device_results(tmp_path_factory):
    import json
    root = tmp_path_factory.mktemp("eight")
    w = S.Worker(eight_device_worker, root / "worker.log", {k: v[0] for k, v in EIGHT_DEVICE_CASES.items()},
                 str(root), str(root / "results.json"))
    assert w.join(600) == 0, w.log()[-3000:]
    return json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("name", list(EIGHT_DEVICE_CASES))
def test_bad_input_on_8_devices(name, eight_device_results):
    r = eight_device_results[name]
    line = _check_output(r["code"], r["err"], EIGHT_DEVICE_CASES[name][1])
    assert r["unchanged"], "MODEL_DIR changed"
    print(f"[{name}] {line}")


def test_the_matrix_is_large_enough():
    kinds = [k for k, _, _ in CASES.values()] + ["gin"] * len(EIGHT_DEVICE_CASES)
    assert len(kinds) >= 40 and {"cli", "gin", "api"} == set(kinds)


def test_unused_macro_far_from_any_used_one_only_warns(capfd):
    from synthpre_jax import gin_utils, train
    train._register_configurables()
    gin.clear_config()
    try:
        gin_utils.parse_gin(["models/t5_tiny.gin", "runs/pretrain.gin"],
                            ["TRAIN_STEPS = 3", "MY_WRAPPER_SETTING = 1", "B = %ANOTHER_MACRO"])
        used = gin_utils.referenced_macros()
    finally:
        gin.clear_config()
    err = capfd.readouterr().err
    assert {"TRAIN_STEPS", "DROPOUT_RATE", "MODEL_DIR", "ANOTHER_MACRO"} <= used
    assert "MY_WRAPPER_SETTING" not in used and "B" not in used
    assert "warning: gin macro MY_WRAPPER_SETTING is set but no binding of this config uses it" in err
    assert "warning: gin macro B is set" in err and "TRAIN_STEPS" not in err
