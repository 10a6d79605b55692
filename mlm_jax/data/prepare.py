"""Corpus -> tokenizer -> packed train/eval examples, prepared once, cached.

A prepared dataset is a directory named by a fingerprint of everything that
shapes it (corpus file, document cap, tokenizer, sequence length):

  <cache_dir>/prepared/<name>/
    tokenizer.model        the SentencePiece model the ids refer to
    train.<field>.npy      packed examples, memory-mapped when loaded
    eval.<field>.npy       the held-out split
    manifest.json          what went in, and counts of what came out

It is built in a temporary directory and renamed into place, so a directory
that exists is complete, and a crash never leaves a half-written dataset that
looks usable. A second run with the same config reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterator

import ml_collections
import numpy as np
from absl import logging

from mlm_jax import config as config_lib
from mlm_jax import tokenizer as tok
from mlm_jax.data import offline
from mlm_jax.data import packing

FIELDS = ("tokens", "segment_ids", "positions")
# Seed of the train/eval split: fixed, so every run seed of a sweep is
# evaluated on the same held-out examples.
SPLIT_SEED = 0
# Documents tokenized per call of the C++ batch encoder.
_ENCODE_BATCH = 2048
PREPARE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A prepared dataset: its tokenizer and its packed example arrays."""
  directory: pathlib.Path
  tokenizer: tok.Tokenizer
  train: dict[str, np.ndarray]  # FIELDS -> [num_train, seq_len] int32
  eval: dict[str, np.ndarray]   # FIELDS -> [num_eval, seq_len] int32
  manifest: dict


def corpus_path(data: ml_collections.ConfigDict) -> pathlib.Path:
  """The corpus file named by `config.data.corpus`, built if needed."""
  cache = pathlib.Path(data.cache_dir).expanduser()
  if data.corpus == "offline":
    return offline.offline_corpus(cache / "corpora")
  raise config_lib.ConfigError(
      f"config.data.corpus: unknown corpus {data.corpus!r}; use 'offline'.")


def _documents(corpus: pathlib.Path, max_documents: int) -> Iterator[str]:
  docs = offline.read_documents(corpus)
  return itertools.islice(docs, max_documents) if max_documents else docs


def _fingerprint(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[
      :16]


def _file_digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _spec(config: ml_collections.ConfigDict, corpus: pathlib.Path) -> dict:
  """Everything that determines the prepared arrays, and nothing else."""
  t = config.tokenizer
  if t.path:
    tokenizer = {"file": _file_digest(pathlib.Path(t.path).expanduser())}
  else:
    tokenizer = {"vocab_size": config.vocab_size, "model_type": t.model_type,
                 "max_sentences": t.max_sentences}
  return {"version": PREPARE_VERSION, "corpus": corpus.name,
          "max_documents": config.data.max_documents, "tokenizer": tokenizer,
          "seq_len": config.data.seq_len,
          "eval_fraction": config.data.eval_fraction,
          "split_seed": SPLIT_SEED}


def _tokenize(tokenizer: tok.Tokenizer, texts: Iterator[str]):
  while batch := list(itertools.islice(texts, _ENCODE_BATCH)):
    yield from tokenizer.encode(batch)


def _build(config, corpus: pathlib.Path, spec: dict,
           out: pathlib.Path) -> dict:
  """Writes tokenizer, arrays and manifest into the directory `out`."""
  start = time.perf_counter()
  model = out / "tokenizer.model"
  if config.tokenizer.path:
    shutil.copyfile(pathlib.Path(config.tokenizer.path).expanduser(), model)
  else:
    tok.train_sentencepiece(
        _documents(corpus, config.data.max_documents), model,
        vocab_size=config.vocab_size, model_type=config.tokenizer.model_type,
        max_sentences=config.tokenizer.max_sentences)
  tokenizer = tok.Tokenizer.load(model)  # validates the reserved ids
  tokenizer_seconds = time.perf_counter() - start

  num_docs = 0
  def counted(docs):
    nonlocal num_docs
    for d in docs:
      num_docs += 1
      yield d
  packed = packing.pack_documents(
      _tokenize(tokenizer, counted(_documents(corpus, config.data.max_documents))),
      config.data.seq_len)
  num_examples = len(packed["tokens"])
  train_idx, eval_idx = packing.split_train_eval(
      num_examples, config.data.eval_fraction, seed=SPLIT_SEED)
  for split, idx in (("train", train_idx), ("eval", eval_idx)):
    for field in FIELDS:
      np.save(out / f"{split}.{field}.npy", packed[field][idx])
  manifest = {
      "spec": spec, "corpus_path": str(corpus),
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size, "documents": num_docs,
      "examples": {"train": len(train_idx), "eval": len(eval_idx)},
      "tokens": int(np.sum(packed["tokens"] != tok.PAD_ID)),
      "packing_efficiency": packing.packing_efficiency(packed["tokens"]),
      "seconds": {"tokenizer": round(tokenizer_seconds, 2),
                  "total": round(time.perf_counter() - start, 2)},
  }
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return manifest


def _load(directory: pathlib.Path) -> PreparedData:
  manifest = json.loads((directory / "manifest.json").read_text())
  arrays = {split: {f: np.load(directory / f"{split}.{f}.npy", mmap_mode="r")
                    for f in FIELDS} for split in ("train", "eval")}
  return PreparedData(directory, tok.Tokenizer.load(directory /
                                                    "tokenizer.model"),
                      arrays["train"], arrays["eval"], manifest)


def prepare(config: ml_collections.ConfigDict) -> PreparedData:
  """Returns the prepared dataset for `config`, building it if absent."""
  if config.tokenizer.path:
    path = pathlib.Path(config.tokenizer.path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(
          f"config.tokenizer.path: no file at {path}; give an existing "
          "SentencePiece .model file, or leave it empty to train one.")
  corpus = corpus_path(config.data)
  spec = _spec(config, corpus)
  root = pathlib.Path(config.data.cache_dir).expanduser() / "prepared"
  directory = root / f"{corpus.stem}-L{config.data.seq_len}-{_fingerprint(spec)}"
  if not directory.exists():
    root.mkdir(parents=True, exist_ok=True)
    logging.info("Preparing %s into %s", corpus, directory)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
      manifest = _build(config, corpus, spec, tmp)
      os.replace(tmp, directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    logging.info("Prepared: %s", json.dumps(manifest))
  return _load(directory)
