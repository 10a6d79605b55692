"""The offline default corpus as a tfds dataset, `mlm_jax_offline`.

A public corpus reaches the pipeline as a prepared tfds dataset read by
`tfds_source`. Building the offline corpus (`offline`) as a tfds dataset too
sends the smoke run down exactly that path (builder, ArrayRecord files, data
source, errors), so the path a TPU run depends on is the one every laptop
run exercises. Preparing it needs no TensorFlow: `GeneratorBasedBuilder`
writes `array_record` files with numpy alone.

Identity. The offline corpus depends on the installed packages, but a tfds
version is static, so the version cannot tell two corpora apart. Each corpus
is a builder config named after its fingerprint instead, the stem of its
JSONL cache: `mlm_jax_offline/v<CORPUS_VERSION>-<corpus_fingerprint>`, stored
in `<data_dir>/mlm_jax_offline/<config>/1.0.0/`. Another environment computes
another name and prepares its own dataset beside this one, never reading this
one by mistake. `mlm_jax_offline` without a config means the corpus of this
environment (the fingerprint is computed when the builder is constructed,
a walk of site-packages). Any config name of that form constructs,
so reading one prepared elsewhere fails with `tfds_source`'s "not prepared"
error, and preparing it here fails saying the sources differ.

The JSONL is cached in `corpus_dir` (a constructor argument), by default in
tfds's download dir `<data_dir>/downloads/mlm_jax_offline/`, where a builder's
source files belong; in a temporary directory if `data_dir` is remote
(`gs://...`), as `offline` writes local files.

The examples keep the order of the JSONL (shuffling disabled, keys are line
numbers): the dataset is a copy of the corpus, not a new ordering of it.
Hold-out happens later, on packed examples, so there is one split, `train`.

Quiet. tfds, made for downloads, prints sizes and progress bars while it
prepares, and warns and leaves an empty temporary directory whenever a
builder of an unprepared dataset is made. None of that means anything for a
local corpus (the bars sit at 0 until the whole corpus is built), and in log
files the bars are control characters. So this builder turns them off
however it is prepared (`prepare_offline_tfds`, `tfds.data_source`, `tfds
build`) and logs one INFO line of its own instead; tfds's own logging and
every other warning are left alone.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from mlm_jax.data import offline

NAME = "mlm_jax_offline"
_CONFIG_NAME = re.compile(rf"v{offline.CORPUS_VERSION}-[0-9a-f]{{16}}")


def corpus_config_name(
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    include_topics: bool = True,
) -> str:
  """The config naming the offline corpus of these sources, as it is now."""
  files = offline.collect_source_files(roots)
  fingerprint = offline.corpus_fingerprint(files, include_topics)
  return f"v{offline.CORPUS_VERSION}-{fingerprint}"


class MlmJaxOffline(tfds.core.GeneratorBasedBuilder):
  """The offline default corpus: docstrings and pydoc topics, in order.

  Constructor arguments beyond tfds's (all optional):
    corpus_dir: where the JSONL corpus is cached (see the module docstring).
    roots: {label: directory} of python sources (default: stdlib and
      site-packages), as `offline.offline_corpus`.
    include_topics: whether the corpus starts with the pydoc help topics.
    num_workers: processes that parse sources, as `offline.offline_corpus`.
    file_format: default `array_record`, so that `tfds.data_source` works.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Documents {text, source} of the offline corpus (corpus "
               f"version {offline.CORPUS_VERSION}), in corpus order.",
  }

  def __init__(self, *, corpus_dir: str | os.PathLike[str] | None = None,
               roots: Mapping[str, str | os.PathLike[str]] | None = None,
               include_topics: bool = True, num_workers: int | None = None,
               file_format: str | tfds.core.FileFormat | None = None,
               **kwargs: Any):
    # Set before super().__init__, which asks for the default config.
    self._corpus_dir = corpus_dir
    self._roots = roots
    self._include_topics = include_topics
    self._num_workers = num_workers
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file, found without the `importlib_resources` backport.

    tfds 4.9.10 needs that backport to find the file of a builder defined in
    a package (its own too), but requires it only on python < 3.9, so
    `download_and_prepare` fails without it.
    """
    return epath.Path(inspect.getfile(cls))

  def get_default_builder_config(self) -> tfds.core.BuilderConfig:
    """The config of the corpus of this builder's sources."""
    return self.get_builder_config(
        corpus_config_name(self._roots, self._include_topics))

  @classmethod
  def get_builder_config(cls, name: str, version: Any = None,
                         ) -> tfds.core.BuilderConfig | None:
    """Any `v<CORPUS_VERSION>-<fingerprint>` names a config (see module)."""
    del version  # One version for all configs.
    if not _CONFIG_NAME.fullmatch(name):
      return None
    return tfds.core.BuilderConfig(
        name=name, description=f"The offline corpus {name}.")

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalDatasetInfo(
        builder=self,
        description=("Docstrings of the standard library and site-packages "
                     "and the pydoc help topics, cleaned into prose by "
                     "mlm_jax.data.offline."),
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        disable_shuffling=True,  # Keep the corpus order (keys: line numbers).
    )

  def is_prepared(self) -> bool:
    """tfds's answer, without its warning when nothing is there yet.

    tfds warns "Variant folder ... has no dataset_info.json" when the folder
    does not exist at all, i.e. before every first build. A folder that
    exists but is incomplete still gets the warning.
    """
    return self.data_path.exists() and super().is_prepared()

  def download_and_prepare(self, **kwargs: Any) -> None:
    """tfds's, without its progress bars (see the module docstring)."""
    self._prepare_start = time.perf_counter()
    with _progress_bars_off():
      super().download_and_prepare(**kwargs)

  def _log_download_bytes(self) -> None:
    """Replaces tfds's print of download sizes, all "Unknown" here."""

  def _log_download_done(self) -> None:
    """Replaces tfds's print "downloaded and prepared" by an INFO line."""
    logging.info("Prepared the tfds dataset %s in %s (%d documents, %.1f s).",
                 f"{self.name}/{self.builder_config.name}", self.data_dir,
                 self.info.splits["train"].num_examples,
                 time.perf_counter() - self._prepare_start)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager,
                        ) -> dict[str, Iterator[tuple[int, dict[str, str]]]]:
    corpus_dir = self._corpus_dir
    if corpus_dir is None:
      download_dir = os.fspath(dl_manager.download_dir)
      if "://" not in download_dir:
        corpus_dir = os.path.join(download_dir, NAME)
    return {"train": self._generate_examples(corpus_dir)}

  def _generate_examples(self, corpus_dir: str | os.PathLike[str] | None,
                         ) -> Iterator[tuple[int, dict[str, str]]]:
    expected = self.builder_config.name
    actual = corpus_config_name(self._roots, self._include_topics)
    if actual != expected:
      raise ValueError(
          f"Cannot prepare {NAME}/{expected} here: the offline corpus of "
          f"these sources is {NAME}/{actual}, so {expected} was made in "
          "another environment (or the packages changed). Copy its prepared "
          f"directory {NAME}/{expected}/ into this data_dir, or prepare this "
          "environment's corpus with prepare_offline_tfds(data_dir).")
    with _local_dir(corpus_dir) as local_dir:
      path = offline.offline_corpus(local_dir, num_workers=self._num_workers,
                                    roots=self._roots,
                                    include_topics=self._include_topics)
      if path.name != f"offline-{expected}.jsonl":  # Changed meanwhile.
        raise RuntimeError(f"The offline corpus changed while preparing "
                           f"{NAME}/{expected}: got {path.name}.")
      with open(path, encoding="utf-8") as f:
        key = 0
        for line in f:
          if line.strip():
            document = json.loads(line)
            yield key, {"text": document["text"],
                        "source": document["source"]}
            key += 1


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """The info of a dataset that tfds's GCS bucket never holds."""

  def initialize_from_bucket(self) -> None:
    """Nothing to fetch. tfds's makes a temporary directory first (every
    time a builder of an unprepared dataset is made) and leaves it behind."""


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
  """tfds's progress bars off, then back as they were."""
  # tfds has a setter but no getter for this switch.
  previous = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(previous)


