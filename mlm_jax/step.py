"""The pure train and eval steps of pre-training, for any objective.

Written once, with a global view of the batch: under `jax.jit` over a mesh
they run as they read (`axis_name=None`); under `jax.pmap` each device sees
its shard and `axis_name='data'` turns the sums into `psum`s. Each loss term
of the objective is its sum over the batch / its count over the GLOBAL
batch, so every layout computes the same gradient, not a mean of per-device
means. The objective (`mlm_jax/objectives/`) does everything specific to
it; the step knows none by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mlm_jax import masking
from mlm_jax import optim
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import base
from mlm_jax.objectives import losses

Batch = base.Batch
Metrics = base.Metrics


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and goes into a checkpoint)."""
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Task:
  """The static parts of the step: objective, optimizer, seed."""
  objective: base.Objective
  tx: optax.GradientTransformation
  seed: int
  # Micro-batches per step: gradients summed over a scan, one update.
  accum_steps: int = 1


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def init_state(task: Task, seq_len: int) -> TrainState:
  """Initial parameters (from the seed) and optimizer state."""
  params = task.objective.init(jax.random.key(task.seed), seq_len)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=task.tx.init(params))


def _loss(task: Task, metrics: Metrics, global_counts) -> jax.Array:
  """sum over terms of weight * (this shard's sum) / (global count)."""
  total = 0.0
  for term, weight in task.objective.loss_weights.items():
    mean = metrics[term][0] / global_counts[term]
    total = total + (mean if weight == 1.0 else weight * mean)
  return total


def train_step(state: TrainState, batch: Batch, *, task: Task,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One optimizer step on a batch; corruption is drawn here, on device.

  Args:
    state: the train state (replicated per device under pmap).
    batch: `tokens`, `segment_ids`, `positions` [B, L] int32, optionally
      `document_ids` [B, L] int32, and `example_id` [B] uint32 (B is the
      per-device batch under pmap).
    task: the objective, optimizer and seed.
    axis_name: the pmap axis to reduce over, or None under jit.
  Returns:
    The new state and metrics, identical on every device: the objective's
    (sum, count) pairs over the global batch, `tokens` (non-padding tokens
    trained on), `grad_norm` (before clipping) and `param_norm` (after
    the update).
  """
  objective = task.objective
  corrupted = objective.corrupt(
      batch, masking.stream_key(task.seed, masking.TRAIN_MASK_STREAM),
      axis_name=axis_name)
  global_counts = {
      term: jnp.maximum(_psum(count, axis_name), 1.0)
      for term, count in objective.loss_counts(corrupted).items()}
  dropout_key = jax.random.fold_in(
      masking.stream_key(task.seed, masking.DROPOUT_STREAM), state.step)
  if axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key,
                                     jax.lax.axis_index(axis_name))

  def grad_fn(params, micro, key):
    """Gradient of this micro-batch's share of the global mean loss."""
    def loss_fn(params):
      metrics = objective.metrics(params, micro, key)
      return _loss(task, metrics, global_counts), metrics
    return jax.grad(loss_fn, has_aux=True)(params)

  if task.accum_steps == 1:
    grads, metrics = grad_fn(state.params, corrupted, dropout_key)
  else:
    # Each micro-batch's loss is divided by the counts of the WHOLE batch,
    # so the summed gradients equal the large batch's gradient.
    split = lambda x: x.reshape((task.accum_steps, -1) + x.shape[1:])
    micros = jax.tree.map(split, corrupted)

    def body(carry, xs):
      i, micro = xs
      grads, metrics = grad_fn(state.params, micro,
                               jax.random.fold_in(dropout_key, i))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        grad_fn, state.params, jax.tree.map(lambda x: x[0], micros),
        dropout_key))
    (grads, metrics), _ = jax.lax.scan(
        body, zeros, (jnp.arange(task.accum_steps), micros))
  grads = _psum(grads, axis_name)
  # One norm for the metric and the fused optimizer's clipping; any other
  # optax transform ignores the extra argument (and computes its own).
  grad_norm = optim.global_norm(grads)
  updates, opt_state = optax.with_extra_args_support(task.tx).update(
      grads, state.opt_state, state.params, grad_norm=grad_norm)
  params = optax.apply_updates(state.params, updates)
  metrics["tokens"] = losses.pair(jnp.sum(batch["tokens"] != tok.PAD_ID), 1.0)
  metrics = _psum(metrics, axis_name)
  metrics["grad_norm"] = losses.pair(grad_norm, 1.0)
  metrics["param_norm"] = losses.pair(optim.global_norm(params), 1.0)
  new_state = TrainState(step=state.step + 1, params=params,
                         opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch: Batch, *, task: Task,
              axis_name: str | None = None) -> Metrics:
  """The objective's metrics with fixed (evaluation-stream) corruption.

  Rows made only of [PAD] (used to fill the last batch) have nothing to
  predict and therefore contribute nothing.
  """
  corrupted = task.objective.corrupt(
      batch, masking.stream_key(task.seed, masking.EVAL_MASK_STREAM),
      axis_name=axis_name)
  return _psum(task.objective.metrics(params, corrupted), axis_name)
