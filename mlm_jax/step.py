"""The pure train and eval steps of MLM pre-training.

Written once, with a global view of the batch: under `jax.jit` over a mesh
they run as they read (`axis_name=None`); under `jax.pmap` each device sees
its shard and `axis_name='data'` turns the sums into `psum`s. The loss of a
step is sum(loss at masked slots) / (number of masked slots in the GLOBAL
batch), so every layout computes the same gradient, not a mean of per-device
means.
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

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and goes into a checkpoint)."""
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class MLMTask:
  """The static parts of the step: model, optimizer and masking settings."""
  model: Any  # model.BertForMaskedLM
  tx: optax.GradientTransformation
  seed: int
  vocab_size: int
  max_predictions: int
  rate: float = 0.15
  mask_prob: float = 0.8
  random_prob: float = 0.1
  # Micro-batches per step: gradients summed over a scan, one update.
  accum_steps: int = 1

  def mask(self, batch: Batch, stream: int) -> masking.Masked:
    keys = masking.example_keys(self.seed, stream, batch["example_id"])
    return masking.mask_tokens(
        keys, batch["tokens"], max_predictions=self.max_predictions,
        vocab_size=self.vocab_size, rate=self.rate, mask_prob=self.mask_prob,
        random_prob=self.random_prob)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def init_state(task: MLMTask, seq_len: int) -> TrainState:
  """Initial parameters (from the seed) and optimizer state."""
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  params = task.model.init(
      jax.random.key(task.seed), dummy, dummy, dummy,
      jnp.zeros((1, task.max_predictions), jnp.int32))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=task.tx.init(params))


def _mlm_metrics(task: MLMTask, params, masked: masking.Masked, batch: Batch,
                 dropout_key=None) -> Metrics:
  """Loss and accuracy sums at the masked slots (the model's fused head)."""
  return task.model.apply(
      {"params": params}, masked.inputs, batch["segment_ids"],
      batch["positions"], masked.positions,
      deterministic=dropout_key is None,
      document_ids=batch.get("document_ids"), labels=masked.labels,
      weights=masked.weights,
      rngs=None if dropout_key is None else {"dropout": dropout_key})


def train_step(state: TrainState, batch: Batch, *, task: MLMTask,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One optimizer step on a batch; masks are drawn here, on device.

  Args:
    state: the train state (replicated per device under pmap).
    batch: `tokens`, `segment_ids`, `positions` [B, L] int32, optionally
      `document_ids` [B, L] int32, and `example_id` [B] uint32 (B is the
      per-device batch under pmap).
    task: model, optimizer and masking settings.
    axis_name: the pmap axis to reduce over, or None under jit.
  Returns:
    The new state and metrics: float32 sums over the global batch
    (`mlm_loss_sum`, `mlm_correct_sum`, `mlm_count`, `tokens`) plus
    `grad_norm`, identical on every device.
  """
  masked = task.mask(batch, masking.TRAIN_MASK_STREAM)
  global_count = jnp.maximum(_psum(jnp.sum(masked.weights), axis_name), 1.0)
  dropout_key = jax.random.fold_in(
      jax.random.fold_in(jax.random.key(task.seed), masking.DROPOUT_STREAM),
      state.step)
  if axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key,
                                     jax.lax.axis_index(axis_name))

  def grad_fn(params, micro, key):
    """Gradient of this micro-batch's share of the global mean loss."""
    def loss_fn(params):
      metrics = _mlm_metrics(task, params, micro[0], micro[1], key)
      return metrics["mlm_loss_sum"] / global_count, metrics
    return jax.grad(loss_fn, has_aux=True)(params)

  if task.accum_steps == 1:
    grads, metrics = grad_fn(state.params, (masked, batch), dropout_key)
  else:
    # Each micro-batch's loss is divided by the count of the WHOLE batch,
    # so the summed gradients equal the large batch's gradient.
    split = lambda x: x.reshape((task.accum_steps, -1) + x.shape[1:])
    micros = jax.tree.map(split, (masked, batch))

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
  metrics["tokens"] = jnp.sum(batch["tokens"] != tok.PAD_ID).astype(
      jnp.float32)
  metrics = _psum(metrics, axis_name)
  metrics["grad_norm"] = grad_norm
  new_state = TrainState(step=state.step + 1, params=params,
                         opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch: Batch, *, task: MLMTask,
              axis_name: str | None = None) -> Metrics:
  """MLM loss and accuracy sums with fixed (evaluation-stream) masks.

  Rows made only of [PAD] (used to fill the last batch) have no candidates
  and therefore contribute nothing.
  """
  masked = task.mask(batch, masking.EVAL_MASK_STREAM)
  return _psum(_mlm_metrics(task, params, masked, batch), axis_name)
