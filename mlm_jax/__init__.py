"""mlm_jax: masked-language-model pre-training of Transformer encoders in JAX."""

__version__ = "0.1.0"
