"""Tokenize, pack, split and write one chunk of documents: the unit of work
that data preparation spreads over CPU cores.

A chunk is a run of consecutive documents. Packing is a pure function of the
chunk, so chunks are independent: worker processes handle them in any
order and the shards come out the same for any number of workers. (Each
chunk ends in one partly padded example; chunks are megabytes long, so that
costs well under 0.1% of the tokens.) The spawned workers import only this
module's light dependencies.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

from mlm_jax import tokenizer as tok
from mlm_jax.data import packing
from mlm_jax.data import pairs
from mlm_jax.data import records


@dataclasses.dataclass(frozen=True)
class ChunkJob:
  """What a worker needs to turn a chunk into a train and an eval shard."""
  index: int
  texts: list[str]
  tokenizer_path: str
  seq_len: int
  packing: str  # 'stream' or 'pairs'
  eval_fraction: float
  out_dir: str
  # SentencePiece threads: all cores for one worker, a share for several.
  encode_threads: int = -1


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str) -> tok.Tokenizer:
  return tok.Tokenizer.load(path)  # once per worker process


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:06d}.array_record"


def pack_texts(texts: list[str], tokenizer: tok.Tokenizer, seq_len: int,
               mode: str, seed: int,
               encode_threads: int = -1) -> dict[str, np.ndarray]:
  """Tokenizes and packs texts into [N, seq_len] example arrays."""
  encode = functools.partial(tokenizer.encode, num_threads=encode_threads)
  if mode == "pairs":
    sentences = [pairs.split_sentences(t) for t in texts]
    flat = encode([s for doc in sentences for s in doc])
    docs, start = [], 0
    for doc in sentences:
      docs.append(flat[start:start + len(doc)])
      start += len(doc)
    return pairs.pack_pairs(docs, seq_len, seed=seed)
  return packing.pack_documents(encode(texts), seq_len)


def process(job: ChunkJob) -> dict[str, int]:
  """Writes the chunk's train and eval shards; returns what it wrote."""
  tokenizer = _tokenizer(job.tokenizer_path)
  packed = pack_texts(job.texts, tokenizer, job.seq_len, job.packing,
                      seed=job.index, encode_threads=job.encode_threads)
  n = len(packed["tokens"])
  counts = {"documents": len(job.texts), "examples": n, "train": 0, "eval": 0,
            "tokens": int(np.sum(packed["tokens"] != tok.PAD_ID)),
            "text_bytes": sum(len(t.encode("utf-8")) for t in job.texts)}
  if not n:
    return counts
  train_idx, eval_idx = packing.split_train_eval(
      n, job.eval_fraction if n > 1 else 0.0, seed=job.index)
  for split, idx in (("train", train_idx), ("eval", eval_idx)):
    if len(idx):
      counts[split] = records.write_shard(
          pathlib.Path(job.out_dir) / shard_name(split, job.index),
          {k: packed[k][idx] for k in records.FIELDS}, tokenizer.vocab_size)
  return counts
