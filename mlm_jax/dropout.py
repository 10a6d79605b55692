"""Dropout whose keep-mask comes from a counter hash instead of threefry.

Flax's `nn.Dropout` draws one threefry-2x32 output (20 rounds) per element
through `jax.random.bernoulli`. On CPU that is the largest elementwise cost
of a BERT step. Here threefry still makes the
key of each call (one per layer, step and device, as `make_rng` splits it),
and each element's bits are a cheap integer hash of its index under that key:
`lowbias32` (C. Wellons' hash-prospector, an avalanching 32-bit bijection),
applied as H(H(i + k0) ^ H(H(row + k1) ^ k0)) for the element's flat index i
within its row of the leading axis. Far cheaper than `bernoulli` on CPU (the
benchmark times both: `--config.model.dropout_rng=threefry`, docs/benchmark/),
only 32-bit integer multiplies, xors and shifts (native on TPU and GPU), and
the mask is the same however the batch is sharded over a mesh.

The drop probability is `rate` rounded to a multiple of 2^-32. Statistical
properties (rate, independence of neighbours, rows, keys) are tested.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_TWO32 = 2 ** 32


def _lowbias32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


# Jitted with the shape static: every layer of a model draws the same shapes,
# so one trace serves them all (cheaper lowering of unrolled models).
@functools.partial(jax.jit, static_argnames=("shape",))
def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 bits of `shape`, a hash of each element's index under `key`.

  Args:
    key: a typed or raw uint32 threefry key.
    shape: at least 1-D; the elements of one row (all axes but the first)
      must number fewer than 2^32.
  Returns:
    uint32 array of `shape`.
  """
  shape = tuple(shape)
  if len(shape) == 0:
    shape_2d = (1, 1)
  elif len(shape) == 1:
    shape_2d = (1, shape[0])
  else:
    shape_2d = (shape[0], int(np.prod(shape[1:])))
  if shape_2d[1] >= _TWO32:
    raise ValueError(f"dropout on {shape}: rows of {shape_2d[1]} elements "
                     "overflow the 32-bit counter; split the array")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  k0, k1 = key[..., 0].astype(jnp.uint32), key[..., 1].astype(jnp.uint32)
  index = jax.lax.broadcasted_iota(jnp.uint32, shape_2d, 1)
  row = jax.lax.broadcasted_iota(jnp.uint32, (shape_2d[0], 1), 0)
  # The row's term hashes twice, so no swap of (row, index) maps the two
  # terms onto each other (one hash of each would make the bits symmetric).
  row_term = _lowbias32(_lowbias32(row + k1) ^ k0)
  bits = _lowbias32(_lowbias32(index + k0) ^ row_term)
  return bits.reshape(shape)


def keep_mask(key: jax.Array, shape: tuple[int, ...],
              rate: float) -> jax.Array:
  """Boolean mask, True (keep) with probability 1 - rate (to 2^-32)."""
  threshold = min(int(round(rate * _TWO32)), _TWO32 - 1)
  return hash_bits(key, shape) >= jnp.uint32(threshold)


class HashDropout(nn.Module):
  """`nn.Dropout` with hashed keep-masks; same call and the same rng stream.

  Attributes:
    rate: probability of zeroing an element.
    rng_collection: the rng collection the per-call key comes from.
  """
  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = keep_mask(self.make_rng(self.rng_collection), x.shape, self.rate)
    scale = jnp.asarray(1.0 / (1.0 - self.rate), x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros_like(x))


def make(kind: str, rate: float) -> nn.Module:
  """A dropout layer: 'hash' (HashDropout) or 'threefry' (flax's)."""
  if kind == "hash":
    return HashDropout(rate)
  if kind == "threefry":
    return nn.Dropout(rate)
  raise ValueError(f"unknown dropout rng {kind!r}; use 'hash' or 'threefry'")
