"""The optimizer and learning-rate schedule, built from config in one place."""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
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


def global_norm(tree) -> jax.Array:
  """The float32 L2 norm of all the leaves of `tree` together.

  In lax operators: optax.tree.norm's jnp calls each trace through a
  jitted wrapper, once per leaf (~200 at BERT-base) in a cold lowering.
  """
  squares = [lax.reduce_sum(lax.mul(g, g), tuple(range(g.ndim)))
             for g in (x.astype(jnp.float32) for x in jax.tree.leaves(tree))]
  return lax.sqrt(functools.reduce(lax.add, squares))


class FusedAdamWState(NamedTuple):
  """Steps taken, and Adam's first and second moments (float32)."""
  count: jax.Array
  mu: Any
  nu: Any


def fused_adamw(learning_rate: optax.Schedule, b1: float, b2: float,
                eps: float, weight_decay: float, mask: Any,
                grad_clip: float) -> optax.GradientTransformation:
  """Global-norm clipping, AdamW and the learning rate in one transform.

  The same update as `optax.chain(optax.clip_by_global_norm(grad_clip),
  optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay,
  mask=mask))`, written as one elementwise expression per parameter. The
  update is memory-bound: each pass over a parameter-sized array costs as
  much as the arithmetic of the whole update. optax's chain clips with
  `where(norm < c, g, g / norm * c)`, which XLA materialises as one more
  gradient-sized array, read again by the moment updates; here clipping is
  a scalar factor folded into the update's one elementwise expression
  (which XLA:CPU still emits as three loops: each moment, then the
  parameter). Its state is its own (`FusedAdamWState`), not optax's.

  Args:
    learning_rate: schedule of the step count (taken before this step).
    b1, b2, eps: Adam's decay rates and denominator epsilon.
    weight_decay: decoupled weight-decay rate, applied where `mask` is
      True: a pytree of bools like the parameters, or a function of them.
    grad_clip: maximum global gradient norm; 0 disables clipping.
  Returns:
    A transform whose `update` takes the optional extra argument
    `grad_norm`: `global_norm(grads)`, when the caller has computed it
    already (the train step reports it), so the step traces it once.
  """
  def init(params):
    zeros = lambda p: jnp.zeros_like(p, jnp.float32)
    return FusedAdamWState(jnp.zeros([], jnp.int32),
                           jax.tree.map(zeros, params),
                           jax.tree.map(zeros, params))

  def update(grads, state, params, *, grad_norm=None, **unused_extra_args):
    del unused_extra_args
    count = optax.safe_int32_increment(state.count)
    lr = learning_rate(state.count)
    c1 = 1 - jnp.asarray(b1, jnp.float32) ** count
    c2 = 1 - jnp.asarray(b2, jnp.float32) ** count
    scale = jnp.ones([], jnp.float32)
    if grad_clip > 0:
      norm = global_norm(grads) if grad_norm is None else grad_norm
      scale = jnp.where(norm < grad_clip, 1.0, grad_clip / norm)
    decay = mask(params) if callable(mask) else mask
    # lax, not jnp operators (here and in the norm), on float32 constants
    # made once: the same arithmetic, but each jnp operator traces through
    # a jitted wrapper of its own, ~15 per leaf over BERT-base's ~200.
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    k_b1, k_1b1, k_b2, k_1b2 = f32(b1), f32(1 - b1), f32(b2), f32(1 - b2)
    k_eps, k_wd, neg_lr = f32(eps), f32(weight_decay), -lr

    def leaf(g, p, mu, nu, decayed):
      g = lax.mul(g.astype(jnp.float32), scale)
      mu = lax.add(lax.mul(k_b1, mu), lax.mul(k_1b1, g))
      nu = lax.add(lax.mul(k_b2, nu), lax.mul(k_1b2, lax.mul(g, g)))
      u = lax.div(lax.div(mu, c1), lax.add(lax.sqrt(lax.div(nu, c2)), k_eps))
      if decayed and weight_decay:
        u = lax.add(u, lax.mul(k_wd, p.astype(jnp.float32)))
      return lax.mul(neg_lr, u).astype(p.dtype), mu, nu

    out = jax.tree.map(leaf, grads, params, state.mu, state.nu, decay)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)
    return pick(0), FusedAdamWState(count, pick(1), pick(2))

  return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(optim: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay masked off biases and LayerNorm,
  after global-norm clipping of the gradients.

  `optim.fused` (default) builds it as `fused_adamw`, one elementwise
  update per parameter; False builds the same update from optax's chain.
  """
  if optim.get("fused", True):
    return fused_adamw(learning_rate_schedule(optim, num_steps), optim.b1,
                       optim.b2, optim.eps, optim.weight_decay, decay_mask,
                       optim.grad_clip)
  adamw = optax.adamw(
      learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2,
      eps=optim.eps, weight_decay=optim.weight_decay, mask=decay_mask)
  if optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
  return adamw