@contextlib.contextmanager
def _local_dir(path: str | os.PathLike[str] | None) -> Iterator[pathlib.Path]:
  """`path`, or a temporary directory removed on exit if it is None."""
  if path is not None:
    yield pathlib.Path(path)
    return
  with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
    yield pathlib.Path(tmp)


def prepare_offline_tfds(
    data_dir: str | os.PathLike[str],
    *,
    corpus_dir: str | os.PathLike[str] | None = None,
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    include_topics: bool = True,
    num_workers: int | None = None,
) -> str:
  """Prepares this environment's offline corpus as a tfds dataset, once.

  Without TensorFlow. Concurrent preparations of the same data_dir (two
  runs sharing a cache) each build it; the first to finish wins and the
  others use its dataset.

  Args:
    data_dir: the tfds data_dir (local or `gs://...`).
    corpus_dir: where the JSONL corpus is cached (default: see the module
      docstring).
    roots: {label: directory} of python sources (default: stdlib and
      site-packages).
    include_topics: whether to include the pydoc help topics.
    num_workers: processes that parse sources (see `offline`).

  Returns:
    The dataset name, `mlm_jax_offline/<config>`, to read with
    `tfds_source.tfds_documents(name, data_dir=data_dir)`.
  """
  builder = MlmJaxOffline(data_dir=os.fspath(data_dir), corpus_dir=corpus_dir,
                          roots=roots, include_topics=include_topics,
                          num_workers=num_workers)
  name = f"{builder.name}/{builder.builder_config.name}"
  if builder.is_prepared():
    logging.info("Reusing the tfds dataset %s in %s.", name, builder.data_dir)
    return name
  try:
    builder.download_and_prepare(  # Logs "Prepared the tfds dataset ...".
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except FileExistsError:
    # Another process (a second run sharing the cache) finished the same
    # dataset first; tfds's final rename found it there. Use it.
    if not builder.is_prepared():
      raise
    logging.info("Reusing the tfds dataset %s in %s (prepared meanwhile by "
                 "another process).", name, builder.data_dir)
  return name
