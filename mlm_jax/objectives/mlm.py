"""BERT's masked language model: predict masked tokens from both sides.

The smallest objective, and the template of the others: corrupt with the
configured masking strategy (`config.masking`: token, whole-word or span),
run the encoder, and score the MLM head at the masked slots only.

Logged: `loss` (the MLM cross-entropy, nats per prediction) and
`mlm_accuracy` (top-1 at the masked slots).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax import flops
from mlm_jax import masking as masking_lib
from mlm_jax import model as model_lib
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import base
from mlm_jax.objectives import heads
from mlm_jax.objectives import losses


# What it predicts is chosen by `config.masking`.
USES_MASKING = True


def default_config() -> ml_collections.ConfigDict:
  """`config.objective.mlm`: MLM has no settings beyond `config.masking`."""
  return ml_collections.ConfigDict()


def check(config: ml_collections.ConfigDict) -> None:
  del config  # nothing beyond the masking checks


def build(config: ml_collections.ConfigDict, word_starts=None) -> MaskedLM:
  return MaskedLM(model_lib.EncoderConfig.from_config(config),
                  masking_lib.Masking.from_config(config, word_starts))


class BertForMaskedLM(nn.Module):
  """The encoder and BERT's MLM head, its parameters at the top level.

  Parameters: `bert/...` (the encoder), `transform`, `transform_LayerNorm`
  and `output_bias` (the head; the projection is tied to the word
  embeddings). The language-model objectives train the same model with a
  prefix or causal attention mask (`prefix_lengths` in the batch).
  """
  cfg: model_lib.EncoderConfig
  metric: str = "mlm"  # names its metrics: <metric>_loss, <metric>_accuracy

  def setup(self):
    self.bert = model_lib.Encoder(self.cfg)
    self.mlm_head = heads.MLMHead(self.cfg)
    nn.share_scope(self, self.mlm_head)

  def encode(self, batch: base.Batch, deterministic: bool) -> jax.Array:
    return self.bert(batch["tokens"], batch["segment_ids"],
                     batch["positions"], deterministic=deterministic,
                     document_ids=batch.get("document_ids"),
                     prefix_lengths=batch.get("prefix_lengths"))

  def mlm_sums(self, batch: base.Batch, hidden: jax.Array) -> losses.Sums:
    """The head's loss sums at `mask_positions` (labels, weights)."""
    table = self.bert.embedding_table(hidden.dtype)
    sums, _ = self.mlm_head(hidden, batch["mask_positions"], table,
                            batch["labels"], batch["weights"])
    return sums

  def __call__(self, batch: base.Batch, *,
               deterministic: bool = True) -> base.Metrics:
    hidden = self.encode(batch, deterministic)
    sums = self.mlm_sums(batch, hidden)
    out = {f"{self.metric}_loss": losses.pair(sums.loss, sums.count),
           f"{self.metric}_accuracy": losses.pair(sums.correct, sums.count)}
    if deterministic and self.metric == "mlm":  # Evaluation only.
      out["mlm_accuracy_at_mask"] = self.accuracy_at_mask(batch, hidden)
    return out

  def accuracy_at_mask(self, batch: base.Batch,
                       hidden: jax.Array) -> jax.Array:
    """(correct, count) at the slots whose input is [MASK]: the part of
    `mlm_accuracy` that needs the context. The slots kept unchanged (10%
    under BERT's rule) are solved by copying the input, so a model that
    copies them and otherwise predicts the most frequent token already
    scores over twice the unigram accuracy on `mlm_accuracy`."""
    logits = self.mlm_head.logits(hidden, batch["mask_positions"],
                                  self.bert.embedding_table(hidden.dtype))
    inputs = jnp.take_along_axis(batch["tokens"], batch["mask_positions"], 1)
    weights = batch["weights"] * (inputs == tok.MASK_ID)
    correct = jnp.argmax(logits, -1) == batch["labels"]
    return losses.pair(jnp.sum(weights * correct), jnp.sum(weights))

  def logits(self, tokens, segment_ids, positions, mask_positions, *,
             deterministic: bool = True, document_ids=None,
             prefix_lengths=None) -> jax.Array:
    """[B, P] positions' [B, P, V] float32 logits (fill-mask, tests)."""
    hidden = self.bert(tokens, segment_ids, positions,
                       deterministic=deterministic, document_ids=document_ids,
                       prefix_lengths=prefix_lengths)
    return self.mlm_head.logits(hidden, mask_positions,
                                self.bert.embedding_table(hidden.dtype))


def mask_batch(masking: masking_lib.Masking, batch: base.Batch,
               key: jax.Array) -> base.Batch:
  """The encoder inputs with masked tokens, plus the MLM targets."""
  masked = masking(masking_lib.keys_for(key, batch["example_id"]),
                   batch["tokens"])
  return base.encoder_inputs(
      batch, tokens=masked.inputs, mask_positions=masked.positions,
      labels=masked.labels, weights=masked.weights)


@dataclasses.dataclass(frozen=True)
class MaskedLM(base.Objective):
  """BERT's MLM with any masking strategy."""
  name = "mlm"
  encoder: model_lib.EncoderConfig
  masking: masking_lib.Masking

  @property
  def encoder_config(self) -> model_lib.EncoderConfig:
    return self.encoder

  @property
  def loss_weights(self) -> Mapping[str, float]:
    return {"mlm_loss": 1.0}

  def module(self) -> nn.Module:
    return BertForMaskedLM(self.encoder)

  def corrupt(self, batch, key, *, axis_name=None):
    del axis_name  # each example is masked on its own
    return mask_batch(self.masking, batch, key)

  def loss_counts(self, corrupted):
    return {"mlm_loss": jnp.sum(corrupted["weights"])}

  def matmuls(self, batch_size, seq_len):
    h = self.encoder.hidden_size
    return flops.encoder_matmuls(self.encoder, batch_size, seq_len) + (
        flops.mlm_head_matmuls(h, h, self.encoder.vocab_size,
                               batch_size * self.masking.max_predictions))
