"""Next-sentence prediction (BERT): does B follow A, or come from elsewhere?

Half the pairs (`negative_rate`) get a B segment from another example of
the global batch (label 1): the partner's text from its first sentence on
(its [CLS] and [SEP] left out), as many tokens as the example's own B, so a
negative is as long as the positive it replaces. (Taking the partner's B
as it is would change the example's length, a shortcut that a model with
learned positions finds instead of the sentences' relation; BERT, too,
fills a random B up to the target length.) The partner is chosen from
the example ids, not from row or device positions: examples are ranked by
id over the whole global batch and each is paired with the one a random
number of ranks after it, so 1 device, pmap and jit over a mesh, on any
number of hosts, make the same negatives. Under pmap the batch is gathered
from all devices for this (B x L token ids: small).

Logged: `loss` (MLM + NSP), `mlm_loss`, `mlm_accuracy`, `nsp_loss` and
`nsp_accuracy` (pairs classified right; chance is 0.5).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax import tokenizer as tok
from mlm_jax.objectives import sentence_pairs

USES_MASKING = True
# `config.objective.nsp.negative_rate`.
default_config = sentence_pairs.default_config
check = sentence_pairs.check_pairs


def build(config: ml_collections.ConfigDict, word_starts=None) -> NextSentence:
  return sentence_pairs.build(NextSentence, config, word_starts)


def _global(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.all_gather(x, axis_name,
                                                        tiled=True)


def partners(example_ids: jax.Array, u: jax.Array) -> jax.Array:
  """For each of G examples, the row of another, from ids and uniforms.

  Examples are ranked by id; example i is paired with the example
  1 + floor(u_i * (G - 1)) ranks after it (cyclically): never itself,
  uniform over the others, and independent of the row order.
  """
  size = example_ids.shape[0]
  by_rank = jnp.argsort(example_ids)
  rank = jnp.argsort(by_rank)
  shift = 1 + jnp.minimum((u * (size - 1)).astype(jnp.int32), size - 2)
  return by_rank[(rank + shift) % size]


@dataclasses.dataclass(frozen=True)
class NextSentence(sentence_pairs.SentencePairObjective):
  name = "nsp"

  def make_pairs(self, batch, key, axis_name):
    tokens, ids = batch["tokens"], batch["example_id"]
    rows, width = tokens.shape
    every_token, every_id = _global(tokens, axis_name), _global(ids, axis_name)
    u = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(
        sentence_pairs.pair_keys(key, every_id))
    # Computed over the global batch on every device; each keeps its rows.
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * rows
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, offset, rows)
    every_b, every_len, every_pair = sentence_pairs.segment_bounds(every_token)
    partner = take(partners(every_id, u[:, 1]))
    b_start, length, is_pair = (take(x) for x in (every_b, every_len,
                                                   every_pair))
    negative = (is_pair & every_pair[partner] & (take(u[:, 0])
                                                 < self.negative_rate)
                & (every_id.shape[0] > 1))
    # A's part, then the partner's text tokens from its start, as many as
    # this example's B holds (fewer if the partner has fewer), then [SEP].
    p = jnp.arange(width, dtype=jnp.int32)[None, :]
    their = every_token[partner]
    text = ((their != tok.PAD_ID) & (their != tok.CLS_ID)
            & (their != tok.SEP_ID))
    # Positions of the partner's text tokens first, in order.
    order = jnp.argsort(~text, axis=1, stable=True)
    fill = jnp.minimum(length - b_start - 1, jnp.sum(text, axis=1))
    new_len = (b_start + fill + 1)[:, None]
    source = jnp.take_along_axis(
        order, jnp.clip(p - b_start[:, None], 0, width - 1), axis=1)
    theirs = jnp.take_along_axis(their, source, axis=1)
    built = jnp.where(p < b_start[:, None], tokens,
                      jnp.where(p < new_len, theirs, tok.PAD_ID))
    built = jnp.where(p == new_len - 1, tok.SEP_ID, built)
    new = jnp.where(negative[:, None], built, tokens)
    new_len = jnp.where(negative, new_len[:, 0], length)
    fields = sentence_pairs.pair_fields(new, b_start, new_len, batch)
    return fields, negative.astype(jnp.int32), is_pair.astype(jnp.float32)
