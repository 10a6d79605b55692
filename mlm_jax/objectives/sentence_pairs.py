"""What next-sentence and sentence-order prediction share.

Both read `data.packing=pairs` examples, [CLS] A [SEP] B [SEP] with segment
ids 0 then 1, where B follows A in its document. Each objective makes its
negatives on device (`nsp.py`: B from another example; `sop.py`: A and B
swapped), then masks the result as BERT does, and trains the MLM head plus
a classifier on the pooled [CLS] state: loss = MLM + pair loss.
"""
from __future__ import annotations

import abc
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
from mlm_jax.errors import check
from mlm_jax.objectives import base
from mlm_jax.objectives import losses
from mlm_jax.objectives import mlm

# Folded into the example key for the pair decision, apart from masking's.
PAIR_KEY = 1


def default_config() -> ml_collections.ConfigDict:
  """`config.objective.nsp` and `.sop`."""
  c = ml_collections.ConfigDict()
  # Share of pairs made negative (label 1): B from another example (NSP),
  # or A and B swapped (SOP).
  c.negative_rate = 0.5
  return c


def check_pairs(config: ml_collections.ConfigDict) -> None:
  """Pair objectives need `data.packing=pairs` and a rate in (0, 1)."""
  name = config.objective.name
  check(config.data.packing == "pairs", "data.packing",
        f"objective {name!r} predicts a relation between two segments, and "
        f"packing {config.data.packing!r} makes none",
        "set --config.data.packing=pairs")
  rate = config.objective[name].negative_rate
  check(0.0 < rate < 1.0, f"objective.{name}.negative_rate",
        f"{rate} is outside (0, 1)", "use e.g. 0.5 (BERT, ALBERT)")


def build(cls, config: ml_collections.ConfigDict, word_starts=None):
  """The pair objective `cls` of a run config."""
  return cls(model_lib.EncoderConfig.from_config(config),
             masking_lib.Masking.from_config(config, word_starts),
             config.objective[cls.name].negative_rate)


def segment_bounds(tokens: jax.Array
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per example: where B starts (after the first [SEP]), the length, and
  whether it is a pair (A and B both hold a token).

  Args:
    tokens: [B, L] pair examples.
  Returns:
    (b_start, length, is_pair): [B] int32, int32, bool.
  """
  width = tokens.shape[1]
  index = jnp.arange(width, dtype=jnp.int32)
  length = jnp.sum(tokens != tok.PAD_ID, axis=1).astype(jnp.int32)
  first_sep = jnp.min(jnp.where(tokens == tok.SEP_ID, index, width), axis=1)
  b_start = (first_sep + 1).astype(jnp.int32)
  # [CLS] A [SEP]: b_start >= 3; B [SEP]: at least 2 more.
  return b_start, length, (b_start >= 3) & (length - b_start >= 2)


def pair_fields(tokens: jax.Array, b_start: jax.Array, length: jax.Array,
                batch: base.Batch) -> base.Batch:
  """The encoder fields of rebuilt pairs: segment 1 from `b_start` to
  `length`, positions counting the real tokens, one document."""
  index = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
  real = index < length[:, None]
  fields = {"tokens": tokens,
            "segment_ids": (real & (index >= b_start[:, None])).astype(
                jnp.int32),
            "positions": jnp.where(real, index, 0)}
  if "document_ids" in batch:
    fields["document_ids"] = real.astype(jnp.int32)
  return fields


def pair_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
  return masking_lib.keys_for(jax.random.fold_in(key, PAIR_KEY), example_ids)


class BertForPreTraining(nn.Module):
  """BERT with its MLM head and a classifier on the pooled [CLS] state.

  Parameters: those of `mlm.BertForMaskedLM`, plus `pooler` (dense, tanh)
  and `seq_relationship` (2 classes), as in BERT.
  """
  cfg: model_lib.EncoderConfig
  metric: str  # 'nsp' or 'sop': names the pair metrics

  def setup(self):
    self.mlm = mlm.BertForMaskedLM(self.cfg)
    nn.share_scope(self, self.mlm)
    self.pooler = model_lib.dense(self.cfg, self.cfg.hidden_size, "pooler")
    self.seq_relationship = model_lib.FlatDense(self.cfg, (2,),
                                                name="seq_relationship")

  def __call__(self, batch: base.Batch, *,
               deterministic: bool = True) -> base.Metrics:
    hidden = self.mlm.encode(batch, deterministic)
    sums = self.mlm.mlm_sums(batch, hidden)
    pooled = jnp.tanh(self.pooler(hidden[:, 0]))
    pair = losses.softmax_cross_entropy(self.seq_relationship(pooled),
                                        batch["pair_label"],
                                        batch["pair_weight"])
    m = self.metric
    out = {"mlm_loss": losses.pair(sums.loss, sums.count),
           "mlm_accuracy": losses.pair(sums.correct, sums.count),
           f"{m}_loss": losses.pair(pair.loss, pair.count),
           f"{m}_accuracy": losses.pair(pair.correct, pair.count)}
    if deterministic:  # Evaluation only.
      out["mlm_accuracy_at_mask"] = self.mlm.accuracy_at_mask(batch, hidden)
    return out


@dataclasses.dataclass(frozen=True)
class SentencePairObjective(base.Objective):
  """MLM plus a pair classification; subclasses make the negatives."""
  encoder: model_lib.EncoderConfig
  masking: masking_lib.Masking
  # Share of examples made negative (label 1).
  negative_rate: float = 0.5

  @property
  def encoder_config(self) -> model_lib.EncoderConfig:
    return self.encoder

  @property
  def loss_weights(self) -> Mapping[str, float]:
    return {"mlm_loss": 1.0, f"{self.name}_loss": 1.0}

  def module(self) -> nn.Module:
    return BertForPreTraining(self.encoder, self.name)

  @abc.abstractmethod
  def make_pairs(self, batch: base.Batch, key: jax.Array,
                 axis_name: str | None) -> tuple[base.Batch, jax.Array,
                                                 jax.Array]:
    """(encoder fields of the pairs, [B] int32 labels, [B] float weights)."""

  def corrupt(self, batch, key, *, axis_name=None):
    fields, label, weight = self.make_pairs(batch, key, axis_name)
    masked = mlm.mask_batch(self.masking, {**batch, **fields}, key)
    return {**masked, "pair_label": label, "pair_weight": weight}

  def loss_counts(self, corrupted):
    return {"mlm_loss": jnp.sum(corrupted["weights"]),
            f"{self.name}_loss": jnp.sum(corrupted["pair_weight"])}

  def matmuls(self, batch_size, seq_len):
    h = self.encoder.hidden_size
    return mlm.MaskedLM(self.encoder, self.masking).matmuls(
        batch_size, seq_len) + [
            flops.Matmul("pooler", 1, batch_size, h, h, 1),
            flops.Matmul("pair classifier", 1, batch_size, h, 2, 1)]
