"""Hugging Face Flax peers of the objectives beyond BERT's MLM.

Each is the Hugging Face model a user of transformers' Flax examples would
train for that objective, in the examples' style: inputs prepared on the
host in numpy every step (inside the timed step, as in their loops), logits
and losses over all [B, L] positions, optax AdamW with their weight-decay
mask, the step jitted with the state donated.

  nsp, sop    FlaxBertForPreTraining: run_mlm_flax.py's masking plus the
              pair negatives made on the host, MLM + pair cross-entropy.
  electra     FlaxElectraForMaskedLM (the generator, reading the
              discriminator's embeddings) and FlaxElectraForPreTraining (the
              discriminator); samples from the generator's full softmax.
              transformers has no ELECTRA pre-training example: this is the
              direct assembly of its two models.
  causal_lm,  FlaxBertForCausalLM (is_decoder) as run_clm_flax.py trains
  prefix_lm   it: shifted labels, mean cross-entropy. Hugging Face's BERT
              has no prefix-LM mask; its causal step stands in for both.

run_mlm_flax.py's masking, loss and optimizer come from `flax_recipe`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import common_utils
from flax.training import train_state

from mlm_jax import objectives
from mlm_jax import tokenizer as tok
from mlm_jax.bench import flax_recipe
from mlm_jax.bench import hf

# (state, step, rng, make_batch): step(state, batch, rng) -> (state,
# metrics, rng); make_batch() -> the host batch of one step.
Peer = tuple[train_state.TrainState, Callable, jax.Array, Callable[[], dict]]


def _peer(config, apply_fn, params, step, make_batch) -> Peer:
  """`flax_recipe.trainer`'s state, step and key, and the batch maker."""
  return (*flax_recipe.trainer(config, apply_fn, params, step), make_batch)


def host_pairs(tokens: np.ndarray, segments: np.ndarray, kind: str,
               rate: float, rng: np.random.RandomState
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Negatives of [CLS] A [SEP] B [SEP] rows on the host, as BERT's and
  ALBERT's data scripts make them: (tokens, segment ids, labels)."""
  tokens, segments = tokens.copy(), segments.copy()
  rows, width = tokens.shape
  labels = (rng.random_sample(rows) < rate).astype(np.int32)
  originals = tokens.copy()
  for r in np.nonzero(labels)[0]:
    row = originals[r][originals[r] != tok.PAD_ID]
    b_start = int(np.argmax(row == tok.SEP_ID)) + 1
    a, b = row[1:b_start - 1], row[b_start:-1]
    if kind == "sop":
      a, b = b, a
    else:  # B from another row
      other = originals[(r + 1 + rng.randint(rows - 1)) % rows]
      other = other[other != tok.PAD_ID]
      b = other[int(np.argmax(other == tok.SEP_ID)) + 1:-1]
      b = b[:width - 3 - len(a)]
    new = np.concatenate([[tok.CLS_ID], a, [tok.SEP_ID], b, [tok.SEP_ID]])
    tokens[r] = tok.PAD_ID
    tokens[r, :len(new)] = new
    segments[r] = 0
    segments[r, len(a) + 2:len(new)] = 1
  return tokens, segments, labels


def build_pretraining(config: ml_collections.ConfigDict,
                      batch: dict[str, np.ndarray]) -> Peer:
  """FlaxBertForPreTraining trained on MLM + NSP (or SOP)."""
  transformers = hf.require("transformers")
  model = transformers.FlaxBertForPreTraining(
      hf.bert_config(config), seed=config.seed,
      dtype=getattr(jnp, config.model.dtype))
  kind = config.objective.name
  rate = config.objective[kind].negative_rate
  rng = np.random.RandomState(config.seed)

  def make_batch():
    tokens, segments, labels = host_pairs(
        batch["tokens"], batch["segment_ids"], kind, rate, rng)
    input_ids, mlm_labels = flax_recipe.mask_tokens(
        tokens, hf.special_tokens_mask(tokens), config, rng)
    return {"input_ids": input_ids, "attention_mask":
            (tokens != tok.PAD_ID).astype(np.int32),
            "token_type_ids": segments, "labels": mlm_labels,
            "next_sentence_label": labels}

  def step(state, batch, dropout_rng):
    dropout_rng, new_rng = jax.random.split(dropout_rng)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask",
                                    "token_type_ids")}

    def loss_fn(params):
      out = state.apply_fn(**inputs, params=params, dropout_rng=dropout_rng,
                           train=True)
      pair = optax.softmax_cross_entropy_with_integer_labels(
          out.seq_relationship_logits, batch["next_sentence_label"]).mean()
      mlm = flax_recipe.mlm_loss(out.prediction_logits, batch["labels"])
      return mlm + pair

    loss, grad = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grad), {"loss": loss}, new_rng

  return _peer(config, model.__call__, model.params, step, make_batch)


