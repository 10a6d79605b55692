"""What every Hugging Face peer of the benchmark shares.

transformers and torch are an optional extra (`.[bench]`), imported through
`require` only when a peer is built, so that the peers' modules import
without them. `bert_config` maps our model config onto theirs, and
`special_tokens_mask` is what their tokenizers return for our ids.
"""
from __future__ import annotations

import importlib
import types
from typing import Any

import ml_collections
import numpy as np

from mlm_jax import tokenizer as tok

INSTALL_HINT = (
    "pip install -e '.[bench]' (transformers==4.57.6, the last release with "
    "Flax models, and torch==2.13.0; a CPU-only machine wants torch's CPU "
    "build)")


class MissingPeerError(ImportError):
  """A peer's package is not installed; the message says how to add it."""


def require(module: str) -> types.ModuleType:
  """Imports `module`, or raises MissingPeerError naming the extra."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingPeerError(
        f"The Hugging Face peers of the benchmark need {module!r}, which "
        f"could not be imported ({e}). Install them with: {INSTALL_HINT}."
    ) from e


def flax_model(name: str) -> Any:
  """transformers' Flax model class `name` (e.g.
  'FlaxAutoModelForMaskedLM'); MissingPeerError without transformers or,
  after 4.57, without its Flax models."""
  transformers = require("transformers")
  model = getattr(transformers, name, None)
  if model is None:
    raise MissingPeerError(
        f"transformers {transformers.__version__} has no Flax models (they "
        f"were removed after 4.57). Install the pinned peers: "
        f"{INSTALL_HINT}.")
  return model


def bert_config(config: ml_collections.ConfigDict) -> Any:
  """Our model config as a `transformers.BertConfig` (post-LN BERT)."""
  m = config.model
  if (m.pre_layer_norm or not m.attend_across_documents
      or m.position_encoding != "learned"):
    raise ValueError("Hugging Face's BERT is post-LN, has learned position "
                     "embeddings and attends across documents; set "
                     "model.pre_layer_norm=False, "
                     "model.position_encoding=learned and "
                     "model.attend_across_documents=True to compare.")
  transformers = require("transformers")
  return transformers.BertConfig(
      vocab_size=config.vocab_size, hidden_size=m.hidden_size,
      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
      intermediate_size=m.intermediate_size, hidden_act="gelu",
      hidden_dropout_prob=m.dropout,
      attention_probs_dropout_prob=m.attention_dropout,
      max_position_embeddings=m.max_positions,
      type_vocab_size=m.type_vocab_size, initializer_range=m.init_std,
      layer_norm_eps=m.layer_norm_eps, pad_token_id=tok.PAD_ID)


def special_tokens_mask(tokens: np.ndarray) -> np.ndarray:
  """[B, L] int 1 at special ids, as a tokenizer's special_tokens_mask."""
  return (tokens < tok.NUM_SPECIAL_TOKENS).astype(np.int64)
