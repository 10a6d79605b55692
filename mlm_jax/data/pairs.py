"""Sentence-pair examples: [CLS] A [SEP] B [SEP], segment ids 0 then 1.

For objectives that need two segments (next-sentence or sentence-order
prediction, and BERT's original input format). As in BERT's
`create_pretraining_data`, a document's sentences are gathered until they
fill an example, then cut at a random sentence boundary into A and B (a lone
sentence is cut in the middle of its tokens); an over-long pair is trimmed
from the end of the longer segment. Both segments come from the same
document and in order: an objective that wants negatives (a swapped order,
a B from elsewhere) makes them from these, on device.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from mlm_jax import tokenizer as tok

# A sentence ends at . ! ? followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
  """Cuts a document into sentences (a simple rule; no language model)."""
  return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _pair(chunk: list[np.ndarray], rng: np.random.Generator, budget: int):
  if len(chunk) >= 2:
    cut = int(rng.integers(1, len(chunk)))
    a, b = np.concatenate(chunk[:cut]), np.concatenate(chunk[cut:])
  else:
    whole = chunk[0]
    a, b = whole[:len(whole) // 2], whole[len(whole) // 2:]
  while len(a) + len(b) > budget:  # trim the longer segment's end
    if len(a) > len(b):
      a = a[:-1]
    else:
      b = b[:-1]
  return a, b


def pack_pairs(documents: Iterable[Sequence[np.ndarray]], seq_len: int, *,
               seed: int, cls_id: int = tok.CLS_ID, sep_id: int = tok.SEP_ID,
               pad_id: int = tok.PAD_ID) -> dict[str, np.ndarray]:
  """Packs documents, given as lists of tokenized sentences, into pairs.

  Args:
    documents: per document, its sentences as 1-D int arrays (no specials).
    seq_len: tokens per example, the three special tokens included.
    seed: seeds the choice of cut points (deterministic output).
  Returns:
    int32 [N, seq_len] arrays `tokens`, `segment_ids` (0 for [CLS] A [SEP],
    1 for B [SEP], 0 at padding), `positions` (0.. at real tokens, 0 at
    padding) and `document_ids` (1 at real tokens, 0 at padding).
  """
  if seq_len < 8:
    raise ValueError(f"seq_len={seq_len} is too short for sentence pairs; "
                     "use at least 8.")
  budget = seq_len - 3
  rng = np.random.default_rng(seed)
  rows = []
  for sentences in documents:
    sentences = [np.asarray(s, np.int32) for s in sentences if len(s)]
    chunk, length = [], 0
    for i, sentence in enumerate(sentences):
      chunk.append(sentence)
      length += len(sentence)
      if length >= budget or i == len(sentences) - 1:
        if length >= 2:
          rows.append(_pair(chunk, rng, budget))
        chunk, length = [], 0
  tokens = np.full((len(rows), seq_len), pad_id, np.int32)
  segments = np.zeros_like(tokens)
  for r, (a, b) in enumerate(rows):
    row = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]])
    tokens[r, :len(row)] = row
    segments[r, len(a) + 2:len(row)] = 1
  real = tokens != pad_id
  return {
      "tokens": tokens,
      "segment_ids": segments,
      "positions": np.where(real, np.arange(seq_len, dtype=np.int32), 0),
      "document_ids": real.astype(np.int32),
  }
