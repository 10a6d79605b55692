"""Sentence-order prediction (ALBERT): were A and B swapped?

Half the pairs (`negative_rate`) become [CLS] B [SEP] A [SEP], with the
segment ids following the new order; the classifier on the pooled [CLS]
state tells them from pairs in their document's order. Harder than NSP's
topic cue: both orders share a topic.

Logged: `loss` (MLM + SOP), `mlm_loss`, `mlm_accuracy`, `sop_loss` and
`sop_accuracy` (pairs classified right; chance is 0.5).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax.objectives import sentence_pairs

USES_MASKING = True
# `config.objective.sop.negative_rate`.
default_config = sentence_pairs.default_config
check = sentence_pairs.check_pairs


def build(config: ml_collections.ConfigDict, word_starts=None) -> SentenceOrder:
  return sentence_pairs.build(SentenceOrder, config, word_starts)


def swap_segments(tokens: jax.Array, b_start: jax.Array,
                  length: jax.Array) -> jax.Array:
  """[B, L] pairs [CLS] A [SEP] B [SEP] rebuilt as [CLS] B [SEP] A [SEP]."""
  p = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
  b_start, length = b_start[:, None], length[:, None]
  len_a, len_b = b_start - 2, length - b_start - 1
  source = jnp.where(
      p == 0, 0, jnp.where(
          p <= len_b, b_start + p - 1, jnp.where(
              p == len_b + 1, b_start - 1, jnp.where(
                  p <= len_b + 1 + len_a, p - len_b - 1, p))))
  return jnp.take_along_axis(tokens, source, axis=1)


@dataclasses.dataclass(frozen=True)
class SentenceOrder(sentence_pairs.SentencePairObjective):
  name = "sop"

  def make_pairs(self, batch, key, axis_name):
    del axis_name  # each example is its own negative
    tokens = batch["tokens"]
    b_start, length, is_pair = sentence_pairs.segment_bounds(tokens)
    u = jax.vmap(jax.random.uniform)(
        sentence_pairs.pair_keys(key, batch["example_id"]))
    swap = is_pair & (u < self.negative_rate)
    new = jnp.where(swap[:, None], swap_segments(tokens, b_start, length),
                    tokens)
    new_b_start = jnp.where(swap, length - b_start + 1, b_start)
    fields = sentence_pairs.pair_fields(new, new_b_start, length, batch)
    return fields, swap.astype(jnp.int32), is_pair.astype(jnp.float32)
