"""Pure masking functions, run on device inside the jitted step.

Masking is part of the step, not of the data: every epoch sees fresh masks
and the data pipeline stays objective-agnostic. Shapes are static: each
sequence gets a fixed budget of `max_predictions` slots, so the MLM head can
gather the selected positions before the vocabulary projection and nothing
recompiles when a sequence is short.

Three selection strategies share the budget rule (round(rate * n) of the n
ordinary tokens, at least one, at most the budget) and the 80/10/10 rule
([MASK] / random ordinary token / unchanged):
  token       a uniformly random subset of tokens (BERT);
  whole_word  whole words, all pieces together (BERT's whole-word masking);
              a word that does not fit the remaining budget is skipped;
  span        contiguous spans with geometric lengths (SpanBERT), optionally
              of whole words, never crossing [SEP] or padding; the last span
              is cut at the budget; 80/10/10 is drawn once per span.
Word starts come from a per-vocabulary-id table (`Tokenizer.word_starts`).

Randomness is topology-invariant: the key of an example is derived from the
run seed and the example's global id (`example_keys`), never from a device
index, so the masks are the same on 1 or 64 devices, under pmap or jit, and
after a resume.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlm_jax import tokenizer as tok

# Distinct streams derived from the run seed, so that masks, dropout and
# evaluation masks never share random bits.
TRAIN_MASK_STREAM = 0
EVAL_MASK_STREAM = 1
DROPOUT_STREAM = 2

STRATEGIES = ("token", "whole_word", "span")


class Masked(NamedTuple):
  """Output of masking a batch of B sequences of length L.

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


def stream_key(seed: int, stream: int) -> jax.Array:
  """The key of one use of randomness (a *_STREAM) of the run `seed`."""
  return jax.random.fold_in(jax.random.key(seed), stream)


