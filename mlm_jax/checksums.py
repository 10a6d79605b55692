"""Per-array checksums and finiteness of a state, computed on device.

A checkpoint records a checksum of every array it holds; a restore computes
them again and compares, so bytes damaged on disk (a flipped bit, a block of
garbage of the same size) are caught before training on them.

The checksum of an array is two 32-bit words over its raw bits taken as
unsigned integers w_i: sum(w_i) and sum((i + 1) * w_i), both modulo 2**32
(Fletcher-like: the second catches swapped words). Integer sums modulo 2**32
are exact and order-free, so the value does not depend on how the array is
sharded: a checkpoint written on 4 devices checks out on 1. One jitted
program computes every leaf's checksum and finiteness, then one host fetch.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _words(x: jax.Array) -> jax.Array:
  """The array's raw bits as a flat uint32 vector (one word per element for
  1-, 2- and 4-byte dtypes; two per element for 8-byte ones)."""
  x = jnp.ravel(x)
  size = jnp.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 8:
    return jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  position = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * position, dtype=jnp.uint32)])


@jax.jit
def _summaries(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """([n, 2] uint32 checksums, [n] bool all-finite) of the leaves."""
  sums = jnp.stack([_checksum(x) for x in leaves])
  finite = jnp.stack([
      jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
      else jnp.asarray(True) for x in leaves])
  return sums, finite


def _numeric_leaves(state: PyTree) -> list[tuple[str, jax.Array]]:
  """(path, leaf) of the array leaves a checksum covers (not PRNG keys)."""
  return [(jax.tree_util.keystr(p), x)
          for p, x in jax.tree_util.tree_leaves_with_path(state)
          if hasattr(x, "dtype")
          and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]


def summarize(state: PyTree) -> tuple[dict[str, list], list[str]]:
  """Checksums of every array of `state`, and the arrays holding NaN/Inf.

  Returns ({path: [sum, weighted sum, dtype name]}, [paths not finite]),
  the dict JSON-serialisable as a checkpoint item.
  """
  leaves = _numeric_leaves(state)
  if not leaves:
    return {}, []
  sums, finite = jax.device_get(_summaries([x for _, x in leaves]))
  sums, finite = np.asarray(sums), np.asarray(finite)
  checksums = {path: [int(s[0]), int(s[1]), str(x.dtype)]
               for (path, x), s in zip(leaves, sums)}
  return checksums, [path for (path, _), ok in zip(leaves, finite) if not ok]


def differences(recorded: dict[str, list], restored: dict[str, list]
                ) -> list[str]:
  """Paths whose restored checksum differs from the recorded one.

  Arrays restored into another dtype than they were saved in (a config
  change, refused or accepted elsewhere) are not compared.
  """
  return [path for path, want in recorded.items()
          if path in restored and restored[path][2] == want[2]
          and restored[path][:2] != want[:2]]
