"""Prefix language modelling: the MLM head predicts every token after a
prefix, each from its left context only.

Masking's special case where nothing is hidden from the input and the
attention mask does the hiding: the prefix attends to itself both ways,
every later position to the prefix and to the positions before it
(`model.attention_bias`). The selection is every position after the
prefix: the token at position j is predicted from the hidden state at j-1,
which sees tokens < j only. The encoder and head are BERT's (same
parameters), so a prefix-LM checkpoint fine-tunes as any other.

`prefix='random'` splits each example at a uniformly random point (key
from the seed and example id), `'segment'` after its first [SEP] (segment A
of `data.packing=pairs`). The causal LM (`causal_lm.py`) is prefix 0.

Logged: `loss` (cross-entropy of the predicted tokens, nats per token) and
`lm_accuracy`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax import flops
from mlm_jax import masking as masking_lib
from mlm_jax import model as model_lib
from mlm_jax import tokenizer as tok
from mlm_jax.errors import check as _check
from mlm_jax.objectives import base
from mlm_jax.objectives import mlm

USES_MASKING = False
PREFIXES = ("random", "segment")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Where the bidirectional prefix ends: 'random' (a uniformly random split
  # of each example's tokens) or 'segment' (after the first [SEP]: segment
  # A of data.packing=pairs).
  c.prefix = "random"
  return c


def check(config: ml_collections.ConfigDict) -> None:
  prefix = config.objective.prefix_lm.prefix
  _check(prefix in PREFIXES, "objective.prefix_lm.prefix",
         f"unknown prefix {prefix!r}", f"use one of {', '.join(PREFIXES)}")
  _check(prefix != "segment" or config.data.packing == "pairs",
         "objective.prefix_lm.prefix",
         "'segment' makes segment A the prefix, and packing "
         f"{config.data.packing!r} makes no segments",
         "set --config.data.packing=pairs, or use 'random'")


def build(config: ml_collections.ConfigDict, word_starts=None):
  del word_starts
  return PrefixLM(model_lib.EncoderConfig.from_config(config),
                  config.objective.prefix_lm.prefix)


def prefix_targets(tokens: jax.Array, prefix_lengths: jax.Array) -> base.Batch:
  """Slots s = 0..L-2 predict token s+1 from the hidden state at s.

  A slot counts (weight 1) when its token is real and not in the prefix
  (s + 1 >= max(prefix, 1): the first token, [CLS], has no left context).
  """
  rows, width = tokens.shape
  slot = jnp.arange(width - 1, dtype=jnp.int32)[None, :]
  labels = tokens[:, 1:]
  weights = ((labels != tok.PAD_ID)
             & (slot + 1 >= jnp.maximum(prefix_lengths, 1)[:, None]))
  return {"mask_positions": jnp.broadcast_to(slot, (rows, width - 1)),
          "labels": labels.astype(jnp.int32),
          "weights": weights.astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class PrefixLM(base.Objective):
  """Next-token prediction after a bidirectional prefix."""
  name = "prefix_lm"
  encoder: model_lib.EncoderConfig
  prefix: str = "random"  # 'random', 'segment' or 'none' (causal)

  @property
  def encoder_config(self) -> model_lib.EncoderConfig:
    return self.encoder

  @property
  def loss_weights(self) -> Mapping[str, float]:
    return {"lm_loss": 1.0}

  def module(self) -> nn.Module:
    return mlm.BertForMaskedLM(self.encoder, metric="lm")

  def prefix_lengths(self, batch: base.Batch, key: jax.Array) -> jax.Array:
    tokens = batch["tokens"]
    if self.prefix == "none":
      return jnp.zeros(tokens.shape[0], jnp.int32)
    if self.prefix == "segment":
      index = jnp.arange(tokens.shape[1], dtype=jnp.int32)
      return 1 + jnp.min(jnp.where(tokens == tok.SEP_ID, index,
                                   tokens.shape[1] - 1), axis=1)
    # Uniform over 1..n-1 for n real tokens: at least [CLS] is context and
    # at least one token is predicted.
    n = jnp.sum(tokens != tok.PAD_ID, axis=1)
    u = jax.vmap(jax.random.uniform)(
        masking_lib.keys_for(key, batch["example_id"]))
    return jnp.clip(1 + (u * (n - 1)).astype(jnp.int32), 1,
                    jnp.maximum(n - 1, 1)).astype(jnp.int32)

  def corrupt(self, batch, key, *, axis_name=None):
    del axis_name
    prefix = self.prefix_lengths(batch, key)
    return base.encoder_inputs(batch, prefix_lengths=prefix,
                               **prefix_targets(batch["tokens"], prefix))

  def loss_counts(self, corrupted):
    return {"lm_loss": jnp.sum(corrupted["weights"])}

  def matmuls(self, batch_size, seq_len):
    h = self.encoder.hidden_size
    return flops.encoder_matmuls(self.encoder, batch_size, seq_len) + (
        flops.mlm_head_matmuls(h, h, self.encoder.vocab_size,
                               batch_size * (seq_len - 1)))
