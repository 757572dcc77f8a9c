"""Packaging for synthpre-jax.

Ranges are chosen to resolve on Python 3.11 (jax 0.10.x) and 3.12 (jax 0.11+).
TensorFlow is pulled in by seqio/tensorflow-datasets; tensorboard is declared
explicitly because TF 2.21 no longer depends on it.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax[cpu]>=0.10,<0.14",
    "flax>=0.10.4",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "seqio>=0.0.19",
    "tensorflow-datasets>=4.9",
    "tensorflow>=2.16",
    "gin-config>=0.5",
    "absl-py>=2.1",
    "tensorboard>=2.16",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "safetensors>=0.4",
    "msgpack>=1.0",
    "tensorstore>=0.1.60",
    "pyyaml>=6.0",
    "matplotlib>=3.8",
    "rouge-score>=0.1.2",
    "sacrebleu>=2.4",
    "rdkit>=2024.3",
    # TFDS's download path imports it without declaring it (prepare-data for squad/cnndm).
    "importlib_resources>=6.0",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.6",  # --no-loadscope-reorder
    "hypothesis>=6.100",
    # HF transformers' PyTorch T5 is the numerical oracle. torch 2.13.0 is
    # pinned because its CPU wheel is the one available offline here; any
    # other version pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=4.44",
]

setup(
    name="synthpre-jax",
    version="0.1.0",
    description="Synthetic pre-training research for T5 in JAX/Flax (T5X-compatible).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["synthpre_jax", "synthpre_jax.*", "tasks", "tasks.*"]),
    package_data={"synthpre_jax": ["data/assets/*.model", "data/assets/*.json", "native/*.c"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["synthpre=synthpre_jax.cli:main"]},
)
