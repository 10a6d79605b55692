"""Losses and metrics of the pre-training objectives, as (sum, count) pairs.

Everything is a sum with its denominator carried next to it, so that
reductions over devices, hosts, micro-batches and logging intervals are
exact: the mean is taken once, on the host, when a number is reported.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
