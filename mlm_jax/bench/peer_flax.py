"""Hugging Face's FlaxBertForMaskedLM trained as its Flax MLM example does,
and the timing of every Flax peer.

The peer `peers` times as 'flax': transformers' example
examples/flax/language-modeling/run_mlm_flax.py, reproduced
(`flax_recipe`). Objectives other than BERT's MLM have peers of their own
(`peer_flax_objectives`); `time_hf_flax` times whichever the config's
objective has. transformers is imported only when a model is built.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from mlm_jax import step as step_lib
from mlm_jax import synthetic
from mlm_jax.bench import flax_recipe
from mlm_jax.bench import hf
from mlm_jax.bench import peer_flax_objectives
from mlm_jax.bench import timing


def flax_batch(tokens: np.ndarray, special_mask: np.ndarray,
               config: ml_collections.ConfigDict,
               rng: np.random.RandomState) -> dict[str, np.ndarray]:
  """The host batch run_mlm_flax.py feeds its step: masked ids and labels."""
  input_ids, labels = flax_recipe.mask_tokens(tokens, special_mask, config,
                                              rng)
  return {"input_ids": input_ids, "attention_mask": np.ones_like(tokens),
          "token_type_ids": np.zeros_like(tokens), "labels": labels}


def flax_train_step(state: train_state.TrainState, batch: dict[str, Any],
                    dropout_rng: jax.Array, *, schedule: optax.Schedule
                    ) -> tuple[train_state.TrainState, dict[str, jax.Array],
                               jax.Array]:
  """run_mlm_flax.py's train_step without the pmean (one device, jit).

  Args:
    state: params and AdamW state; `apply_fn` is the HF model's __call__.
    batch: `flax_batch` arrays, each [B, L].
    dropout_rng: key split here; the second half is returned for next step.
    schedule: the learning-rate schedule, only for the logged metric.
  Returns:
    (new state, {'loss', 'learning_rate'} float32 scalars, next dropout key).
  """
  dropout_rng, new_dropout_rng = jax.random.split(dropout_rng)
  labels = batch["labels"]
  inputs = {k: v for k, v in batch.items() if k != "labels"}

  def loss_fn(params):
    logits = state.apply_fn(**inputs, params=params, dropout_rng=dropout_rng,
                            train=True)[0]
    return flax_recipe.mlm_loss(logits, labels)

  loss, grad = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grad)
  metrics = {"loss": loss, "learning_rate": schedule(state.step)}
  return new_state, metrics, new_dropout_rng


def build_hf_flax(config: ml_collections.ConfigDict
                  ) -> tuple[train_state.TrainState, Callable, jax.Array]:
  """A freshly initialised FlaxBertForMaskedLM, its optimizer and step.

  Returns:
    (state, train_step, dropout_rng): `train_step(state, batch,
    dropout_rng) -> (state, metrics, dropout_rng)` is jitted with the state
    donated.
  """
  model = hf.flax_model("FlaxAutoModelForMaskedLM").from_config(
      hf.bert_config(config), seed=config.seed,
      dtype=getattr(jnp, config.model.dtype))
  step = functools.partial(flax_train_step,
                           schedule=flax_recipe.lr_schedule(config))
  return flax_recipe.trainer(config, model.__call__, model.params, step)


def time_hf_flax(config: ml_collections.ConfigDict, *, steps: int = 10,
                 repeats: int = 5, peak_flops: float | None = None
                 ) -> timing.StepTiming:
  """Times the HF Flax peer of the config's objective, host work included.

  BERT's MLM: FlaxBertForMaskedLM as run_mlm_flax.py trains it; other
  objectives: `peer_flax_objectives`. See `time_peer`.
  """
  host = synthetic.batch(config)
  peer = peer_flax_objectives.build(config, host)
  if peer is None:
    state, train_step, dropout_rng = build_hf_flax(config)
    tokens = host["tokens"]
    special = hf.special_tokens_mask(tokens)
    rng = np.random.RandomState(config.seed)
    peer = (state, train_step, dropout_rng,
            lambda: flax_batch(tokens, special, config, rng))
  return time_peer(config, peer, steps=steps, repeats=repeats,
                   peak_flops=peak_flops)


def time_peer(config: ml_collections.ConfigDict,
              peer: peer_flax_objectives.Peer, *, steps: int, repeats: int,
              peak_flops: float | None,
              task: step_lib.Task | None = None) -> timing.StepTiming:
  """Times a Flax peer `(state, step, rng, make_batch)` as its users run it.

  Each timed step prepares its batch on the host (masking, pairs, the
  transfer) and dispatches the device step (which overlaps the next step's
  host work, as in their loop); each repeat of `steps` steps blocks on its
  last result. Its peak host memory is this process's: see
  `peers.run_in_subprocess`. MFU counts the useful FLOPs of our step of the
  same config (`task`'s, if given).
  """
  state, train_step, dropout_rng, make_batch = peer
  batch = make_batch()
  jax.block_until_ready((state, batch))  # as ours: no init in the lowering
  start = time.perf_counter()
  lowered = train_step.lower(state, batch, dropout_rng)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  state, metrics, dropout_rng = compiled(state, batch, dropout_rng)  # warm-up
  jax.block_until_ready(metrics)

  def run(steps):
    nonlocal state, metrics, dropout_rng
    for _ in range(steps):
      state, metrics, dropout_rng = compiled(state, make_batch(), dropout_rng)
    jax.block_until_ready(metrics)

  times, peaks = timing.time_repeats(run, steps=steps, repeats=repeats,
                                     sample_peak=peak_flops is None)
  return timing.step_timing(config, times, lower_seconds, compile_seconds,
                            peak_flops, peak_samples=peaks, task=task)
