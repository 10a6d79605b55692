"""transformers' Flax MLM example (run_mlm_flax.py): what its peers share.

Every Flax peer trains as that script does: masks drawn on the host in numpy
per batch, cross-entropy over all [B, L] positions weighted by `labels > 0`,
optax AdamW with its weight-decay mask and linear schedule, the step under
`jax.jit` with the state donated (it `pmap`s with `lax.pmean`; on one device
that is the same computation), plus our global-norm clipping.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from flax.training import common_utils
from flax.training import train_state

from mlm_jax import tokenizer as tok


def mask_tokens(tokens: np.ndarray, special_mask: np.ndarray,
                config: ml_collections.ConfigDict,
                rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
  """run_mlm_flax.py's FlaxDataCollatorForLanguageModeling.mask_tokens.

  Each non-special position is selected with probability masking.rate
  (Bernoulli, so the count varies per sequence); a selected token becomes
  [MASK] with probability mask_prob, else a uniformly random id of the whole
  vocabulary (special ids included, as theirs) with probability
  random_prob / (1 - mask_prob), else stays. A legacy RandomState draws them,
  as their `np.random.binomial` calls do.

  Args:
    tokens: [B, L] int token ids; not modified.
    special_mask: [B, L] int, 1 where a position is never selected.
    config: the run config (masking.*, vocab_size).
    rng: the host random state, advanced by the call.
  Returns:
    (input_ids, labels): [B, L] arrays; labels are the original ids at
    selected positions and -100 elsewhere.
  """
  k = config.masking
  inputs, labels = tokens.copy(), tokens.copy()
  probability = np.full(labels.shape, k.rate)
  probability[special_mask.astype(bool)] = 0.0
  selected = rng.binomial(1, probability).astype(bool)
  labels[~selected] = -100
  replaced = rng.binomial(
      1, np.full(labels.shape, k.mask_prob)).astype(bool) & selected
  inputs[replaced] = tok.MASK_ID
  random_share = k.random_prob / (1.0 - k.mask_prob) if k.mask_prob < 1 else 0
  randomized = rng.binomial(1, np.full(labels.shape, random_share)).astype(bool)
  randomized &= selected & ~replaced
  random_words = rng.randint(config.vocab_size, size=labels.shape, dtype="i4")
  inputs[randomized] = random_words[randomized]
  return inputs, labels


def mlm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Their loss: mean cross-entropy of [B, L, V] `logits` where `labels > 0`
  (ids are positive; -100 marks the positions not selected)."""
  mask = jnp.where(labels > 0, 1.0, 0.0)
  loss = optax.softmax_cross_entropy(
      logits, common_utils.onehot(labels, logits.shape[-1])) * mask
  return loss.sum() / mask.sum()


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Their linear warm-up then linear decay, our numbers."""
  o = config.optim
  warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
  decay = optax.linear_schedule(
      o.lr, o.lr * o.end_lr_ratio,
      max(config.train.num_steps - o.warmup_steps, 1))
  return optax.join_schedules([warmup, decay], [o.warmup_steps])


def decay_mask(params: Any) -> Any:
  """Their decay_mask_fn: no decay on biases and LayerNorm scales."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      path: path[-1] != "bias" and path[-2:] != ("LayerNorm", "scale")
      for path in flat})


def optimizer(config: ml_collections.ConfigDict
              ) -> optax.GradientTransformation:
  """Their AdamW, after our global-norm clipping (not in their script)."""
  o = config.optim
  tx = optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                   weight_decay=o.weight_decay, mask=decay_mask)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx


def trainer(config: ml_collections.ConfigDict, apply_fn: Callable | None,
            params: Any, step: Callable
            ) -> tuple[train_state.TrainState, Callable, jax.Array]:
  """(state, jitted step, dropout key) of a peer, as their script sets up.

  `step(state, batch, dropout_rng) -> (state, metrics, dropout_rng)` is
  jitted with the state donated; the state holds `params` and `optimizer`.
  """
  state = train_state.TrainState.create(apply_fn=apply_fn, params=params,
                                        tx=optimizer(config))
  return (state, jax.jit(step, donate_argnums=(0,)),
          jax.random.PRNGKey(config.seed))
