"""Masking: budget, special tokens, 80/10/10 statistics, key derivation.

Statistical checks use a tolerance of Z standard errors of a binomial
proportion, sqrt(p (1 - p) / n), with n the number of trials in the test:
the tolerance shrinks as the sample grows, and a wrong rate of a few percent
is caught.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax import masking
from mlm_jax import synthetic
from mlm_jax import tokenizer as tok

Z = 5.0  # two-sided false-alarm probability ~6e-7 per check
VOCAB = 1000


def _tolerance(p, n):
  return Z * math.sqrt(p * (1 - p) / n)


def _batch(rng, batch, length, pad_from=None):
  """[CLS] ordinary tokens [SEP] [PAD]..., with some [UNK] sprinkled in."""
  return synthetic.token_rows(rng, batch, length, VOCAB, pad_from)


@functools.lru_cache(maxsize=None)
def _masker(seed, **kw):
  return jax.jit(lambda ids, t: masking.mask_tokens(
      masking.example_keys(seed, masking.TRAIN_MASK_STREAM, ids), t,
      vocab_size=VOCAB, **kw))


def _mask(tokens, ids=None, seed=0, max_predictions=20, **kw):
  ids = np.arange(len(tokens), dtype=np.uint32) if ids is None else ids
  fn = _masker(seed, max_predictions=max_predictions, **kw)
  return jax.tree.map(np.asarray, fn(jnp.asarray(ids), jnp.asarray(tokens)))


def test_shapes_and_budget_rule():
  tokens = _batch(np.random.default_rng(0), 64, 128, pad_from=5)
  out = _mask(tokens, max_predictions=20)
  assert out.inputs.shape == (64, 128) and out.inputs.dtype == np.int32
  for a in (out.positions, out.labels, out.weights):
    assert a.shape == (64, 20)
  n = (tokens >= tok.NUM_SPECIAL_TOKENS).sum(1)
  expected = np.clip(np.floor(0.15 * n + 0.5), np.minimum(n, 1), 20)
  np.testing.assert_array_equal(out.weights.sum(1), expected)
  # Used slots come first, unused ones are zeroed.
  used = out.weights > 0
  assert np.all(np.diff(used.astype(int), axis=1) <= 0)
  assert np.all(out.positions[~used] == 0) and np.all(out.labels[~used] == 0)


def test_special_and_padding_never_selected_and_rest_untouched():
  tokens = _batch(np.random.default_rng(1), 256, 64, pad_from=3)
  out = _mask(tokens, max_predictions=12)
  used = out.weights > 0
  rows = np.nonzero(used)[0]
  pos = out.positions[used]
  assert np.all(tokens[rows, pos] >= tok.NUM_SPECIAL_TOKENS)
  np.testing.assert_array_equal(out.labels[used], tokens[rows, pos])
  for i in range(len(tokens)):  # distinct positions per sequence
    p = out.positions[i][used[i]]
    assert len(set(p.tolist())) == len(p)
  changed = np.zeros_like(tokens, bool)
  changed[rows, pos] = True
  np.testing.assert_array_equal(out.inputs[~changed], tokens[~changed])


def test_80_10_10_split_and_random_ids_are_ordinary():
  tokens = _batch(np.random.default_rng(2), 2048, 128)
  out = _mask(tokens)
  used = out.weights > 0
  new, old = out.inputs[np.nonzero(used)[0], out.positions[used]], out.labels[used]
  n = int(used.sum())
  assert n > 30_000
  is_mask = new == tok.MASK_ID
  is_random = (~is_mask) & (new != old)
  is_kept = new == old
  # A random draw equals the original with probability 1/(V - special).
  collide = 1.0 / (VOCAB - tok.NUM_SPECIAL_TOKENS)
  for frac, p in ((is_mask.mean(), 0.8), (is_random.mean(), 0.1 * (1 - collide)),
                  (is_kept.mean(), 0.1 + 0.1 * collide)):
    assert abs(frac - p) < _tolerance(p, n), (frac, p, n)
  assert np.all(new[is_random] >= tok.NUM_SPECIAL_TOKENS)
  assert np.all(new[is_random] < VOCAB)


def test_configurable_probabilities():
  tokens = _batch(np.random.default_rng(3), 1024, 64)
  out = _mask(tokens, max_predictions=10, mask_prob=0.5, random_prob=0.0)
  used = out.weights > 0
  new = out.inputs[np.nonzero(used)[0], out.positions[used]]
  n = int(used.sum())
  frac = float(np.mean(new == tok.MASK_ID))
  assert abs(frac - 0.5) < _tolerance(0.5, n)
  assert np.all((new == tok.MASK_ID) | (new == out.labels[used]))


def test_selection_is_uniform_over_positions():
  # All 62 inner positions are candidates; each must be selected with
  # probability k / 62, independently of where it sits.
  tokens = _batch(np.random.default_rng(4), 4096, 64)
  tokens[tokens == tok.UNK_ID] = 7
  out = _mask(tokens, max_predictions=10)
  k = int(out.weights[0].sum())
  counts = np.zeros(64)
  np.add.at(counts, out.positions[out.weights > 0], 1)
  p = k / 62
  freq = counts[1:63] / len(tokens)
  assert np.all(np.abs(freq - p) < _tolerance(p, len(tokens))), freq
  assert counts[0] == 0 and counts[63] == 0


def test_no_candidates_means_no_predictions():
  tokens = np.zeros((3, 16), np.int32)
  tokens[:, 0], tokens[:, 1] = tok.CLS_ID, tok.SEP_ID
  out = _mask(tokens, max_predictions=4)
  assert out.weights.sum() == 0
  np.testing.assert_array_equal(out.inputs, tokens)


def test_budget_caps_high_rates():
  tokens = _batch(np.random.default_rng(5), 8, 64)
  out = _mask(tokens, max_predictions=5, rate=0.9)
  np.testing.assert_array_equal(out.weights.sum(1), 5)


def test_masks_depend_on_example_id_not_on_batch_layout():
  tokens = _batch(np.random.default_rng(6), 16, 64)
  ids = np.arange(100, 116, dtype=np.uint32)
  whole = _mask(tokens, ids)
  halves = [_mask(tokens[s], ids[s]) for s in (slice(0, 8), slice(8, 16))]
  for field in masking.Masked._fields:
    np.testing.assert_array_equal(
        getattr(whole, field),
        np.concatenate([getattr(h, field) for h in halves]))
  # A permuted batch gets the permuted masks: the key follows the example.
  perm = np.random.default_rng(0).permutation(16)
  shuffled = _mask(tokens[perm], ids[perm])
  np.testing.assert_array_equal(shuffled.inputs, whole.inputs[perm])
  # Another id or another seed gives other masks.
  assert not np.array_equal(_mask(tokens, ids + 16).positions, whole.positions)
  assert not np.array_equal(_mask(tokens, ids, seed=1).positions,
                            whole.positions)


def test_streams_are_independent():
  ids = jnp.arange(4, dtype=jnp.uint32)
  a = masking.example_keys(0, masking.TRAIN_MASK_STREAM, ids)
  b = masking.example_keys(0, masking.EVAL_MASK_STREAM, ids)
  assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_jit_compiles_once_for_any_content():
  fn = jax.jit(lambda k, t: masking.mask_tokens(k, t, max_predictions=8,
                                                vocab_size=VOCAB))
  keys = masking.example_keys(0, 0, jnp.arange(4, dtype=jnp.uint32))
  rng = np.random.default_rng(7)
  for pad_from in (2, 20, 40):
    fn(keys, jnp.asarray(_batch(rng, 4, 48, pad_from=pad_from)))
  assert fn._cache_size() == 1
