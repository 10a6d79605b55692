"""The optimizer and learning-rate schedule, built from config in one place."""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict,
                           num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `optim.lr`, then linear or cosine decay.

  The decay ends at `optim.end_lr_ratio * optim.lr` at step `num_steps`.
  """
  end = optim.lr * optim.end_lr_ratio
  warmup = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  decay_steps = max(num_steps - optim.warmup_steps, 1)
  if optim.decay == "cosine":
    decay = optax.cosine_decay_schedule(optim.lr, decay_steps,
                                        alpha=optim.end_lr_ratio)
  else:
    decay = optax.linear_schedule(optim.lr, end, decay_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def decay_mask(params) -> object:
  """True for weight matrices and embeddings; False for biases, LayerNorm.

  Decided by the parameter's name (Flax's `kernel` and `embedding`), not by
  its rank: the fused QKV bias is [3, heads, head_dim] (plus [layers] when
  stacked by scan), a bias of rank > 1.
  """
  def is_weight(path, _):
    return getattr(path[-1], "key", None) in ("kernel", "embedding")
  return jax.tree_util.tree_map_with_path(is_weight, params)


def make_optimizer(optim: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay masked off biases and LayerNorm,
  after global-norm clipping of the gradients."""
  adamw = optax.adamw(
      learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2,
      eps=optim.eps, weight_decay=optim.weight_decay, mask=decay_mask)
  if optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
  return adamw
