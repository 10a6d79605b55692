"""ELECTRA's replaced-token detection: a small generator fills the masks, a
discriminator tells replaced tokens from original ones.

In one jitted step: the batch is masked (`config.masking`; ELECTRA's own
setting is 85% [MASK], 15% kept); the generator, a narrower encoder sharing
the discriminator's token, position and segment embeddings (and their
LayerNorm), is trained as an MLM at the masked slots, and a token is
sampled from its softmax at each (no gradient flows through the sample);
the discriminator reads the original tokens with the samples put in and
predicts, at every non-padding token, whether it was replaced (a sample
equal to the original counts as original). Loss = generator MLM +
`discriminator_weight` * discriminator loss (ELECTRA: 50).

The generator is `generator_size` of the discriminator's width (ELECTRA-
base: 1/3), in whole attention heads of the discriminator's head width,
with as many layers unless `generator_layers` says otherwise. Parameters:
`bert` (the discriminator: what downstream tasks use), `discriminator`
(its head) and `generator` (encoder layers, an input projection when the
widths differ, its MLM head tied to the shared embeddings).

Logged: `loss`; `generator_loss` and `generator_accuracy` at the masked
slots; `discriminator_loss` per token, `discriminator_accuracy`, and its
accuracy on `replaced` and on `original` tokens; `original_share`, the
accuracy of always answering "original" (the trivial baseline).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax import dropout as dropout_lib
from mlm_jax import flops
from mlm_jax import masking as masking_lib
from mlm_jax import model as model_lib
from mlm_jax import tokenizer as tok
from mlm_jax.errors import check as _check
from mlm_jax.objectives import base
from mlm_jax.objectives import heads
from mlm_jax.objectives import losses
from mlm_jax.objectives import mlm

USES_MASKING = True
# Folded into the run's key for the generator's samples, apart from masks.
SAMPLE_KEY = 2


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Generator width as a fraction of the discriminator's hidden size,
  # rounded to whole heads of the discriminator's head width (ELECTRA-base:
  # 1/3, i.e. 256 of 768; at most 1).
  c.generator_size = 1 / 3
  # Generator layers; 0: as many as the discriminator.
  c.generator_layers = 0
  # Weight of the discriminator's loss (per token) against the generator's
  # (per masked token).
  c.discriminator_weight = 50.0
  # Temperature of the generator's samples (ELECTRA: 1); above 1 they are
  # flatter, so replacements are easier to spot.
  c.temperature = 1.0
  return c


def check(config: ml_collections.ConfigDict) -> None:
  e, m = config.objective.electra, config.model
  _check(0.0 < e.generator_size <= 1.0, "objective.electra.generator_size",
         f"{e.generator_size} makes a generator "
         + ("wider than the discriminator" if e.generator_size > 1
            else "of no width"),
         "use a fraction in (0, 1], e.g. 1/3 (ELECTRA-base)")
  _check(0 <= e.generator_layers <= m.num_layers,
         "objective.electra.generator_layers",
         f"{e.generator_layers} is outside [0, model.num_layers="
         f"{m.num_layers}]", "use 0 (as many as the discriminator) or fewer")
  _check(e.discriminator_weight > 0, "objective.electra.discriminator_weight",
         f"{e.discriminator_weight} is not positive", "use e.g. 50 (ELECTRA)")
  _check(e.temperature > 0, "objective.electra.temperature",
         f"{e.temperature} is not positive", "use 1 (ELECTRA)")


def generator_config(disc: model_lib.EncoderConfig, size: float,
                     layers: int = 0) -> model_lib.EncoderConfig:
  """The generator's encoder: `size` of the width in whole heads."""
  head_dim = disc.hidden_size // disc.num_heads
  num_heads = max(1, round(disc.hidden_size * size / head_dim))
  hidden = num_heads * head_dim
  return dataclasses.replace(
      disc, hidden_size=hidden, num_heads=num_heads,
      intermediate_size=disc.intermediate_size * hidden // disc.hidden_size,
      num_layers=layers or disc.num_layers)


def build(config: ml_collections.ConfigDict, word_starts=None) -> Electra:
  disc = model_lib.EncoderConfig.from_config(config)
  e = config.objective.electra
  return Electra(disc, generator_config(disc, e.generator_size,
                                        e.generator_layers),
                 masking_lib.Masking.from_config(config, word_starts),
                 e.discriminator_weight, e.temperature)


def exp_noise(keys: jax.Array, shape: tuple[int, int],
              temperature: float = 1.0) -> jax.Array:
  """[B, *shape] Exp(1) noise to the power `temperature`, one key per
  example (a counter hash of the element's index: cheap on CPU, the same
  however the batch is split).

  argmax p_v / E_v^T = argmax log p_v / T + Gumbel: a sample of the
  softmax at temperature T.
  """
  def one(key):
    bits = dropout_lib.hash_bits(key, shape)
    u = ((bits >> 8).astype(jnp.float32) + 0.5) * (2.0 ** -24)  # (0, 1)
    e = -jnp.log(u)
    return e if temperature == 1.0 else e ** temperature
  return jax.vmap(one)(keys)


class Generator(nn.Module):
  """The generator's layers over the shared embeddings, and its MLM head."""
  cfg: model_lib.EncoderConfig
  embedding_width: int

  def setup(self):
    cfg = self.cfg
    self.project = (model_lib.dense(cfg, cfg.hidden_size, "embeddings_project")
                    if cfg.hidden_size != self.embedding_width else None)
    self.stack = model_lib.TransformerStack(cfg, name="encoder")
    self.final_norm = (model_lib.layer_norm(cfg, "final_LayerNorm")
                       if cfg.pre_layer_norm else None)
    self.mlm_head = heads.MLMHead(cfg, width=self.embedding_width)
    nn.share_scope(self, self.mlm_head)

  def __call__(self, embedded, bias, deterministic: bool):
    x = embedded if self.project is None else self.project(embedded)
    x = self.stack(x, bias, deterministic)
    return x if self.final_norm is None else self.final_norm(x)


