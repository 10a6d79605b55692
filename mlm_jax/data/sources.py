"""Where documents come from: one interface over every kind of corpus.

`config.data.source` picks the kind:
  'offline'  the offline default corpus (Python docstrings), built by this
             package's tfds builder and read like any tfds dataset;
  'tfds'     any tensorflow-datasets text corpus by name and split, read from
             its ArrayRecord files without TensorFlow;
  'files'    local plain-text or JSON Lines files (a path, directory or glob,
             gzip welcome).
Each yields document texts (str) in a deterministic order, and a
fingerprint that changes whenever the documents would.
"""
from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Iterator

import ml_collections

from mlm_jax import config as config_lib
from mlm_jax.data import files
from mlm_jax.data import offline_tfds
from mlm_jax.data import tfds_source

KINDS = ("offline", "tfds", "files")


def _cache(data: ml_collections.ConfigDict) -> pathlib.Path:
  return pathlib.Path(data.cache_dir).expanduser()


@functools.lru_cache(maxsize=4)
def _offline_name(cache: pathlib.Path) -> str:
  # Memoised: finding the corpus's fingerprint walks every source file.
  return offline_tfds.prepare_offline_tfds(cache / "tfds",
                                           corpus_dir=cache / "corpora")


def _tfds_args(data: ml_collections.ConfigDict) -> dict:
  """(name, split, data_dir, text_feature) of the tfds dataset to read."""
  if data.source == "offline":
    cache = _cache(data)
    return {"name": _offline_name(cache), "split": "train",
            "data_dir": str(cache / "tfds"), "text_feature": "text"}
  if not data.tfds_name:
    raise config_lib.ConfigError(
        "config.data.tfds_name: empty for data.source='tfds'; name a dataset, "
        "e.g. --config.data.tfds_name=wikipedia/20230601.en.")
  return {"name": data.tfds_name, "split": data.tfds_split,
          "data_dir": data.tfds_data_dir or None,
          "text_feature": data.text_feature}


def _check(data: ml_collections.ConfigDict) -> None:
  if data.source not in KINDS:
    raise config_lib.ConfigError(
        f"config.data.source: unknown source {data.source!r}; use one of "
        f"{', '.join(KINDS)}.")
  if data.source == "files" and not data.files:
    raise config_lib.ConfigError(
        "config.data.files: empty for data.source='files'; give a path, "
        "directory or glob, e.g. --config.data.files='corpus/*.txt.gz'.")


def documents(data: ml_collections.ConfigDict,
              stats: files.ReadStats | None = None) -> Iterator[str]:
  """The document texts of `config.data`, in order.

  Raises ConfigError (at once, or while iterating) for local files that
  cannot be used (see `files.CorpusError`).
  """
  _check(data)
  if data.source == "files":
    try:
      return _config_errors(files.read_documents(
          data.files, data.files_format, field=data.text_feature,
          stats=stats))
    except files.CorpusError as e:
      raise _config_error(e) from e
  return tfds_source.tfds_documents(**_tfds_args(data))


def _config_error(e: files.CorpusError) -> config_lib.ConfigError:
  return config_lib.ConfigError(f"config.data.files: {e}")


def _config_errors(docs: Iterator[str]) -> Iterator[str]:
  """`docs`, its CorpusErrors raised as ConfigErrors (one line each)."""
  try:
    yield from docs
  except files.CorpusError as e:
    raise _config_error(e) from e


def describe(data: ml_collections.ConfigDict) -> dict:
  """What the source is, for the manifest (names, not contents)."""
  _check(data)
  if data.source == "files":
    return {"source": "files", "files": data.files,
            "format": data.files_format, "field": data.text_feature}
  return {"source": data.source, **_tfds_args(data)}


def fingerprint(data: ml_collections.ConfigDict) -> str:
  """Changes whenever the documents of the source would change."""
  _check(data)
  if data.source == "files":
    inner = files.files_fingerprint(files.resolve_files(data.files))
  else:
    args = _tfds_args(data)
    inner = tfds_source.tfds_fingerprint(
        args["name"], args["split"], args["data_dir"], args["text_feature"])
  spec = {**describe(data), "inner": inner}
  spec.pop("data_dir", None)  # where the data lives is not what it is
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[
      :16]
