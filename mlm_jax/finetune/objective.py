"""Fine-tuning tasks as objectives of the one training step.

A downstream task trains the pre-trained encoder (`params['bert']`) plus a
head, through the same `step.train_step`, `parallel` wrappers and optimizer
as pre-training: its `corrupt` only passes the labels through, and its loss
is a (sum, count) pair over the weighted examples (or words, for tags).

  classification   pooled [CLS] (dense + tanh, BERT's pooler) -> dropout ->
                   C logits; softmax cross-entropy
  regression       the same head with 1 output; squared error
  tagging          every token's hidden state -> dropout -> C logits;
                   cross-entropy at the first piece of each word

Batches (`finetune/features.py`): encoder fields plus `label` and `weight`
[B] (sentences) or `tags` and `tag_weight` [B, L] (tagging); padding rows
and pieces weigh 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax import dropout as dropout_lib
from mlm_jax import flops
from mlm_jax import model as model_lib
from mlm_jax.objectives import base
from mlm_jax.objectives import losses

KINDS = ("classification", "regression", "tagging")
LOSS = "task_loss"


class TaskModel(nn.Module):
  """The encoder (`bert`) with a sentence or token head."""
  cfg: model_lib.EncoderConfig
  kind: str
  num_outputs: int

  def setup(self):
    self.bert = model_lib.Encoder(self.cfg)
    if self.kind != "tagging":
      self.pooler = model_lib.dense(self.cfg, self.cfg.hidden_size, "pooler")
    self.dropout = dropout_lib.make(self.cfg.dropout_rng, self.cfg.dropout)
    self.classifier = model_lib.dense(self.cfg, self.num_outputs,
                                      "classifier")

  def outputs(self, batch: base.Batch, deterministic: bool) -> jax.Array:
    """[B, C] (sentences) or [B, L, C] (tags) float32 outputs."""
    # A sentence head reads [CLS] alone: the last layer runs only there.
    hidden = self.bert(batch["tokens"], batch["segment_ids"],
                       batch["positions"], deterministic=deterministic,
                       cls_only=self.kind != "tagging")
    if self.kind != "tagging":
      hidden = jnp.tanh(self.pooler(hidden[:, 0]))
    return self.classifier(self.dropout(hidden, deterministic)).astype(
        jnp.float32)

  def __call__(self, batch: base.Batch, *,
               deterministic: bool = True) -> base.Metrics:
    out = self.outputs(batch, deterministic)
    if self.kind == "regression":
      w = batch["weight"]
      err = (out[:, 0] - batch["label"]) ** 2
      return {LOSS: losses.pair(jnp.sum(err * w), jnp.sum(w))}
    if self.kind == "tagging":
      sums = losses.softmax_cross_entropy(out, batch["tags"],
                                          batch["tag_weight"])
    else:
      sums = losses.softmax_cross_entropy(out, batch["label"],
                                          batch["weight"])
    return {LOSS: losses.pair(sums.loss, sums.count),
            "task_accuracy": losses.pair(sums.correct, sums.count)}

  def predict(self, batch: base.Batch) -> jax.Array:
    """Class ids ([B] or [B, L] int32), or [B] float32 for regression."""
    out = self.outputs(batch, deterministic=True)
    if self.kind == "regression":
      return out[..., 0]
    return jnp.argmax(out, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class FineTune(base.Objective):
  """A downstream task on the encoder `encoder`."""
  name = "finetune"
  encoder: model_lib.EncoderConfig
  kind: str
  # Classes (classification, tagging); 1 for regression.
  num_outputs: int

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown task kind {self.kind!r}; use one of "
                       f"{', '.join(KINDS)}")

  @property
  def encoder_config(self) -> model_lib.EncoderConfig:
    return self.encoder

  @property
  def loss_weights(self) -> Mapping[str, float]:
    return {LOSS: 1.0}

  @property
  def target_fields(self) -> tuple[str, ...]:
    return ("tags", "tag_weight") if self.kind == "tagging" else (
        "label", "weight")

  def module(self) -> nn.Module:
    return TaskModel(self.encoder, self.kind, self.num_outputs)

  def corrupt(self, batch, key, *, axis_name=None):
    del key, axis_name  # nothing is corrupted
    return base.encoder_inputs(
        batch, **{k: batch[k] for k in self.target_fields})

  def loss_counts(self, corrupted):
    weight = corrupted["tag_weight" if self.kind == "tagging" else "weight"]
    return {LOSS: jnp.sum(weight)}

  def init(self, key: jax.Array, seq_len: int):
    zeros = jnp.zeros((1, seq_len), jnp.int32)
    batch = {"tokens": zeros, "segment_ids": zeros, "positions": zeros}
    return self.module().init({"params": key}, batch, method="outputs",
                              deterministic=True)["params"]

  def predict(self, params: Any, batch: base.Batch) -> jax.Array:
    return self.module().apply({"params": params}, batch, method="predict")

  def matmuls(self, batch_size, seq_len):
    h = self.encoder.hidden_size
    head = ([flops.Matmul("classifier", 1, batch_size * seq_len, h,
                          self.num_outputs, 1)] if self.kind == "tagging"
            else [flops.Matmul("pooler", 1, batch_size, h, h, 1),
                  flops.Matmul("classifier", 1, batch_size, h,
                               self.num_outputs, 1)])
    # A sentence head's encoder runs its last layer at [CLS] alone
    # (`model.Encoder`'s cls_only), unless scanned.
    cls_only = self.kind != "tagging" and not self.encoder.scan_layers
    return flops.encoder_matmuls(self.encoder, batch_size, seq_len,
                                 cls_only=cls_only) + head


def with_pretrained(params: Any, pretrained: Any) -> Any:
  """`params` with the encoder, and BERT's pooler when the pre-training
  objective trained one (NSP, SOP), taken from pre-trained parameters."""
  params = dict(params)
  params["bert"] = pretrained["bert"]
  if "pooler" in params and "pooler" in pretrained:
    params["pooler"] = pretrained["pooler"]
  return params
