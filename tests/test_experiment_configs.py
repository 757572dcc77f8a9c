"""Every recipe in gin_configs/experiments parses with the model it is meant for and binds the
paper's numbers; the paper grids plan the expected runs."""
import glob
import os

import gin
import pytest

from conftest import REPO
from synthpre_jax import experiment, gin_utils, train as train_mod

EXP = REPO / "gin_configs" / "experiments"


def _parse(*files):
    gin.clear_config()
    train_mod._register_configurables()
    gin_utils.parse_gin(["models/t5_small.gin", *files], [])


@pytest.mark.parametrize("path", sorted(glob.glob(str(EXP / "*.gin"))), ids=os.path.basename)
def test_recipe_parses(path):
    try:
        _parse(f"experiments/{os.path.basename(path)}")
    finally:
        gin.clear_config()


def test_finetune_recipe_numbers():
    try:
        _parse("experiments/finetune_webqsp.gin", "init/load_all_but_embed.gin")
        assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 2048, "targets": 256}
        assert gin.query_parameter("%BATCH_SIZE") == 32 and gin.query_parameter("%TRAIN_STEPS") == 50000
        assert gin.query_parameter("%LEARNING_RATE") == 1e-3 and gin.query_parameter("%BEAM_SIZE") == 4
    finally:
        gin.clear_config()


def test_paper_grids_plan():
    t1 = experiment.plan(experiment.load_grid(str(EXP / "paper_table1.yaml")))
    assert sum(r.kind == "pretrain" for r in t1) == 3
    assert sum(r.kind == "finetune" for r in t1) == 6 * 5
    t2 = experiment.plan(experiment.load_grid(str(EXP / "paper_table2.yaml")))
    assert sum(r.kind == "finetune" for r in t2) == 6 * (1 + 3 * 9)
    t3 = experiment.plan(experiment.load_grid(str(EXP / "paper_table3.yaml")))
    assert all(r.kind == "finetune" for r in t3) and len(t3) == 6 * 7
    demo = experiment.plan(experiment.load_grid(str(EXP / "demo.yaml")))
    assert len(demo) == 7  # 2 pre-training runs + 5 fine-tuning inits


def test_demo_keeps_the_compilation_cache_off_for_several_simulated_devices():
    from synthpre_jax.demo import _simulates_several_cpu_devices as several
    assert not several({}) and not several({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert several({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false "
                                 "--xla_force_host_platform_device_count=8"})
    assert several({"JAX_NUM_CPU_DEVICES": "4"})