def _electra_configs(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """HF ElectraConfigs of our discriminator and generator."""
  transformers = hf.require("transformers")
  bert = hf.bert_config(config)
  generator = objectives.build(config).generator
  common = {k: getattr(bert, k) for k in (
      "vocab_size", "max_position_embeddings", "type_vocab_size",
      "initializer_range", "layer_norm_eps", "hidden_dropout_prob",
      "attention_probs_dropout_prob", "pad_token_id")}
  disc = transformers.ElectraConfig(
      embedding_size=bert.hidden_size, hidden_size=bert.hidden_size,
      num_hidden_layers=bert.num_hidden_layers,
      num_attention_heads=bert.num_attention_heads,
      intermediate_size=bert.intermediate_size, hidden_act="gelu", **common)
  gen = transformers.ElectraConfig(
      embedding_size=bert.hidden_size, hidden_size=generator.hidden_size,
      num_hidden_layers=generator.num_layers,
      num_attention_heads=generator.num_heads,
      intermediate_size=generator.intermediate_size, hidden_act="gelu",
      **common)
  return disc, gen


def build_electra(config: ml_collections.ConfigDict,
                  batch: dict[str, np.ndarray]) -> Peer:
  """HF's ELECTRA generator and discriminator in one step, embeddings
  shared (the generator reads the discriminator's)."""
  transformers = hf.require("transformers")
  disc_cfg, gen_cfg = _electra_configs(config)
  dtype = getattr(jnp, config.model.dtype)
  disc = transformers.FlaxElectraForPreTraining(disc_cfg, seed=config.seed,
                                                dtype=dtype)
  gen = transformers.FlaxElectraForMaskedLM(gen_cfg, seed=config.seed + 1,
                                            dtype=dtype)
  gen_params = dict(gen.params)
  gen_params["electra"] = {k: v for k, v in gen.params["electra"].items()
                           if k != "embeddings"}
  params = {"discriminator": disc.params, "generator": gen_params}
  weight = config.objective.electra.discriminator_weight
  tokens = batch["tokens"]
  special = hf.special_tokens_mask(tokens)
  rng = np.random.RandomState(config.seed)

  def make_batch():
    input_ids, labels = flax_recipe.mask_tokens(tokens, special, config, rng)
    return {"input_ids": input_ids, "labels": labels, "original": tokens,
            "attention_mask": (tokens != tok.PAD_ID).astype(np.int32),
            "token_type_ids": batch["segment_ids"]}

  def step(state, batch, dropout_rng):
    dropout_rng, sample_rng, new_rng = jax.random.split(dropout_rng, 3)
    shared = {"attention_mask": batch["attention_mask"],
              "token_type_ids": batch["token_type_ids"],
              "dropout_rng": dropout_rng, "train": True}

    def loss_fn(params):
      g = dict(params["generator"])
      g["electra"] = {**g["electra"], "embeddings":
                      params["discriminator"]["electra"]["embeddings"]}
      logits = gen(batch["input_ids"], params=g, **shared).logits
      gen_loss = flax_recipe.mlm_loss(logits, batch["labels"])
      sampled = jax.lax.stop_gradient(jax.random.categorical(
          sample_rng, logits))
      masked = batch["labels"] > 0
      fake = jnp.where(masked, sampled, batch["original"])
      replaced = (fake != batch["original"]).astype(jnp.float32)
      d_logits = disc(fake, params=params["discriminator"], **shared).logits
      real = batch["attention_mask"].astype(jnp.float32)
      d_loss = (optax.sigmoid_binary_cross_entropy(d_logits, replaced)
                * real).sum() / real.sum()
      return gen_loss + weight * d_loss

    loss, grad = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grad), {"loss": loss}, new_rng

  return _peer(config, None, params, step, make_batch)


def build_causal(config: ml_collections.ConfigDict,
                 batch: dict[str, np.ndarray]) -> Peer:
  """FlaxBertForCausalLM as run_clm_flax.py trains a causal LM."""
  transformers = hf.require("transformers")
  bert = hf.bert_config(config)
  bert.is_decoder = True
  model = transformers.FlaxBertForCausalLM(
      bert, seed=config.seed, dtype=getattr(jnp, config.model.dtype))
  host = {"input_ids": batch["tokens"],
          "attention_mask": (batch["tokens"] != tok.PAD_ID).astype(np.int32),
          "token_type_ids": batch["segment_ids"]}

  def step(state, batch, dropout_rng):
    dropout_rng, new_rng = jax.random.split(dropout_rng)

    def loss_fn(params):
      logits = state.apply_fn(**batch, params=params, dropout_rng=dropout_rng,
                              train=True).logits
      shift_logits, labels = logits[..., :-1, :], batch["input_ids"][..., 1:]
      return optax.softmax_cross_entropy(
          shift_logits, common_utils.onehot(labels, logits.shape[-1])).mean()

    loss, grad = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grad), {"loss": loss}, new_rng

  return _peer(config, model.__call__, model.params, step, lambda: host)


BUILDERS: dict[str, Callable[..., Peer]] = {
    "nsp": build_pretraining, "sop": build_pretraining,
    "electra": build_electra, "causal_lm": build_causal,
    "prefix_lm": build_causal,
}


def build(config: ml_collections.ConfigDict,
          batch: dict[str, np.ndarray]) -> Peer | None:
  """The peer of `config.objective.name`, or None for BERT's MLM (which
  `peer_flax.build_hf_flax` covers, whatever the masking strategy)."""
  builder = BUILDERS.get(config.objective.name)
  return None if builder is None else functools.partial(builder, config)(
      batch)
