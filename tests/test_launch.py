"""The launch scripts' --dry-run prints the exact commands they would run."""
import subprocess

from conftest import REPO


def _dry(script, *args):
    p = subprocess.run(["bash", str(REPO / "launch" / script), *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_tpu_pod_dry_run_commands():
    code, out, err = _dry("tpu_pod.sh", "--tpu", "t1", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
                          "--project", "proj", "--dry-run", "--", "synthpre", "train", "--gin_file=models/t5_small.gin",
                          "--gin.MODEL_DIR='gs://b/run'")
    assert code == 0, err
    lines = [l for l in out.splitlines() if not l.startswith("#")]
    assert lines[0].startswith("gcloud compute tpus tpu-vm create t1 --zone us-central2-b --project proj "
                               "--accelerator-type v4-32")
    assert lines[1].startswith("git -C ") and "archive" in lines[1]
    assert "tpu-vm scp" in lines[2] and "--worker=all" in lines[2]
    assert "tpu-vm ssh t1" in lines[3] and "pip\\ install" in lines[3] and "jax\\[tpu\\]" in lines[3]
    run = lines[4]
    assert "--worker=all" in run and "synthpre\\ train" in run and "models/t5_small.gin" in run
    assert "gs://b/run" in run and "tee" in run


def test_tpu_pod_requires_names():
    code, _, err = _dry("tpu_pod.sh", "--dry-run", "--", "synthpre", "train")
    assert code == 2 and "--tpu" in err


def test_slurm_dry_run_has_multihost_flags():
    code, out, err = _dry("gpu_slurm.sbatch", "--dry-run", "synthpre", "train", "--gin_file=x.gin")
    assert code == 0, err
    assert out.startswith("srun --nodes=2 --ntasks=2")
    for flag in ("--multiprocess_gpu", "--coordinator_address=", "--process_count=2", "--process_index=\\$SLURM_PROCID"):
        assert flag in out, flag


def test_local_dry_run():
    code, out, err = _dry("local.sh", "--dry-run", "--devices", "8", "synthpre", "train", "--gin_file=x.gin")
    assert code == 0, err
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in out
    assert out.strip().endswith(".venv/bin/synthpre train --gin_file=x.gin")
