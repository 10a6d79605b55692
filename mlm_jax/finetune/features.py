"""From labelled examples to batches of a few fixed shapes.

`encode` turns examples into token ids as BERT's `run_classifier` does:

  [CLS] A [SEP]              segment ids 0 ... 0
  [CLS] A [SEP] B [SEP]      segment ids 0 ... 0 1 ... 1

the longer text of a pair losing its last token first until the pair fits.
For tagging, each word is encoded alone, so pieces never straddle words,
and a word's tag sits on its first piece; later pieces and the specials
carry no tag, and words past `max_len` are cut whole.

`batches` then groups examples by length into `bucket_lengths`, a handful
of fixed lengths, and yields [batch_size, bucket_length] arrays: a jitted
step compiles once per bucket, never once per batch, and a short example
is not padded to `max_len`. Everything is host numpy.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from mlm_jax import tokenizer as tok
from mlm_jax.finetune.examples import Example
from mlm_jax.finetune.tasks import TaskDataError

# The example_id of a padding row (no example); never an example's index.
PAD_EXAMPLE_ID = np.iinfo(np.uint32).max
MIN_LEN = 8  # Also the shortest bucket: shorter would save nothing.


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A split's examples as token ids, in the split's order (N examples).

  kind: the task kind.
  tokens, segment_ids: per example, int32 [length], specials included.
  labels: [N] the class index (int32; -1 if unlabelled) or the value
    (float32; 0 if unlabelled); -1 for tagging.
  labelled: [N] bool, False for examples without a label (test splits).
  tags: tagging only: per example, int32 [length]: the tag index at the
    first piece of each word, -1 at other pieces and at the specials.
  word_positions: tagging only: per example, int32 [num_words]: where each
    word's first piece is, or -1 for a word cut off by `max_len`. Predicted
    tags go back to words through it.
  num_truncated: how many examples lost tokens (or words) to `max_len`.
  """
  kind: str
  tokens: tuple[np.ndarray, ...]
  segment_ids: tuple[np.ndarray, ...]
  labels: np.ndarray
  labelled: np.ndarray
  tags: tuple[np.ndarray, ...] = ()
  word_positions: tuple[np.ndarray, ...] = ()
  num_truncated: int = 0

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def lengths(self) -> np.ndarray:
    """[N] int: the number of tokens of each example."""
    return np.array([len(t) for t in self.tokens], np.int64)


def encode(examples: Sequence[Example], tokenizer: tok.Tokenizer, *,
           kind: str, labels: Sequence[str], max_len: int) -> Encoded:
  """Token ids, segment ids and label (or tag) indices of `examples`.

  Args:
    examples: one split's examples (texts all single, or all pairs).
    tokenizer: the pre-trained model's tokenizer.
    kind: 'classification', 'regression' or 'tagging'.
    labels: the label (tag) vocabulary, `examples.label_vocabulary`; a
      label's index in it is its class. Unused for regression.
    max_len: the most tokens of an example, specials included.

  Raises:
    TaskDataError: a label (tag) not in `labels` (see
      `examples.check_labels`), or texts of mixed counts.
  """
  if max_len < MIN_LEN:
    raise ValueError(f"max_len={max_len} is too short; need >= {MIN_LEN}.")
  index = {label: i for i, label in enumerate(labels)}
  if kind == "tagging":
    return _encode_words(examples, tokenizer, index, max_len)
  counts = {len(e.texts) for e in examples}
  if len(counts) > 1 or not counts <= {1, 2}:
    raise TaskDataError(f"Examples of {sorted(counts)} texts; each must "
                        "have 1 text, or each 2 (a pair task).")
  texts = [tokenizer.encode([e.texts[i] for e in examples])
           for i in range(max(counts, default=1))]
  tokens, segments, truncated = [], [], 0
  for pieces in zip(*texts):
    kept = _fit([len(p) for p in pieces], max_len - 1 - len(pieces))
    truncated += kept != [len(p) for p in pieces]
    parts, segment = [[tok.CLS_ID]], [0]
    for i, (p, n) in enumerate(zip(pieces, kept)):
      parts += [p[:n], [tok.SEP_ID]]
      segment += [i] * (n + 1)
    tokens.append(np.concatenate(parts).astype(np.int32))
    segments.append(np.array(segment, np.int32))
  labelled = np.array([e.label is not None for e in examples], bool)
  if kind == "regression":
    values = np.array([e.label or 0.0 for e in examples], np.float32)
  else:
    values = np.array([-1 if e.label is None else _index(index, e.label, i)
                       for i, e in enumerate(examples)], np.int32)
  return Encoded(kind, tuple(tokens), tuple(segments), values, labelled,
                 num_truncated=truncated)