class ElectraModel(nn.Module):
  """Discriminator (`bert` + `discriminator`) and generator."""
  cfg: model_lib.EncoderConfig
  generator_cfg: model_lib.EncoderConfig
  temperature: float = 1.0

  def setup(self):
    cfg = self.cfg
    self.bert = model_lib.Encoder(cfg)
    self.generator = Generator(self.generator_cfg, cfg.hidden_size)
    self.discriminator = DiscriminatorHead(cfg)

  def __call__(self, batch: base.Batch, *,
               deterministic: bool = True) -> base.Metrics:
    original, masked = batch["original"], batch["tokens"]
    segments, positions = batch["segment_ids"], batch["positions"]
    documents = batch.get("document_ids")
    embedded = self.bert.embed(masked, segments, positions,
                               deterministic=deterministic)
    hidden = self.generator(
        embedded, model_lib.encoder_bias(self.generator_cfg, masked,
                                         documents, positions=positions),
        deterministic)
    slots, weights = batch["mask_positions"], batch["weights"]
    noise = exp_noise(batch["sample_keys"],
                      (slots.shape[1], self.cfg.vocab_size), self.temperature)
    gen, samples = self.generator.mlm_head(
        hidden, slots, self.bert.embedding_table(hidden.dtype),
        batch["labels"], weights, noise)
    # The discriminator's input: the originals, samples at the used slots.
    rows = jnp.arange(original.shape[0])[:, None]
    target = jnp.where(weights > 0, slots, original.shape[1])
    corrupted = original.at[rows, target].set(samples, mode="drop")
    replaced = corrupted != original
    real = (original != tok.PAD_ID).astype(jnp.float32)
    hidden = self.bert(corrupted, segments, positions,
                       deterministic=deterministic, document_ids=documents)
    logits = self.discriminator(hidden)
    disc = losses.sigmoid_cross_entropy(logits, replaced, real)
    right = ((logits > 0) == replaced).astype(jnp.float32) * real
    replaced = replaced.astype(jnp.float32) * real
    n_replaced = jnp.sum(replaced)
    return {
        "generator_loss": losses.pair(gen.loss, gen.count),
        "generator_accuracy": losses.pair(gen.correct, gen.count),
        "discriminator_loss": losses.pair(disc.loss, disc.count),
        "discriminator_accuracy": losses.pair(disc.correct, disc.count),
        "replaced_accuracy": losses.pair(jnp.sum(right * replaced),
                                         n_replaced),
        "original_accuracy": losses.pair(jnp.sum(right * (real - replaced)),
                                         disc.count - n_replaced),
        "original_share": losses.pair(disc.count - n_replaced, disc.count),
    }


class DiscriminatorHead(nn.Module):
  """Dense, GELU, then one logit per token: 'replaced' when positive."""
  cfg: model_lib.EncoderConfig

  @nn.compact
  def __call__(self, hidden):
    h = model_lib.dense(self.cfg, self.cfg.hidden_size, "dense")(hidden)
    h = nn.gelu(h, approximate=False)
    return model_lib.FlatDense(self.cfg, (1,), name="prediction")(h)[..., 0]


@dataclasses.dataclass(frozen=True)
class Electra(base.Objective):
  """Replaced-token detection with a jointly trained generator."""
  name = "electra"
  encoder: model_lib.EncoderConfig
  generator: model_lib.EncoderConfig
  masking: masking_lib.Masking
  discriminator_weight: float = 50.0
  temperature: float = 1.0

  @property
  def encoder_config(self) -> model_lib.EncoderConfig:
    return self.encoder

  @property
  def loss_weights(self) -> Mapping[str, float]:
    return {"generator_loss": 1.0,
            "discriminator_loss": self.discriminator_weight}

  def module(self) -> nn.Module:
    return ElectraModel(self.encoder, self.generator, self.temperature)

  def corrupt(self, batch, key, *, axis_name=None):
    del axis_name  # each example is corrupted on its own
    masked = mlm.mask_batch(self.masking, batch, key)
    keys = masking_lib.keys_for(jax.random.fold_in(key, SAMPLE_KEY),
                                batch["example_id"])
    return {**masked, "original": batch["tokens"],
            "sample_keys": jax.random.key_data(keys)}

  def loss_counts(self, corrupted):
    return {"generator_loss": jnp.sum(corrupted["weights"]),
            "discriminator_loss": jnp.sum(
                corrupted["original"] != tok.PAD_ID).astype(jnp.float32)}

  def matmuls(self, batch_size, seq_len):
    d, g = self.encoder, self.generator
    tokens, slots = batch_size * seq_len, batch_size * self.masking.max_predictions
    out = flops.encoder_matmuls(g, batch_size, seq_len, "generator ")
    if g.hidden_size != d.hidden_size:
      out.append(flops.Matmul("generator embeddings projection", 1, tokens,
                              d.hidden_size, g.hidden_size, 1))
    out += flops.mlm_head_matmuls(g.hidden_size, d.hidden_size, d.vocab_size,
                                  slots, "generator ")
    out += flops.encoder_matmuls(d, batch_size, seq_len)
    return out + [
        flops.Matmul("discriminator dense", 1, tokens, d.hidden_size,
                     d.hidden_size, 1),
        flops.Matmul("discriminator logit", 1, tokens, d.hidden_size, 1, 1)]
