"""Packing tokenized documents into fixed-length examples; held-out splits.

Documents are laid end to end, a [SEP] after each, and the stream is cut
into examples of `seq_len` tokens:

  [CLS] doc1 ... [SEP] doc2 ... [SEP]        a short document is followed by
  [CLS] ... doc2 continued ... [SEP]         the next one; a long one runs on
  [CLS] ... doc2 ends [SEP] doc3 [SEP] [PAD] into the next example(s).

Each example holds seq_len - 2 stream slots between its [CLS] and a closing
[SEP]. Two refinements keep separators single:
  * a document whose last token fills an example's last slot gets no [SEP]
    of its own: the closing [SEP] ends it (no example starts "[CLS] [SEP]");
  * when an example's last slot holds a document's [SEP], that [SEP] closes
    the example and the final position becomes [PAD] (no "[SEP] [SEP]").
So [PAD] appears at the end of the last example, and as one trailing [PAD]
in about 1 of every seq_len - 2 document ends; `packing_efficiency` says how
much that costs (well under 1% for documents of a few hundred tokens).
Packing is a pure function of its input, so shards can be packed
independently.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mlm_jax import tokenizer as tok

MIN_SEQ_LEN = 8


def pack_documents(
    documents: Iterable[np.ndarray],
    seq_len: int,
    *,
    cls_id: int = tok.CLS_ID,
    sep_id: int = tok.SEP_ID,
    pad_id: int = tok.PAD_ID,
) -> dict[str, np.ndarray]:
  """Packs token documents into [CLS] ... [SEP] examples of `seq_len` tokens.

  Args:
    documents: 1-D integer arrays of token ids without special tokens (as
      from `Tokenizer.encode`); empty ones are skipped. They must not contain
      `pad_id`, which marks padding.
    seq_len: tokens per example, [CLS] and closing [SEP] included.
    cls_id, sep_id, pad_id: the special ids (default: the tokenizer's).

  Returns:
    A dict of int32 arrays of shape [num_examples, seq_len]:
      tokens: the token ids; [PAD] only in a suffix of each example.
      segment_ids: BERT token-type ids: 0 everywhere (single-segment
        examples; pair inputs come with sentence-level objectives).
      positions: 0 .. seq_len-1 at real tokens, 0 at padding.
      document_ids: 1, 2, 3... numbering the documents within the example;
        [CLS] belongs to the first one, a [SEP] to the one it ends; 0 at
        padding. Lets the model keep attention within documents.

  Raises:
    ValueError: seq_len below MIN_SEQ_LEN, a document that is not a 1-D
      integer array, or a document containing pad_id.
  """
  if seq_len < MIN_SEQ_LEN:
    raise ValueError(f"seq_len={seq_len} is too short to pack documents into: "
                     f"need >= {MIN_SEQ_LEN} ([CLS] + text + [SEP]).")
  docs, doc_index, lengths = [], [], []
  for i, doc in enumerate(documents):
    doc = np.asarray(doc)
    # dtype.kind, not np.issubdtype: this loop runs once per document.
    if doc.ndim != 1 or (doc.dtype.kind not in "iu" and doc.size):
      raise ValueError(f"Document {i} must be a 1-D integer array of token "
                       f"ids, got shape {doc.shape} dtype {doc.dtype}.")
    if doc.size:
      docs.append(doc)
      doc_index.append(i)
      lengths.append(doc.size)
  width = seq_len - 2  # Stream slots between [CLS] and the closing [SEP].
  if not docs:
    empty = np.zeros((0, seq_len), np.int32)
    return {k: empty.copy()
            for k in ("tokens", "segment_ids", "positions", "document_ids")}

  lengths = np.array(lengths, np.int64)
  content = np.concatenate(docs).astype(np.int32, copy=False)
  if np.any(content == pad_id):
    bad = np.searchsorted(np.cumsum(lengths), np.argmax(content == pad_id),
                          side="right")
    raise ValueError(f"Document {doc_index[bad]} contains pad_id={pad_id}, "
                     "which would read as padding.")

  # Which documents get a [SEP] slot: not one ending exactly at an example
  # boundary. Each such skip shifts every later document, so this is a
  # sequential loop, but over documents (not tokens) and on Python ints.
  has_sep, pos = [], 0
  for n in lengths.tolist():
    end = pos + n
    keep = end % width != 0
    has_sep.append(keep)
    pos = end + keep
  has_sep = np.array(has_sep, bool)
  total, num_examples = pos, -(-pos // width)

  # The slot stream: documents with their [SEP]s, padded to whole examples.
  sep_slot = np.cumsum(lengths)[has_sep] + np.arange(np.count_nonzero(has_sep))
  is_sep = np.zeros(num_examples * width, bool)
  is_sep[sep_slot] = True
  slots = np.full(num_examples * width, pad_id, np.int32)
  slots[:total][~is_sep[:total]] = content
  slots[sep_slot] = sep_id
  slot_doc = np.zeros(num_examples * width, np.int32)  # Global, 1-based.
  slot_doc[:total] = np.repeat(np.arange(1, len(docs) + 1, dtype=np.int32),
                               lengths + has_sep)
  slots = slots.reshape(num_examples, width)
  slot_doc = slot_doc.reshape(num_examples, width)
  # The closing [SEP] is needed unless the last slot already holds a
  # document's [SEP] (or padding, in the last example).
  last_is_sep = is_sep.reshape(num_examples, width)[:, -1]
  closing = (slots[:, -1] != pad_id) & ~last_is_sep

  tokens = np.empty((num_examples, seq_len), np.int32)
  tokens[:, 0] = cls_id
  tokens[:, 1:-1] = slots
  tokens[:, -1] = np.where(closing, sep_id, pad_id)
  real = tokens != pad_id

  # Renumber documents per example from 1: slot 0 always holds a document
  # token (never a [SEP], by the boundary rule above), so it is the first.
  doc_ids = np.empty((num_examples, seq_len), np.int32)
  doc_ids[:, 1:-1] = slot_doc
  doc_ids[:, 0] = slot_doc[:, 0]
  doc_ids[:, -1] = slot_doc[:, -1]
  doc_ids -= slot_doc[:, :1] - 1
  doc_ids[~real] = 0

  positions = np.where(real, np.arange(seq_len, dtype=np.int32), 0)
  return {
      "tokens": tokens,
      "segment_ids": np.zeros_like(tokens),
      "positions": positions.astype(np.int32),
      "document_ids": doc_ids,
  }


def packing_efficiency(tokens: np.ndarray, *,
                       pad_id: int = tok.PAD_ID) -> float:
  """Fraction of non-padding positions in `tokens` (any shape); 0.0 if empty."""
  tokens = np.asarray(tokens)
  return float(np.mean(tokens != pad_id)) if tokens.size else 0.0


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """A fixed integer hash (uint64 -> uint64), the same in any numpy version."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def split_train_eval(num_items: int, eval_fraction: float, *,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic random split of item indices into train and held-out eval.

  Items are packed examples (what the pipeline splits: every token is in
  exactly one example, so no text is in both sets, though a document cut
  across two examples can have one part in each). For a strict
  document-level split, call this on the number of documents and pack the
  two sets separately.

  The choice hashes (seed, index) with a fixed hash rather than numpy's
  generators, whose streams may change between versions: a resumed run
  always evaluates on the same items.

  Args:
    num_items: number of items to split.
    eval_fraction: in [0, 1); eval gets round(num_items * eval_fraction)
      items but at least 1 when eval_fraction > 0. 0 gives an empty eval set.
    seed: selects which items are held out.

  Returns:
    (train_idx, eval_idx): sorted, disjoint int64 arrays covering
    range(num_items).

  Raises:
    ValueError: eval_fraction outside [0, 1), or too few items to hold out
      eval items and still keep one for training.
  """
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
  if num_items < 0:
    raise ValueError(f"num_items must be >= 0, got {num_items}.")
  num_eval = 0
  if eval_fraction > 0:
    num_eval = max(1, round(num_items * eval_fraction))
    if num_items - num_eval < 1:
      raise ValueError(
          f"Too little data to hold out an eval set: {num_items} item(s) with "
          f"eval_fraction={eval_fraction} leaves none for training. Use a "
          "larger corpus or shorter seq_len, or set eval_fraction=0.")
  index = np.arange(num_items, dtype=np.uint64)
  with np.errstate(over="ignore"):  # uint64 wrap-around is the hash.
    seed_key = _splitmix64(np.array([seed % 2**64], np.uint64))
    keys = _splitmix64(index ^ seed_key)
  order = np.argsort(keys, kind="stable")
  eval_idx = np.sort(order[:num_eval]).astype(np.int64)
  train_idx = np.sort(order[num_eval:]).astype(np.int64)
  return train_idx, eval_idx
