"""Hugging Face's FlaxBertForSequenceClassification trained as transformers'
examples/flax/text-classification/run_flax_glue.py trains it: the peer of
our fine-tuning step (`bench.finetune`).

As their script does: each step the tokenizer's fields (`input_ids`,
`attention_mask`, `token_type_ids`) and `labels` become device arrays,
sharded over the local devices; the step, `jax.pmap`-ed over axis 'batch'
with the state donated, splits its device's dropout key, takes the mean
softmax cross-entropy of the logits against one-hot labels, `pmean`s the
gradients and applies optax's AdamW (linear warm-up then decay, no decay
on biases and LayerNorm scales). Their script does not clip gradients, and
neither does this peer; ours clips at `optim.grad_clip` (a cost only ours
pays). The optimizer's numbers are the config's. The batch is ours
(`finetune.host_batch`): same tokens, segments and labels.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import jax_utils
from flax.training import common_utils
from flax.training import train_state

from mlm_jax import tokenizer as tok
from mlm_jax.bench import finetune
from mlm_jax.bench import flax_recipe
from mlm_jax.bench import hf
from mlm_jax.bench import peer_flax
from mlm_jax.bench import peer_flax_objectives
from mlm_jax.bench import timing

AXIS = "batch"


def glue_arrays(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our fine-tuning host batch as their tokenizer's padded fields and
  labels (each [B, L] or [B])."""
  tokens = batch["tokens"]
  return {"input_ids": tokens,
          "attention_mask": (tokens != tok.PAD_ID).astype(np.int32),
          "token_type_ids": batch["segment_ids"], "labels": batch["label"]}


def glue_train_step(state: train_state.TrainState, batch: dict[str, Any],
                    dropout_rng: jax.Array, *, schedule: optax.Schedule,
                    num_labels: int
                    ) -> tuple[train_state.TrainState, dict[str, jax.Array],
                               jax.Array]:
  """run_flax_glue.py's train_step, for `jax.pmap` over axis 'batch'.

  Args:
    state: params and AdamW state; `apply_fn` is the HF model's __call__.
    batch: this device's `glue_arrays`.
    dropout_rng: this device's key, split here; the second half is
      returned for the next step.
    schedule: the learning-rate schedule, for the logged metric.
    num_labels: classes of the one-hot targets.
  Returns:
    (new state, {'loss', 'learning_rate'} device means, next dropout key).
  """
  dropout_rng, new_dropout_rng = jax.random.split(dropout_rng)
  targets = batch["labels"]
  inputs = {k: v for k, v in batch.items() if k != "labels"}

  def loss_fn(params):
    logits = state.apply_fn(**inputs, params=params, dropout_rng=dropout_rng,
                            train=True)[0]
    return optax.softmax_cross_entropy(
        logits, common_utils.onehot(targets, num_labels)).mean()

  loss, grad = jax.value_and_grad(loss_fn)(state.params)
  grad = jax.lax.pmean(grad, AXIS)
  new_state = state.apply_gradients(grads=grad)
  metrics = jax.lax.pmean(
      {"loss": loss, "learning_rate": schedule(state.step)}, axis_name=AXIS)
  return new_state, metrics, new_dropout_rng


def optimizer(config: ml_collections.ConfigDict
              ) -> optax.GradientTransformation:
  """Their AdamW (no clipping), with the config's numbers."""
  o = config.optim
  return optax.adamw(flax_recipe.lr_schedule(config), b1=o.b1, b2=o.b2,
                     eps=o.eps, weight_decay=o.weight_decay,
                     mask=flax_recipe.decay_mask)


def build_hf_glue(config: ml_collections.ConfigDict,
                  batch: dict[str, np.ndarray]
                  ) -> peer_flax_objectives.Peer:
  """A fresh FlaxBertForSequenceClassification of the config's encoder and
  `finetune.NUM_LABELS` classes, set up as run_flax_glue.py does.

  Returns (replicated state, pmapped step, a dropout key per device,
  make_batch): `make_batch()` moves `batch` to the devices and shards it,
  as their data collator does every step.
  """
  bert = hf.bert_config(config)
  bert.num_labels = finetune.NUM_LABELS
  model = hf.flax_model("FlaxAutoModelForSequenceClassification").from_config(
      bert, seed=config.seed, dtype=getattr(jnp, config.model.dtype))
  schedule = flax_recipe.lr_schedule(config)
  state = train_state.TrainState.create(apply_fn=model.__call__,
                                        params=model.params,
                                        tx=optimizer(config))
  step = jax.pmap(functools.partial(glue_train_step, schedule=schedule,
                                    num_labels=finetune.NUM_LABELS),
                  axis_name=AXIS, donate_argnums=(0,))
  dropout_rngs = jax.random.split(jax.random.PRNGKey(config.seed),
                                  jax.local_device_count())
  arrays = glue_arrays(batch)
  make_batch = lambda: common_utils.shard(
      {k: jnp.array(v) for k, v in arrays.items()})
  return jax_utils.replicate(state), step, dropout_rngs, make_batch


def time_hf_glue(config: ml_collections.ConfigDict, *, steps: int = 10,
                 repeats: int = 5, peak_flops: float | None = None
                 ) -> timing.StepTiming:
  """Times the peer on our fine-tuning batch (`peer_flax.time_peer`); MFU
  counts our fine-tuning step's useful FLOPs."""
  peer = build_hf_glue(config, finetune.host_batch(config))
  return peer_flax.time_peer(config, peer, steps=steps, repeats=repeats,
                             peak_flops=peak_flops,
                             task=finetune.task(config))
