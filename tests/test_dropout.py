"""Hashed dropout: rate, independence, scaling, gradients and sharding.

Statistical checks allow Z standard errors of their own sample size, so a
correct generator fails one with probability ~1e-6 per check, and the fixed
keys make every run the same.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy import stats

from mlm_jax import dropout

Z = 5.0  # standard errors a statistic may stray


def _close_to(observed: float, p: float, n: int) -> bool:
  """|observed - p| within Z standard errors of a mean of n Bernoulli(p)."""
  return abs(observed - p) <= Z * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 12, 128, 128), (8, 128, 768), (50,)])
def test_keep_rate_matches(rate, shape):
  keep = np.asarray(dropout.keep_mask(jax.random.key(1), shape, rate))
  assert keep.shape == shape
  assert _close_to(keep.mean(), 1 - rate, keep.size), keep.mean()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_neighbours_are_independent(axis):
  # Joint keep of an element and its neighbour along `axis` is p^2.
  p = 0.5
  keep = np.asarray(dropout.keep_mask(jax.random.key(2), (64, 96, 128),
                                      1 - p))
  a = np.take(keep, np.arange(keep.shape[axis] - 1), axis=axis)
  b = np.take(keep, np.arange(1, keep.shape[axis]), axis=axis)
  both = (a & b).mean()
  assert _close_to(both, p * p, a.size), (axis, both)


def test_keys_give_independent_masks():
  p = 0.5
  shape = (16, 64, 64)
  masks = [np.asarray(dropout.keep_mask(k, shape, 1 - p))
           for k in jax.random.split(jax.random.key(3), 4)]
  for i in range(4):
    for j in range(i + 1, 4):
      both = (masks[i] & masks[j]).mean()
      assert _close_to(both, p * p, masks[i].size), (i, j, both)


def test_rows_of_one_key_are_independent():
  # Rows share the element hash and differ by the row hash: row r and r+1
  # must not agree more often than chance.
  p = 0.5
  keep = np.asarray(dropout.keep_mask(jax.random.key(4), (256, 4096), 1 - p))
  agree = (keep[:-1] == keep[1:]).mean()
  assert _close_to(agree, 0.5, keep[1:].size), agree


@pytest.mark.parametrize("byte", [0, 1, 2, 3])
def test_bits_are_uniform(byte):
  # Each byte of the 32-bit output is uniform on 256 values (chi-square).
  bits = np.asarray(dropout.hash_bits(jax.random.key(5), (64, 4096)))
  counts = np.bincount(((bits >> (8 * byte)) & 0xFF).ravel(), minlength=256)
  statistic = ((counts - bits.size / 256) ** 2 / (bits.size / 256)).sum()
  assert statistic < stats.chi2.ppf(1 - 1e-6, 255), statistic


@pytest.mark.parametrize("raw_key", [(0, 0), (5, 5), (7, 0), (0, 123)])
def test_no_two_elements_repeat_more_than_chance(raw_key):
  # Equal bits at two elements (any pair, any key, degenerate keys too)
  # occur by chance only: n^2 / 2^33 expected pairs, Poisson.
  bits = np.asarray(dropout.hash_bits(jnp.asarray(raw_key, jnp.uint32),
                                      (256, 256))).ravel()
  expected = bits.size ** 2 / 2 ** 33
  repeats = bits.size - np.unique(bits).size
  assert repeats <= expected + Z * np.sqrt(expected) + 1, repeats


def test_same_key_same_mask_and_raw_keys_work():
  key = jax.random.key(6)
  a = dropout.hash_bits(key, (3, 5))
  np.testing.assert_array_equal(a, dropout.hash_bits(key, (3, 5)))
  np.testing.assert_array_equal(
      a, dropout.hash_bits(jax.random.key_data(key), (3, 5)))


def test_row_overflow_is_a_clear_error():
  with pytest.raises(ValueError, match="32-bit counter"):
    dropout.hash_bits(jax.random.key(0), (2, 2 ** 16, 2 ** 16))


def test_layer_is_unbiased_and_its_gradient_is_the_mask():
  rate = 0.3
  layer = dropout.HashDropout(rate)
  x = jnp.ones((32, 1024))
  rngs = {"dropout": jax.random.key(7)}
  y = layer.apply({}, x, False, rngs=rngs)
  kept = np.asarray(y != 0)
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - rate), rtol=1e-6)
  # E[y] = x: the mean of y is (kept share) / (1 - rate).
  assert _close_to(kept.mean(), 1 - rate, kept.size)
  grad = jax.grad(lambda x: layer.apply({}, x, False, rngs=rngs).sum())(x)
  np.testing.assert_allclose(grad, kept / (1 - rate), rtol=1e-6)
  # Deterministic, or rate 0: the identity.
  np.testing.assert_array_equal(layer.apply({}, x, True), x)
  np.testing.assert_array_equal(
      dropout.HashDropout(0.0).apply({}, x, False, rngs=rngs), x)


def test_two_calls_of_one_layer_draw_different_masks():
  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      drop = dropout.HashDropout(0.5)
      return drop(x, False), drop(x, False)
  a, b = Twice().apply({}, jnp.ones((16, 256)),
                       rngs={"dropout": jax.random.key(8)})
  both = np.mean((np.asarray(a) != 0) & (np.asarray(b) != 0))
  assert _close_to(both, 0.25, a.size), both


def test_mask_is_the_same_however_the_batch_is_sharded():
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  key = jax.random.key(9)
  shape = (jax.device_count() * 2, 8, 16)
  whole = dropout.hash_bits(key, shape)
  sharded = jax.jit(lambda k: dropout.hash_bits(k, shape),
                    out_shardings=NamedSharding(mesh, P("data")))(key)
  np.testing.assert_array_equal(sharded, whole)


def test_make_names_both_generators():
  assert isinstance(dropout.make("hash", 0.1), dropout.HashDropout)
  assert isinstance(dropout.make("threefry", 0.1), nn.Dropout)
  with pytest.raises(ValueError, match="'hash' or 'threefry'"):
    dropout.make("philox", 0.1)
