"""Corpus -> tokenizer -> packed ArrayRecord shards, prepared once per config.

A prepared dataset is a directory:

  tokenizer.model                the SentencePiece model the ids refer to
  train-000000.array_record ...  packed examples (see `records`)
  eval-000000.array_record ...   the held-out split
  manifest.json                  what went in (`spec`) and what came out

`config.data.dir` names it; left empty, it is a directory under
`config.data.cache_dir` named by a fingerprint of the spec. It is built in a
temporary sibling directory and renamed into place when complete, so a
directory with a manifest is always whole; a build that fails removes its
temporary, and the next build removes those of killed ones (see `scratch`).
An existing directory whose manifest matches the config is reused; one that
does not match is an error, never a silent reuse. A corpus that cannot be
used (no text, not text, too little text for the vocabulary) is a one-line
ConfigError.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
from typing import Iterator

import grain
import ml_collections
from absl import logging

from mlm_jax import config as config_lib
from mlm_jax import tokenizer as tok
from mlm_jax.data import chunks
from mlm_jax.data import files
from mlm_jax.data import records
from mlm_jax.data import scratch
from mlm_jax.data import sources

PREPARE_VERSION = 2
# Documents are cut into chunks of about this much text, one per task.
CHUNK_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A prepared dataset: its tokenizer, manifest and shards."""
  directory: pathlib.Path
  tokenizer: tok.Tokenizer
  manifest: dict

  @property
  def seq_len(self) -> int:
    return self.manifest["spec"]["seq_len"]

  def num_examples(self, split: str) -> int:
    return self.manifest["examples"][split]

  def shards(self, split: str) -> list[pathlib.Path]:
    return [self.directory / name for name in self.manifest["shards"][split]]

  def source(self, split: str) -> grain.MapDataset:
    """Random access to the split's decoded examples."""
    return records.source(self.shards(split), self.seq_len,
                          self.tokenizer.vocab_size)


