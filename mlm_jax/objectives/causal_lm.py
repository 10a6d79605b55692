"""Causal language modelling: every token predicted from the tokens before
it, with a causal attention mask: `prefix_lm` with an empty prefix.

Logged: `loss` (next-token cross-entropy, nats per token) and
`lm_accuracy`.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from mlm_jax import model as model_lib
from mlm_jax.objectives import prefix_lm

USES_MASKING = False


def default_config() -> ml_collections.ConfigDict:
  """`config.objective.causal_lm`: no settings."""
  return ml_collections.ConfigDict()


def check(config: ml_collections.ConfigDict) -> None:
  del config  # nothing to check


@dataclasses.dataclass(frozen=True)
class CausalLM(prefix_lm.PrefixLM):
  name = "causal_lm"
  prefix: str = "none"


def build(config: ml_collections.ConfigDict, word_starts=None) -> CausalLM:
  del word_starts
  return CausalLM(model_lib.EncoderConfig.from_config(config))
