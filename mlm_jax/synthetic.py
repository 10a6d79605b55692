"""Synthetic inputs of the training step: the host batch format without a
corpus, and a word-start table without a tokenizer.

For what needs a step's inputs but not their meaning: timing a step (the
benchmark) and tests of the step, the objectives and the parallel layouts.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from mlm_jax import tokenizer as tok


def batch(config: ml_collections.ConfigDict,
          seed: int = 0) -> dict[str, np.ndarray]:
  """A full-length host batch of random ordinary tokens, as the loader's.

  [train.batch_size, data.seq_len] `tokens`, `segment_ids`, `positions`
  and [train.batch_size] `example_id` (0, 1, ...). With
  `data.packing=pairs`, sentence pairs [CLS] A [SEP] B [SEP] with A ending
  at a random point of the middle half, and segment ids 0 then 1.
  """
  b, l = config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(seed)
  tokens = rng.integers(tok.NUM_SPECIAL_TOKENS, config.vocab_size,
                        (b, l)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = tok.CLS_ID, tok.SEP_ID
  segments = np.zeros_like(tokens)
  if config.data.packing == "pairs":
    cut = rng.integers(l // 4, 3 * l // 4, b)
    tokens[np.arange(b), cut] = tok.SEP_ID
    segments = (np.arange(l)[None, :] > cut[:, None]).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segments,
          "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
          "example_id": np.arange(b, dtype=np.uint32)}


def word_starts(vocab_size: int, seed: int = 0) -> np.ndarray:
  """A [vocab_size] bool word-start table, for whole-word masking without a
  tokenizer: two pieces in three start a word, about as in the offline
  corpus's tokenizer; a step's cost does not depend on which."""
  starts = np.random.default_rng(seed).random(vocab_size) < 2 / 3
  starts[:tok.NUM_SPECIAL_TOKENS] = True
  return starts
