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


def batch_of(tokens: np.ndarray) -> dict[str, np.ndarray]:
  """The host batch of given [B, L] `tokens` (one segment; positions
  0, 1, ... at real tokens and 0 at [PAD]; example ids 0, 1, ...)."""
  b, l = tokens.shape
  real = tokens != tok.PAD_ID
  return {"tokens": tokens, "segment_ids": np.zeros_like(tokens),
          "positions": np.where(real, np.arange(l), 0).astype(np.int32),
          "example_id": np.arange(b, dtype=np.uint32)}


def token_rows(rng: np.random.Generator, batch: int, length: int,
               vocab_size: int, pad_from: int | None = None,
               seps: int = 0) -> np.ndarray:
  """[batch, length] int32 rows [CLS] ordinary tokens [SEP] [PAD]..., with
  about 2% [UNK] and `seps` inner [SEP]s; each row ends at `length` or, with
  `pad_from`, at a random point from there on (masking tests)."""
  t = rng.integers(tok.NUM_SPECIAL_TOKENS, vocab_size, size=(batch, length))
  t[rng.random(t.shape) < 0.02] = tok.UNK_ID
  for _ in range(seps):
    t[np.arange(batch), rng.integers(2, length - 2, batch)] = tok.SEP_ID
  t[:, 0] = tok.CLS_ID
  ends = (np.full(batch, length - 1) if pad_from is None
          else rng.integers(pad_from, length, size=batch))
  for i, e in enumerate(ends):
    t[i, e] = tok.SEP_ID
    t[i, e + 1:] = tok.PAD_ID
  return t.astype(np.int32)
