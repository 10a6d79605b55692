"""Losses and metrics of the pre-training objectives, as (sum, count) pairs.

Everything is a sum with its denominator carried next to it, so that
reductions over devices, hosts, micro-batches and logging intervals are
exact: the mean is taken once, on the host, when a number is reported.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mlm_metrics(logits: jax.Array, labels: jax.Array,
                weights: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy and accuracy summed over the selected positions only.

  Args:
    logits: [B, P, V] logits at the selected positions.
    labels: [B, P] int original token ids.
    weights: [B, P] float, 1 for a real prediction and 0 for an unused slot.
  Returns:
    dict of float32 scalars: `mlm_loss_sum` (sum of -log p(label) * weight),
    `mlm_correct_sum` (sum of [argmax == label] * weight) and `mlm_count`
    (sum of weights, the denominator of both).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  nll = log_z - label_logit
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return {
      "mlm_loss_sum": jnp.sum(nll * weights),
      "mlm_correct_sum": jnp.sum(correct * weights),
      "mlm_count": jnp.sum(weights),
  }


# The softmax is shifted by max(h . t) + max(bias), an upper bound of the
# row's largest logit, when the bias spans at most this much (always, in
# practice): the bound is exact up to the bias spread, so exp() cannot
# overflow and the largest term is at least exp(-spread), and the bias add
# then fuses into the exponential instead of being written out as a
# separate [N, V] array for the max. Past it, the exact row max.
_MAX_BIAS_SPREAD = 30.0


def _head_forward(h, table, bias, labels, weights):
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
  return sums, (h, table, unnormalised, total, labels, w)


def _head_backward(residuals, cotangents):
  h, table, unnormalised, total, labels, w = residuals
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
  return (d_h.astype(h.dtype), d_table.astype(table.dtype), d_bias,
          np.zeros(labels.shape, jax.dtypes.float0), jnp.zeros_like(w))


@jax.custom_vjp
def _head_sums(h, table, bias, labels, weights):
  return _head_forward(h, table, bias, labels, weights)[0]


_head_sums.defvjp(_head_forward, _head_backward)


def mlm_head_metrics(h: jax.Array, table: jax.Array, bias: jax.Array,
                     labels: jax.Array, weights: jax.Array
                     ) -> dict[str, jax.Array]:
  """`mlm_metrics` of the tied vocabulary projection, fused with its loss.

  Equal to `mlm_metrics(h @ table.T + bias, labels, weights)` (accuracy
  counts a tie for the top logit as correct), with a hand-written backward
  pass: the softmax gradient is formed in one elementwise pass from the
  exponentials saved by the forward pass, and no [N, V] array is transposed,
  scattered into or reduced along its long axis. The vocabulary projection
  is the dominant cost of small encoders.

  Args:
    h: [..., H] transformed hidden states at the selected positions.
    table: [V, H] the (tied) word-embedding matrix, same dtype as `h`.
    bias: [V] float32 output bias.
    labels: [...] int original token ids; weights: [...] float.
  Returns:
    dict of float32 scalars `mlm_loss_sum`, `mlm_correct_sum`, `mlm_count`.
  """
  width = h.shape[-1]
  loss, correct, count = _head_sums(
      h.reshape(-1, width), table, bias.astype(jnp.float32),
      labels.reshape(-1).astype(jnp.int32), weights.reshape(-1))
  return {"mlm_loss_sum": loss, "mlm_correct_sum": correct,
          "mlm_count": count}
