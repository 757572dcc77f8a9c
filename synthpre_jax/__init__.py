"""synthpre-jax: synthetic pre-training research for T5 in JAX/Flax, T5X-compatible."""
__version__ = "0.1.0"
