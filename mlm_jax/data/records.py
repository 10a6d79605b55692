"""Packed examples as ArrayRecord shards: the on-disk format of a dataset.

One record is one example: its fields stored back to back as raw
little-endian arrays of a fixed layout (no TensorFlow, no protobuf), so
decoding is a few `np.frombuffer` slices:

  tokens        [seq_len]  uint16 (vocab <= 65,536) or int32
  segment_ids   [seq_len]  uint8   (BERT token type: 0, or 1 for segment B)
  document_ids  [seq_len]  uint16  (1, 2, ... within the example; 0 = pad)

`positions` are not stored: they are 0..seq_len-1 for every example.
ArrayRecord files give grain random access by global index across shards.
Shards are written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import grain
import numpy as np
from array_record.python import array_record_module

FIELDS = ("tokens", "segment_ids", "document_ids")
# Records are read one at a time in random order: no grouping.
_WRITER_OPTIONS = "group_size:1"


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.int32)


def _layout(seq_len: int, vocab_size: int):
  dtypes = (token_dtype(vocab_size), np.dtype(np.uint8), np.dtype(np.uint16))
  out, offset = [], 0
  for name, dtype in zip(FIELDS, dtypes):
    out.append((name, dtype, offset))
    offset += dtype.itemsize * seq_len
  return out, offset


def encode(example: dict[str, np.ndarray], vocab_size: int) -> bytes:
  """One example (FIELDS -> [seq_len] ints) -> its record bytes."""
  seq_len = len(example["tokens"])
  layout, _ = _layout(seq_len, vocab_size)
  return b"".join(np.asarray(example[name]).astype(dtype.newbyteorder("<"))
                  .tobytes() for name, dtype, _ in layout)


class Decoder:
  """Record bytes -> dict of int32 [seq_len] arrays (plus `positions`)."""

  def __init__(self, seq_len: int, vocab_size: int):
    self.seq_len = seq_len
    self._layout, self._size = _layout(seq_len, vocab_size)
    self._positions = np.arange(seq_len, dtype=np.int32)

  def __call__(self, record: bytes) -> dict[str, np.ndarray]:
    if len(record) != self._size:
      raise ValueError(f"A record of {len(record)} bytes does not hold an "
                       f"example of seq_len {self.seq_len} ({self._size} "
                       "bytes): the dataset and its manifest disagree.")
    out = {name: np.frombuffer(record, dtype.newbyteorder("<"), self.seq_len,
                               offset).astype(np.int32)
           for name, dtype, offset in self._layout}
    out["positions"] = self._positions
    return out


def write_shard(path: str | os.PathLike, examples: dict[str, np.ndarray],
                vocab_size: int) -> int:
  """Writes examples (FIELDS -> [N, seq_len]) to one shard; returns N.

  Written to `<path>.tmp` and renamed, so a shard that exists is complete.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
  n = len(examples["tokens"])
  try:
    for i in range(n):
      writer.write(encode({k: examples[k][i] for k in FIELDS}, vocab_size))
  finally:
    writer.close()
  os.replace(tmp, path)
  return n


def source(paths: Sequence[str | os.PathLike], seq_len: int,
           vocab_size: int) -> grain.MapDataset:
  """Random access to the decoded examples of the shards, in order."""
  records = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
  return grain.MapDataset.source(records).map(Decoder(seq_len, vocab_size))