def spec(config: ml_collections.ConfigDict) -> dict:
  """Everything that determines the prepared examples, and nothing else."""
  d, t = config.data, config.tokenizer
  if t.path:
    path = pathlib.Path(t.path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(
          f"config.tokenizer.path: no file at {path}; give an existing "
          "SentencePiece .model file, or leave it empty to train one.")
    tokenizer = {"file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
  else:
    tokenizer = {"vocab_size": config.vocab_size, "model_type": t.model_type,
                 "max_sentences": t.max_sentences,
                 "train_documents": t.train_documents}
  return {"version": PREPARE_VERSION, "source": sources.describe(d),
          "source_fingerprint": sources.fingerprint(d),
          "max_documents": d.max_documents, "tokenizer": tokenizer,
          "seq_len": d.seq_len, "packing": d.packing,
          "eval_fraction": d.eval_fraction}


def _fingerprint(s: dict) -> str:
  return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[
      :16]


def default_directory(config: ml_collections.ConfigDict, s: dict
                      ) -> pathlib.Path:
  name = f"{config.data.source}-L{config.data.seq_len}-{_fingerprint(s)}"
  return pathlib.Path(config.data.cache_dir).expanduser() / "prepared" / name


def _differences(old, new, prefix="") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _documents(config, stats=None, limit: int = 0) -> Iterator[str]:
  docs = sources.documents(config.data, stats)
  limit = min(filter(None, (limit, config.data.max_documents)), default=0)
  return itertools.islice(docs, limit) if limit else docs


def _chunked(texts: Iterator[str]) -> Iterator[list[str]]:
  chunk, size = [], 0
  for text in texts:
    chunk.append(text)
    size += len(text)
    if size >= CHUNK_BYTES:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def _bounded_imap(pool, fn, jobs, max_in_flight: int):
  """Like `pool.imap` (ordered), but reads `jobs` only as results are
  consumed: `imap` would queue every chunk of a huge corpus in memory."""
  in_flight = collections.deque()
  for job in jobs:
    in_flight.append(pool.apply_async(fn, (job,)))
    if len(in_flight) >= max_in_flight:
      yield in_flight.popleft().get()
  while in_flight:
    yield in_flight.popleft().get()


def _progress(total: int | None):
  import tqdm  # a dependency of tensorflow-datasets
  return tqdm.tqdm(total=total, unit=" docs", disable=not sys.stderr.isatty(),
                   desc="prepare")


def _train_tokenizer(config, model: pathlib.Path) -> None:
  try:
    tok.train_sentencepiece(
        _documents(config, limit=config.tokenizer.train_documents), model,
        vocab_size=config.vocab_size, model_type=config.tokenizer.model_type,
        max_sentences=config.tokenizer.max_sentences)
  except tok.VocabSizeError as e:
    if e.at_most is not None:
      raise config_lib.ConfigError(
          f"config.vocab_size: {e.vocab_size} is more than this corpus "
          f"supports (at most {e.at_most} pieces with tokenizer.model_type="
          f"{config.tokenizer.model_type!r}); lower it, or give more text"
      ) from e
    raise config_lib.ConfigError(
        f"config.vocab_size: {e.vocab_size} is fewer pieces than the "
        f"characters of this corpus need (at least {e.at_least}); raise it"
    ) from e


def _build(config, s: dict, out: pathlib.Path) -> dict:
  """Writes tokenizer, shards and manifest into the directory `out`."""
  start = time.perf_counter()
  model = out / "tokenizer.model"
  if config.tokenizer.path:
    shutil.copyfile(pathlib.Path(config.tokenizer.path).expanduser(), model)
  else:
    _train_tokenizer(config, model)
  tokenizer = tok.Tokenizer.load(model)  # validates the reserved ids
  tokenizer_seconds = time.perf_counter() - start

  stats = files.ReadStats()
  workers = config.data.workers or os.cpu_count() or 1
  threads = -1 if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
  jobs = (chunks.ChunkJob(i, texts, str(model), config.data.seq_len,
                          config.data.packing, config.data.eval_fraction,
                          str(out), threads)
          for i, texts in enumerate(_chunked(_documents(config, stats))))
  totals = {"documents": 0, "train": 0, "eval": 0, "tokens": 0,
            "text_bytes": 0, "chunks": 0}
  with _progress(config.data.max_documents or None) as bar:
    if workers == 1:
      results = map(chunks.process, jobs)
      pool = None
    else:
      # Spawned, not forked: the parent may already run JAX threads.
      pool = multiprocessing.get_context("spawn").Pool(workers)
      results = _bounded_imap(pool, chunks.process, jobs, 2 * workers)
    try:
      for counts in results:
        totals["chunks"] += 1
        for k in ("documents", "train", "eval", "tokens", "text_bytes"):
          totals[k] += counts[k]
        bar.update(counts["documents"])
    finally:
      if pool is not None:
        pool.terminate()
  if not totals["train"]:
    raise config_lib.ConfigError(
        f"config.data.source: no training examples from "
        f"{sources.describe(config.data)}: it yielded no text; check the "
        "dataset (see the read summary above)")
  pack_seconds = time.perf_counter() - start - tokenizer_seconds
  slots = (totals["train"] + totals["eval"]) * config.data.seq_len
  manifest = {
      "spec": s, "tokenizer_fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size, "documents": totals["documents"],
      "examples": {"train": totals["train"], "eval": totals["eval"]},
      "tokens": totals["tokens"], "text_bytes": totals["text_bytes"],
      "packing_efficiency": totals["tokens"] / max(slots, 1),
      "shards": {split: sorted(p.name for p in out.glob(f"{split}-*"))
                 for split in ("train", "eval")},
      "read_stats": dataclasses.asdict(stats) if config.data.source == "files"
                    else None,
      "seconds": {"tokenizer": round(tokenizer_seconds, 2),
                  "pack": round(pack_seconds, 2)},
      "pack_mb_per_s": totals["text_bytes"] / 2 ** 20 / max(pack_seconds, 1e-9),
      "workers": workers,
  }
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return manifest


def _load(directory: pathlib.Path) -> PreparedData:
  manifest = json.loads((directory / "manifest.json").read_text())
  return PreparedData(directory, tok.Tokenizer.load(
      directory / "tokenizer.model"), manifest)


def prepare(config: ml_collections.ConfigDict) -> PreparedData:
  """Returns the prepared dataset of `config`, building it if absent."""
  s = spec(config)
  directory = (pathlib.Path(config.data.dir).expanduser() if config.data.dir
               else default_directory(config, s))
  scratch.remove_dead(directory.parent)  # of builds killed before
  manifest = directory / "manifest.json"
  if manifest.exists():
    diff = _differences(json.loads(manifest.read_text())["spec"], s)
    if diff:
      raise config_lib.ConfigError(
          f"config.data.dir: {directory} holds data prepared with another "
          f"config ({'; '.join(diff)}); use another data.dir, or delete "
          "that one to rebuild it")
    return _load(directory)
  if directory.exists() and any(directory.iterdir()):
    raise config_lib.ConfigError(
        f"config.data.dir: {directory} is not empty and has no manifest.json, "
        "so it is not a prepared dataset; name a new or empty directory")
  directory.parent.mkdir(parents=True, exist_ok=True)
  logging.info("Preparing %s into %s", s["source"], directory)
  tmp = scratch.mkdtemp(directory.parent, directory.name)
  try:
    built = _build(config, s, tmp)
    if directory.exists() and not manifest.exists():
      directory.rmdir()  # empty, checked above
    os.replace(tmp, directory)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not manifest.exists():
      raise
    # Another process (a run sharing the cache) finished the same dataset
    # first: use it (checked against this config like any other).
    logging.info("%s was prepared meanwhile by another process.", directory)
    return prepare(config)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("Prepared %s: %s", directory, json.dumps(
      {k: built[k] for k in ("documents", "examples", "tokens",
                             "packing_efficiency", "pack_mb_per_s")}))
  return _load(directory)
