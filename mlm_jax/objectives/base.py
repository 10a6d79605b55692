"""What the training step needs from a pre-training objective.

An objective owns everything that differs between BERT, SpanBERT, ELECTRA
or a causal LM: how a batch is corrupted (on device, with keys derived from
the run seed and each example's global id, so 1 device, pmap and jit over a
mesh see the same corruption), the model (the encoder plus the heads the
objective adds), the losses and metrics as (sum, count) pairs, and the
useful FLOPs of its step. The step (`mlm_jax/step.py`) knows none of them by
name: it corrupts, forms

  loss = sum over terms t of  weight_t * sum_t / (global count of t)

differentiates, all-reduces and updates.

A host batch (`Batch`) holds [B, L] int32 `tokens`, `segment_ids`,
`positions`, optionally `document_ids`, and [B] uint32 `example_id`.
"""
from __future__ import annotations

import abc
from typing import ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax import flops
from mlm_jax import model as model_lib

Batch = dict[str, jax.Array]
# name -> [2] float32 (sum, count), see `losses.pair`.
Metrics = dict[str, jax.Array]

ENCODER_INPUTS = ("tokens", "segment_ids", "positions", "document_ids")


def encoder_inputs(batch: Batch, **replace: jax.Array) -> Batch:
  """The encoder's fields of a batch (tokens, segment and position ids,
  document ids when present), with any of them replaced."""
  out = {k: batch[k] for k in ENCODER_INPUTS if k in batch}
  out.update(replace)
  return out


def dummy_batch(seq_len: int) -> Batch:
  """A one-example batch of zeros, for shapes (initialisation)."""
  zeros = jnp.zeros((1, seq_len), jnp.int32)
  return {"tokens": zeros, "segment_ids": zeros, "positions": zeros,
          "example_id": jnp.zeros((1,), jnp.uint32)}


class Objective(abc.ABC):
  """A pre-training objective; subclasses are frozen dataclasses.

  Subclasses set `name`, and implement `module`, `corrupt`, `loss_counts`,
  `loss_weights` and `matmuls`. `init` and `metrics` follow from them.
  """
  name: ClassVar[str]

  @property
  @abc.abstractmethod
  def encoder_config(self) -> model_lib.EncoderConfig:
    """The encoder that downstream tasks use (params['bert'])."""

  @property
  @abc.abstractmethod
  def loss_weights(self) -> Mapping[str, float]:
    """Loss term -> its weight in the training loss (each term a metric)."""

  @abc.abstractmethod
  def module(self) -> nn.Module:
    """The Flax model: `module(corrupted, deterministic=...) -> Metrics`."""

  @abc.abstractmethod
  def corrupt(self, batch: Batch, key: jax.Array, *,
              axis_name: str | None = None) -> Batch:
    """The model's inputs and targets for a host batch, on device.

    Args:
      batch: the (per-device, under pmap) batch.
      key: the key of this use (training or evaluation stream); per
        example keys are `masking.keys_for(key, batch['example_id'])`.
      axis_name: the pmap axis, for objectives that look across the
        global batch; None under jit (a global view).
    Returns:
      A dict of arrays with a leading [B] axis (so that micro-batches can
      be sliced from it).
    """

  @abc.abstractmethod
  def loss_counts(self, corrupted: Batch) -> dict[str, jax.Array]:
    """Loss term -> this shard's denominator (the step sums them globally)."""

  @abc.abstractmethod
  def matmuls(self, batch_size: int, seq_len: int) -> list[flops.Matmul]:
    """The useful forward matmuls of `batch_size` examples (see flops)."""

  def init(self, key: jax.Array, seq_len: int):
    """Initial parameters from `key` (shapes from a dummy batch)."""
    corrupted = self.corrupt(dummy_batch(seq_len), jax.random.key(0))
    return self.module().init({"params": key}, corrupted,
                              deterministic=True)["params"]

  def metrics(self, params, corrupted: Batch,
              dropout_key: jax.Array | None = None) -> Metrics:
    """Loss terms and metrics, as (sum, count) pairs; dropout with a key."""
    return self.module().apply(
        {"params": params}, corrupted, deterministic=dropout_key is None,
        rngs=None if dropout_key is None else {"dropout": dropout_key})
