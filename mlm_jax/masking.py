"""Pure masking functions, run on device inside the jitted step.

Masking is part of the step, not of the data: every epoch sees fresh masks
and the data pipeline stays objective-agnostic. Shapes are static: each
sequence gets a fixed budget of `max_predictions` slots, so the MLM head can
gather the selected positions before the vocabulary projection and nothing
recompiles when a sequence is short.

Randomness is topology-invariant: the key of an example is derived from the
run seed and the example's global id (`example_keys`), never from a device
index, so the masks are the same on 1 or 64 devices, under pmap or jit, and
after a resume.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mlm_jax import tokenizer as tok

# Distinct streams derived from the run seed, so that masks, dropout and
# evaluation masks never share random bits.
TRAIN_MASK_STREAM = 0
EVAL_MASK_STREAM = 1
DROPOUT_STREAM = 2


class Masked(NamedTuple):
  """Output of `mask_tokens` for a batch of B sequences of length L.

  inputs: [B, L] int32, the corrupted token ids fed to the encoder.
  positions: [B, P] int32, the selected positions (P = max_predictions);
    unused budget slots point at position 0 and have weight 0.
  labels: [B, P] int32, the original ids at `positions`.
  weights: [B, P] float32, 1 for a real prediction, 0 for an unused slot.
  """
  inputs: jax.Array
  positions: jax.Array
  labels: jax.Array
  weights: jax.Array


def example_keys(seed: int, stream: int, example_ids: jax.Array) -> jax.Array:
  """One PRNG key per example from (seed, stream, global example id).

  Args:
    seed: the run seed.
    stream: which use of randomness (TRAIN_MASK_STREAM, EVAL_MASK_STREAM).
    example_ids: [B] uint32 global example ids.
  Returns:
    [B] array of typed PRNG keys.
  """
  base = jax.random.fold_in(jax.random.key(seed), stream)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids)


def _mask_one(key, tokens, *, max_predictions, rate, mask_prob, random_prob,
              vocab_size, mask_id, num_special):
  """Masks one sequence; see `mask_tokens` for the arguments."""
  length = tokens.shape[0]
  # One draw of random bits serves all three uses (selection scores, the
  # 80/10/10 action, the replacement id): each threefry call costs about
  # 0.7 s of XLA compile time on CPU, the bits themselves nothing.
  bits = jax.random.bits(key, (length + 2 * max_predictions,), jnp.uint32)
  uniform = (bits >> 8).astype(jnp.float32) * (2.0 ** -24)  # in [0, 1)
  scores = uniform[:length]
  u = uniform[length:length + max_predictions]
  # Modulo bias is at most vocab_size / 2**32: negligible.
  random_ids = (num_special + bits[length + max_predictions:]
                % jnp.uint32(vocab_size - num_special)).astype(jnp.int32)

  # Special and padding tokens are never candidates: all ids below
  # num_special are reserved ([PAD], [UNK], [CLS], [SEP], [MASK]).
  candidate = tokens >= num_special
  num_candidates = jnp.sum(candidate)
  # BERT's rule: round(rate * n), at least one when there is a candidate,
  # capped by the budget so shapes stay static.
  num_to_mask = jnp.floor(rate * num_candidates + 0.5).astype(jnp.int32)
  num_to_mask = jnp.clip(num_to_mask, jnp.minimum(num_candidates, 1),
                         max_predictions)
  # A uniformly random subset: the top-k of iid uniform scores restricted to
  # candidates. Non-candidates score -1 and sort last.
  _, positions = jax.lax.top_k(jnp.where(candidate, scores, -1.0),
                               max_predictions)
  slot = jnp.arange(max_predictions)
  used = slot < num_to_mask
  positions = jnp.where(used, positions, 0).astype(jnp.int32)
  labels = jnp.where(used, tokens[positions], 0).astype(jnp.int32)
  replacement = jnp.where(u < mask_prob, mask_id,
                          jnp.where(u < mask_prob + random_prob, random_ids,
                                    labels))
  # Unused slots scatter out of range and are dropped, so they can never
  # collide with a real position (which are distinct by construction).
  target = jnp.where(used, positions, length)
  inputs = tokens.at[target].set(replacement.astype(tokens.dtype), mode="drop")
  return Masked(inputs, positions, labels, used.astype(jnp.float32))


def mask_tokens(keys: jax.Array, tokens: jax.Array, *, max_predictions: int,
                vocab_size: int, rate: float = 0.15, mask_prob: float = 0.8,
                random_prob: float = 0.1, mask_id: int = tok.MASK_ID,
                num_special: int = tok.NUM_SPECIAL_TOKENS) -> Masked:
  """BERT masking of a batch: select, then 80% [MASK] / 10% random / 10% keep.

  Args:
    keys: [B] PRNG keys, one per example (see `example_keys`).
    tokens: [B, L] int32 token ids; ids below `num_special` are never
      selected.
    max_predictions: static budget P of selected positions per sequence.
    vocab_size: random replacements are drawn from [num_special, vocab_size).
    rate: fraction of candidate tokens selected (rounded, at least one,
      at most `max_predictions`).
    mask_prob: probability that a selected token becomes [MASK].
    random_prob: probability that it becomes a random ordinary token; it
      stays unchanged with probability 1 - mask_prob - random_prob.
    mask_id: id of [MASK].
    num_special: number of reserved ids at the start of the vocabulary.
  Returns:
    `Masked` with inputs [B, L], positions/labels/weights [B, P].
  """
  fn = lambda k, t: _mask_one(
      k, t, max_predictions=max_predictions, rate=rate, mask_prob=mask_prob,
      random_prob=random_prob, vocab_size=vocab_size, mask_id=mask_id,
      num_special=num_special)
  return jax.vmap(fn)(keys, tokens)