def _fit(lengths: list[int], budget: int) -> list[int]:
  """BERT's `_truncate_seq_pair`: cut the longer text's end, one at a time.

  In closed form: a short text is kept whole; when both are long, they
  meet in the middle, A keeping the odd token (the loop cuts B on ties).
  """
  if sum(lengths) <= budget:
    return lengths
  if len(lengths) == 1:
    return [budget]
  a, b = lengths
  if 2 * min(a, b) <= budget:
    return [budget - b, b] if a > b else [a, budget - a]
  return [(budget + 1) // 2, budget // 2]


def _index(index: dict[str, int], label: str, example: int) -> int:
  if label not in index:
    raise TaskDataError(
        f"Example {example} has label {label!r}, which is not among the "
        f"{len(index)} training labels; check the split first with "
        "examples.check_labels.")
  return index[label]


def _encode_words(examples: Sequence[Example], tokenizer: tok.Tokenizer,
                  index: dict[str, int], max_len: int) -> Encoded:
  """`encode` for tagging: words encoded alone, the tag on the first piece."""
  pieces = iter(tokenizer.encode([w for e in examples for w in e.words]))
  tokens, tags, positions, truncated = [], [], [], 0
  for i, example in enumerate(examples):
    ids, tag_ids, full = [tok.CLS_ID], [-1], False
    where = np.full(len(example.words), -1, np.int32)
    for w in range(len(example.words)):
      word = next(pieces).tolist() or [tok.UNK_ID]  # E.g. a lone U+200B.
      full = full or len(ids) + len(word) > max_len - 1
      if full:  # Whole words are cut, and every one after them.
        continue
      where[w] = len(ids)
      tag = _index(index, example.tags[w], i) if example.tags else -1
      ids += word
      tag_ids += [tag] + [-1] * (len(word) - 1)
    truncated += full
    tokens.append(np.array(ids + [tok.SEP_ID], np.int32))
    tags.append(np.array(tag_ids + [-1], np.int32))
    positions.append(where)
  n = len(examples)
  return Encoded("tagging", tuple(tokens),
                 tuple(np.zeros(len(t), np.int32) for t in tokens),
                 np.full(n, -1, np.int32),
                 np.array([bool(e.tags) for e in examples], bool),
                 tuple(tags), tuple(positions), truncated)


def bucket_lengths(max_len: int, n: int = 4) -> tuple[int, ...]:
  """Up to `n` lengths: max_len / 8, / 4, / 2 and max_len (for n=4).

  Each rounded up to a multiple of 8 (at least MIN_LEN), and at most
  `max_len`, which is always the last.
  """
  lengths = {min(max_len, max(MIN_LEN, 8 * math.ceil(max_len / 2**k / 8)))
             for k in range(n)}
  return tuple(sorted(lengths))


def num_batches(encoded: Encoded, *, batch_size: int,
                buckets: Sequence[int]) -> int:
  """How many batches `batches` yields per pass, whatever the shuffle."""
  sizes = np.bincount(_buckets(encoded, buckets), minlength=len(buckets))
  return int(sum(math.ceil(s / batch_size) for s in sizes))


def batches(encoded: Encoded, *, batch_size: int, buckets: Sequence[int],
            shuffle: bool, seed: int = 0,
            epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `encoded` in batches of static shapes.

  Each example goes to the smallest bucket it fits; each batch holds one
  bucket's examples, the last batch of a bucket padded with [PAD] rows.
  With `shuffle`, the examples of each bucket and the order of all the
  batches are permuted, as a function of (seed, epoch) alone; without it,
  buckets come shortest first and examples in split order, each exactly
  once.

  Yields:
    Dicts of [batch_size, length] arrays, `length` one of `buckets`:
      tokens, segment_ids: int32 (segment 0 at padding).
      positions: int32, 0.. at real tokens, 0 at padding.
      example_id: uint32 [batch_size]: the example's index in `encoded`,
        PAD_EXAMPLE_ID for padding rows.
    and, for sentence tasks,
      label: [batch_size] int32 (-1 if none) or float32 (regression).
      weight: [batch_size] float32: 1 for a labelled example, 0 for padding
        rows and unlabelled examples.
    or, for tagging,
      tags: int32 (0 where no tag), tag_weight: float32, 1 at the first
        piece of each word of a labelled example, else 0.
  """
  bucket_of = _buckets(encoded, buckets)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(encoded)) if shuffle else np.arange(len(encoded))
  plan = []
  for b, length in enumerate(buckets):
    members = order[bucket_of[order] == b]
    plan += [(length, members[i:i + batch_size])
             for i in range(0, len(members), batch_size)]
  if shuffle:
    plan = [plan[i] for i in rng.permutation(len(plan))]
  for length, members in plan:
    yield _batch(encoded, members, batch_size, length)


def _buckets(encoded: Encoded, buckets: Sequence[int]) -> np.ndarray:
  """[N] the index of each example's bucket."""
  if list(buckets) != sorted(set(buckets)):
    raise ValueError(f"buckets must increase, got {tuple(buckets)}.")
  lengths = encoded.lengths
  bucket_of = np.searchsorted(np.asarray(buckets), lengths)
  if len(lengths) and bucket_of.max() == len(buckets):
    raise ValueError(f"An example of {lengths.max()} tokens is longer than "
                     f"the largest bucket, {buckets[-1]}: encode with "
                     "max_len <= it.")
  return bucket_of


def _batch(encoded: Encoded, members: np.ndarray, batch_size: int,
           length: int) -> dict[str, np.ndarray]:
  shape = (batch_size, length)
  out = {"tokens": np.full(shape, tok.PAD_ID, np.int32),
         "segment_ids": np.zeros(shape, np.int32),
         "positions": np.zeros(shape, np.int32),
         "example_id": np.full(batch_size, PAD_EXAMPLE_ID, np.uint32)}
  rows = len(members)
  out["example_id"][:rows] = members
  if encoded.kind == "tagging":
    out["tags"] = np.zeros(shape, np.int32)
    out["tag_weight"] = np.zeros(shape, np.float32)
  else:
    out["label"] = np.full(batch_size, -1 if encoded.kind == "classification"
                           else 0, encoded.labels.dtype)
    out["label"][:rows] = encoded.labels[members]
    out["weight"] = np.zeros(batch_size, np.float32)
    out["weight"][:rows] = encoded.labelled[members]
  for row, i in enumerate(members):
    n = len(encoded.tokens[i])
    out["tokens"][row, :n] = encoded.tokens[i]
    out["segment_ids"][row, :n] = encoded.segment_ids[i]
    out["positions"][row, :n] = np.arange(n)
    if encoded.kind == "tagging" and encoded.labelled[i]:
      out["tags"][row, :n] = np.maximum(encoded.tags[i], 0)
      out["tag_weight"][row, :n] = encoded.tags[i] >= 0
  return out
