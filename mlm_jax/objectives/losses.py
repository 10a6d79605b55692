"""Losses as (sum, count) pairs, and the fused vocabulary head.

Everything is a sum with its denominator carried next to it, so that
reductions over devices, hosts, micro-batches and logging intervals are
exact: the mean is taken once, on the host, when a number is reported.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Sums(NamedTuple):
  """float32 scalars over the weighted predictions of a batch."""
  loss: jax.Array  # sum of -log p(label) * weight
  correct: jax.Array  # sum of [prediction == label] * weight
  count: jax.Array  # sum of weights: the denominator of both


def pair(total: jax.Array, count: jax.Array) -> jax.Array:
  """A metric as the [2] float32 array (sum, count); its mean is sum/count."""
  return jnp.stack([jnp.asarray(total, jnp.float32),
                    jnp.asarray(count, jnp.float32)])


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          weights: jax.Array) -> Sums:
  """Cross-entropy and accuracy summed over the weighted positions.

  Args:
    logits: [..., C] logits (any float dtype; computed in float32).
    labels: [...] int labels in [0, C).
    weights: [...] float, 1 for a real prediction and 0 for an unused slot.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  nll = log_z - label_logit
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return Sums(jnp.sum(nll * weights), jnp.sum(correct * weights),
              jnp.sum(weights))


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array,
                          weights: jax.Array) -> Sums:
  """Binary cross-entropy of [...] logits against 0/1 labels, as sums.

  A prediction is logit > 0; `correct` counts those equal to the label.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  # -log sigmoid(x) for label 1, -log(1 - sigmoid(x)) for 0, stably.
  nll = jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(
      jnp.exp(-jnp.abs(logits)))
  correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return Sums(jnp.sum(nll * weights), jnp.sum(correct * weights),
              jnp.sum(weights))


# The softmax is shifted by max(h . t) + max(bias), an upper bound of the
# row's largest logit, when the bias spans at most this much (always, in
# practice): the bound is exact up to the bias spread, so exp() cannot
# overflow and the largest term is at least exp(-spread), and the bias add
# then fuses into the exponential instead of being written out as a
# separate [N, V] array for the max. Past it, the exact row max.
_MAX_BIAS_SPREAD = 30.0


def _head_forward(h, table, bias, labels, weights, exp_noise):
  scores = jnp.einsum("nh,vh->nv", h, table,
                      preferred_element_type=jnp.float32)
  high = jnp.max(bias)
  top = jax.lax.cond(
      high - jnp.min(bias) <= _MAX_BIAS_SPREAD,
      lambda: jnp.max(scores, axis=-1) + high,
      lambda: jnp.max(scores + bias, axis=-1))
  unnormalised = jnp.exp(scores + bias - top[:, None])
  total = jnp.sum(unnormalised, axis=-1)
  label_logit = (jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
                 + bias[labels])
  nll = top + jnp.log(total) - label_logit
  w = weights.astype(jnp.float32)
  # argmax == label, ties counted as correct, compared on one array (the
  # shift may be above the row max, so not against `top`).
  label_term = jnp.take_along_axis(unnormalised, labels[:, None], axis=-1)
  correct = label_term[:, 0] >= jnp.max(unnormalised, axis=-1)
  sums = (jnp.sum(nll * w), jnp.sum(correct.astype(jnp.float32) * w),
          jnp.sum(w))
  if exp_noise is not None:
    # The exponential race: argmax p_v / E_v with E_v ~ Exp(1) iid is a
    # sample of p (the Gumbel-max trick with one log per element).
    sums += (jnp.argmax(unnormalised / exp_noise, axis=-1).astype(jnp.int32),)
  return sums, (h, table, unnormalised, total, labels, w, exp_noise)


def _head_backward(residuals, cotangents):
  h, table, unnormalised, total, labels, w, exp_noise = residuals
  g = cotangents[0]  # only the loss sum is differentiated
  # d loss / d logits = (softmax - onehot(label)) * weight, in one pass.
  onehot = labels[:, None] == jnp.arange(unnormalised.shape[1])[None, :]
  d = (unnormalised / total[:, None] - onehot) * (w * g)[:, None]
  d_in = d.astype(h.dtype)
  d_h = jnp.dot(d_in, table, preferred_element_type=jnp.float32)
  d_table = jnp.einsum("nv,nh->vh", d_in, h,
                       preferred_element_type=jnp.float32)
  # The bias gradient as a matmul: XLA:CPU's column reduction of an [N, V]
  # array is several times slower than this dot.
  d_bias = jnp.dot(jnp.ones(d.shape[0], d.dtype), d)
  d_noise = None if exp_noise is None else jnp.zeros_like(exp_noise)
  return (d_h.astype(h.dtype), d_table.astype(table.dtype), d_bias,
          np.zeros(labels.shape, jax.dtypes.float0), jnp.zeros_like(w),
          d_noise)


@jax.custom_vjp
def _head_sums(h, table, bias, labels, weights, exp_noise):
  return _head_forward(h, table, bias, labels, weights, exp_noise)[0]


_head_sums.defvjp(_head_forward, _head_backward)


def fused_head(h: jax.Array, table: jax.Array, bias: jax.Array,
               labels: jax.Array, weights: jax.Array,
               exp_noise: jax.Array | None = None
               ) -> tuple[Sums, jax.Array | None]:
  """`softmax_cross_entropy` of the tied vocabulary projection, fused.

  Equal to `softmax_cross_entropy(h @ table.T + bias, labels, weights)`
  (accuracy counts a tie for the top logit as correct), with a hand-written
  backward pass: the softmax gradient is formed in one elementwise pass from
  the exponentials saved by the forward pass, and no [N, V] array is
  transposed, scattered into or reduced along its long axis. The vocabulary
  projection is the dominant cost of small encoders.

  Args:
    h: [..., H] transformed hidden states at the selected positions.
    table: [V, H] the (tied) word-embedding matrix, same dtype as `h`.
    bias: [V] float32 output bias.
    labels: [...] int original token ids; weights: [...] float.
    exp_noise: optional [..., V] float32 Exp(1) noise: given, a token is
      also sampled from each row's softmax (no gradient flows through it).
  Returns:
    (the sums, [...] int32 samples or None).
  """
  width = h.shape[-1]
  lead = labels.shape
  noise = (None if exp_noise is None
           else exp_noise.reshape(-1, exp_noise.shape[-1]))
  out = _head_sums(h.reshape(-1, width), table, bias.astype(jnp.float32),
                   labels.reshape(-1).astype(jnp.int32), weights.reshape(-1),
                   noise)
  samples = None if exp_noise is None else out[3].reshape(lead)
  return Sums(*out[:3]), samples