def keys_for(key: jax.Array, example_ids: jax.Array) -> jax.Array:
  """[B] keys, one per example: `key` folded with its global id."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)


def example_keys(seed: int, stream: int, example_ids: jax.Array) -> jax.Array:
  """One PRNG key per example from (seed, stream, global example id).

  Args:
    seed: the run seed.
    stream: which use of randomness (TRAIN_MASK_STREAM, EVAL_MASK_STREAM).
    example_ids: [B] uint32 global example ids.
  Returns:
    [B] array of typed PRNG keys.
  """
  return keys_for(stream_key(seed, stream), example_ids)


def _uniform(bits: jax.Array) -> jax.Array:
  return (bits >> 8).astype(jnp.float32) * (2.0 ** -24)  # in [0, 1)


def _random_ids(bits, vocab_size, num_special):
  # Modulo bias is at most vocab_size / 2**32: negligible.
  return (num_special + bits % jnp.uint32(vocab_size - num_special)).astype(
      jnp.int32)


def _budget(num_candidates, rate, max_predictions):
  """BERT's rule: round(rate * n), at least one when there is a candidate,
  capped by the budget so shapes stay static."""
  n = jnp.floor(rate * num_candidates + 0.5).astype(jnp.int32)
  return jnp.clip(n, jnp.minimum(num_candidates, 1), max_predictions)


def _replace(tokens, positions, used, u, random_ids, mask_prob, random_prob,
             mask_id) -> Masked:
  """Applies 80/10/10 at the used slots: `u` [P] uniform per slot."""
  length = tokens.shape[0]
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


def _draws(key, tokens, max_predictions, rate, vocab_size, num_special):
  """What token and whole-word masking draw for one sequence: a score per
  position, a uniform per slot (the 80/10/10 action), a replacement id per
  slot; and the candidates and how many of them to mask."""
  length = tokens.shape[0]
  # One draw of random bits serves all three uses: each threefry call adds
  # to XLA's compile time on CPU, the bits themselves cost nothing.
  bits = jax.random.bits(key, (length + 2 * max_predictions,), jnp.uint32)
  uniform = _uniform(bits)
  random_ids = _random_ids(bits[length + max_predictions:], vocab_size,
                           num_special)
  # Special and padding tokens are never candidates: all ids below
  # num_special are reserved ([PAD], [UNK], [CLS], [SEP], [MASK]).
  candidate = tokens >= num_special
  num_to_mask = _budget(jnp.sum(candidate), rate, max_predictions)
  return (uniform[:length], uniform[length:length + max_predictions],
          random_ids, candidate, num_to_mask)


def _mask_one(key, tokens, *, max_predictions, rate, mask_prob, random_prob,
              vocab_size, mask_id, num_special):
  """Masks one sequence; see `mask_tokens` for the arguments."""
  scores, u, random_ids, candidate, num_to_mask = _draws(
      key, tokens, max_predictions, rate, vocab_size, num_special)
  # A uniformly random subset: the top-k of iid uniform scores restricted to
  # candidates. Non-candidates score -1 and sort last.
  _, positions = jax.lax.top_k(jnp.where(candidate, scores, -1.0),
                               max_predictions)
  used = jnp.arange(max_predictions) < num_to_mask
  return _replace(tokens, positions, used, u, random_ids, mask_prob,
                  random_prob, mask_id)


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


# ----------------------------------------------------------- whole words ----


def _units(candidate, starts_here):
  """Unit (word or token) index of every candidate; others get L.

  A unit starts at a candidate whose piece starts a word (`starts_here`)
  or that follows a non-candidate, so no unit crosses [SEP] or padding.
  Returns (unit [L] int32, unit_start [L + 1] int32: the first position of
  each unit, L for units that do not exist).
  """
  length = candidate.shape[0]
  after_other = jnp.concatenate([jnp.ones(1, bool), ~candidate[:-1]])
  starts = candidate & (starts_here | after_other)
  unit = jnp.where(candidate, jnp.cumsum(starts) - 1, length).astype(jnp.int32)
  index = jnp.arange(length, dtype=jnp.int32)
  unit_start = jnp.full(length + 1, length, jnp.int32).at[
      jnp.where(candidate, unit, length + 1)].min(index, mode="drop")
  return unit, unit_start


def _selected_slots(tokens, selected, max_predictions):
  """The selected positions in order, in a [P] budget; (positions, used)."""
  length = tokens.shape[0]
  rank = jnp.where(selected, length - jnp.arange(length), 0)
  _, positions = jax.lax.top_k(rank, max_predictions)
  used = jnp.arange(max_predictions) < jnp.sum(selected)
  return positions, used


def _whole_word_one(key, tokens, word_starts, *, max_predictions, rate,
                    mask_prob, random_prob, vocab_size, mask_id, num_special):
  length = tokens.shape[0]
  scores, u, random_ids, candidate, num_to_mask = _draws(
      key, tokens, max_predictions, rate, vocab_size, num_special)
  word, word_start = _units(candidate, word_starts[tokens])
  sizes = jnp.zeros(length + 1, jnp.int32).at[word].add(1)[:length]
  # Words in a random order (each word's score: its first piece's), then
  # greedily: a word that fits the remaining budget is taken whole, one
  # that does not is skipped (BERT's create_pretraining_data).
  first = jnp.arange(length) == word_start[jnp.minimum(word, length)]
  priority = jnp.full(length + 1, -1.0).at[
      jnp.where(candidate & first, word, length)].set(scores)[:length]
  priority = jnp.where(sizes > 0, priority, -1.0)
  _, order = jax.lax.top_k(priority, length)

  def take(remaining, w):
    fits = (sizes[w] > 0) & (sizes[w] <= remaining)
    return remaining - jnp.where(fits, sizes[w], 0), fits

  _, taken = jax.lax.scan(take, num_to_mask, order)
  chosen = jnp.zeros(length + 1, bool).at[order].set(taken)
  selected = candidate & chosen[word]
  positions, used = _selected_slots(tokens, selected, max_predictions)
  return _replace(tokens, positions, used, u, random_ids, mask_prob,
                  random_prob, mask_id)


# ----------------------------------------------------------------- spans ----


def span_length_probabilities(p: float, max_length: int) -> np.ndarray:
  """SpanBERT's span lengths: geometric(p) renormalised over 1..max_length.

  Returns [max_length] probabilities of lengths 1..max_length (mean 3.8 at
  SpanBERT's p=0.2, max_length=10).
  """
  lengths = np.arange(1, max_length + 1)
  probs = p * (1 - p) ** (lengths - 1)
  return probs / probs.sum()


def span_lengths(u: jax.Array, p: float, max_length: int) -> jax.Array:
  """Inverse-CDF samples of `span_length_probabilities` from uniforms u."""
  q = 1.0 - p
  mass = 1.0 - q ** max_length
  length = jnp.ceil(jnp.log1p(-u * mass) / math.log(q))
  return jnp.clip(length, 1, max_length).astype(jnp.int32)


class SpanDraws(NamedTuple):
  """What span selection did in one sequence, draw by draw ([D] arrays).

  selected: [L] bool; span: [L] int32 draw of each selected token.
  start, length: where each draw's span starts and its drawn length (in
    units); added: the tokens it masked (0: dropped, or budget spent).
  """
  selected: jax.Array
  span: jax.Array
  start: jax.Array
  length: jax.Array
  added: jax.Array


def span_selection(u_anchor, u_length, tokens, word_starts, *,
                   num_to_mask, p, max_length,
                   num_special=tok.NUM_SPECIAL_TOKENS) -> SpanDraws:
  """SpanBERT's selection in one sequence, from [D] uniforms per draw.

  Each draw anchors at a uniformly random ordinary token (a draw whose
  anchor is already masked is dropped, as SpanBERT redraws), starts at its
  unit (the anchor's word with `word_starts`, else the token), covers a
  geometric number of units cut at the end of the run of ordinary tokens
  (so never across [SEP] or padding), and masks its unmasked tokens until
  `num_to_mask` is reached (the last span is cut there).
  """
  length = tokens.shape[0]
  candidate = tokens >= num_special
  num_candidates = jnp.sum(candidate)
  starts_here = (jnp.ones(length, bool) if word_starts is None
                 else word_starts[tokens])
  unit, unit_start = _units(candidate, starts_here)
  index = jnp.arange(length, dtype=jnp.int32)
  # The first non-candidate at or after each position: where its run ends.
  run_end = jax.lax.cummin(jnp.where(candidate, length, index), reverse=True)
  rank = jnp.minimum((u_anchor * num_candidates).astype(jnp.int32),
                     jnp.maximum(num_candidates - 1, 0))
  anchor = jnp.searchsorted(jnp.cumsum(candidate), rank + 1).astype(jnp.int32)
  anchor = jnp.minimum(anchor, length - 1)
  anchor_unit = unit[anchor]
  units = span_lengths(u_length, p, max_length)
  start = unit_start[jnp.minimum(anchor_unit, length)]
  stop = jnp.minimum(unit_start[jnp.minimum(anchor_unit + units, length)],
                     run_end[anchor])

  def add(carry, k):
    selected, span, count = carry
    new = ((index >= start[k]) & (index < stop[k]) & ~selected
           & ~selected[anchor[k]] & (num_candidates > 0))
    take = new & (count + jnp.cumsum(new) <= num_to_mask)
    added = jnp.sum(take)
    return (selected | take, jnp.where(take, k, span), count + added), added

  (selected, span, _), added = jax.lax.scan(
      add, (jnp.zeros(length, bool), jnp.zeros(length, jnp.int32),
            jnp.int32(0)), jnp.arange(u_anchor.shape[0]))
  return SpanDraws(selected, span, start, units, added)


def _span_one(key, tokens, word_starts, *, max_predictions, rate, mask_prob,
              random_prob, vocab_size, mask_id, num_special, p, max_length):
  draws = 2 * max_predictions  # ample: each kept draw adds >= 1 token
  bits = jax.random.bits(key, (3 * draws + max_predictions,), jnp.uint32)
  uniform = _uniform(bits)
  u_anchor, u_length, u_action = (uniform[i * draws:(i + 1) * draws]
                                  for i in range(3))
  random_ids = _random_ids(bits[3 * draws:], vocab_size, num_special)
  num_to_mask = _budget(jnp.sum(tokens >= num_special), rate,
                        max_predictions)
  out = span_selection(u_anchor, u_length, tokens, word_starts,
                       num_to_mask=num_to_mask, p=p, max_length=max_length,
                       num_special=num_special)
  positions, used = _selected_slots(tokens, out.selected, max_predictions)
  # 80/10/10 once per span: every slot of a span shares its draw.
  u = u_action[out.span[positions]]
  return _replace(tokens, positions, used, u, random_ids, mask_prob,
                  random_prob, mask_id)


# ------------------------------------------------------------ the config ----


def default_config() -> ml_collections.ConfigDict:
  """`config.masking`: how MLM-style objectives choose what to predict."""
  c = ml_collections.ConfigDict()
  # What is selected: 'token' (BERT), 'whole_word' (all pieces of a word
  # together) or 'span' (SpanBERT's contiguous spans).
  c.strategy = "token"
  # Fraction of ordinary tokens of a sequence selected for prediction.
  c.rate = 0.15
  # Fixed per-sequence budget of predictions; 0: ceil(rate * seq_len).
  c.max_predictions = 0
  # Of the selected tokens: share replaced by [MASK] ...
  c.mask_prob = 0.8
  # ... share replaced by a random ordinary token (the rest stay unchanged).
  c.random_prob = 0.1
  c.span = ml_collections.ConfigDict()
  # Span lengths: geometric with this p, renormalised over 1..max_length
  # (SpanBERT: 0.2 and 10, mean 3.8).
  c.span.p = 0.2
  c.span.max_length = 10
  # Count span lengths in whole words and start spans at word starts.
  c.span.whole_words = False
  return c


def max_predictions(config: ml_collections.ConfigDict) -> int:
  """The per-sequence mask budget: set explicitly, or ceil(rate * seq_len)."""
  if config.masking.max_predictions > 0:
    return int(config.masking.max_predictions)
  return int(math.ceil(config.masking.rate * config.data.seq_len))


def needs_word_starts(masking: ml_collections.ConfigDict) -> bool:
  return masking.strategy == "whole_word" or (
      masking.strategy == "span" and masking.span.whole_words)


@dataclasses.dataclass(frozen=True)
class Masking:
  """A masking strategy with its settings: `masking(keys, tokens)`.

  `word_starts` is the [vocab_size] bool table of pieces that start a word
  (needed by 'whole_word' and by 'span' with `span_whole_words`).
  """
  max_predictions: int
  vocab_size: int
  strategy: str = "token"
  rate: float = 0.15
  mask_prob: float = 0.8
  random_prob: float = 0.1
  span_p: float = 0.2
  span_max_length: int = 10
  span_whole_words: bool = False
  word_starts: np.ndarray | None = dataclasses.field(default=None,
                                                     compare=False)
  mask_id: int = tok.MASK_ID
  num_special: int = tok.NUM_SPECIAL_TOKENS

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  word_starts: np.ndarray | None = None) -> Masking:
    k = config.masking
    return cls(
        max_predictions=max_predictions(config),
        vocab_size=config.vocab_size, strategy=k.strategy, rate=k.rate,
        mask_prob=k.mask_prob, random_prob=k.random_prob, span_p=k.span.p,
        span_max_length=k.span.max_length,
        span_whole_words=k.span.whole_words, word_starts=word_starts)

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown masking strategy {self.strategy!r}; use one "
                       f"of {', '.join(STRATEGIES)}")
    words = self.strategy == "whole_word" or (
        self.strategy == "span" and self.span_whole_words)
    if words and self.word_starts is None:
      raise ValueError(f"masking strategy {self.strategy!r} with whole words "
                       "needs the tokenizer's word-start table")

  def __call__(self, keys: jax.Array, tokens: jax.Array) -> Masked:
    """Masks [B, L] `tokens` with [B] per-example `keys`."""
    common = dict(max_predictions=self.max_predictions, rate=self.rate,
                  mask_prob=self.mask_prob, random_prob=self.random_prob,
                  vocab_size=self.vocab_size, mask_id=self.mask_id,
                  num_special=self.num_special)
    if self.strategy == "token":
      return mask_tokens(keys, tokens, **common)
    starts = None
    if self.word_starts is not None:
      starts = jnp.asarray(np.asarray(self.word_starts, bool))
    if self.strategy == "whole_word":
      fn = lambda k, t: _whole_word_one(k, t, starts, **common)
    else:
      fn = lambda k, t: _span_one(
          k, t, starts if self.span_whole_words else None, p=self.span_p,
          max_length=self.span_max_length, **common)
    return jax.vmap(fn)(keys, tokens)
