"""Documents of a tensorflow-datasets text corpus, read without TensorFlow.

Public pre-training corpora (C4, Wikipedia, LM1B) are tfds datasets, named as
`<dataset>[/<config>][:<version>]` (`c4/en`, `wikipedia/20230601.en`). This
package does not depend on TensorFlow, and `tfds.load` / `as_dataset` need it;
tfds's random-access path (`builder.as_data_source`, what `tfds.data_source`
returns) reads ArrayRecord files with numpy alone, so it is the only path used
here. A dataset must therefore be prepared as `array_record` beforehand.

Nothing is downloaded or generated here: preparing C4 takes Apache Beam and
days, so it is a job of its own, never a side effect of a training run. Every
way of getting this wrong (unknown name, unprepared, tfrecord-only, no such
split or feature) raises one error that says what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

# Part of `tfds_fingerprint`: bump it whenever the reading rules below (which
# texts are skipped, how bytes are decoded) change.
READ_VERSION = 1

# tfds registers the builders of these packages lazily, in one loop that stops
# at the first ImportError: in tfds 4.9.10 without h5py, `nearest_neighbors`
# fails and every later package (`text`: c4, wikipedia, ...) is never
# registered. Importing each one alone registers all that can be imported.
_BUILDER_PACKAGES = (
    "audio", "graphs", "image", "image_classification", "object_detection",
    "nearest_neighbors", "question_answering", "d4rl", "ranking",
    "recommendation", "rl_unplugged", "rlds.datasets", "robotics", "robomimic",
    "structured", "summarization", "text", "text_simplification",
    "time_series", "translate", "video", "vision_language")


def tfds_documents(name: str, *, split: str = "train",
                   text_feature: str = "text",
                   data_dir: str | os.PathLike[str] | None = None,
                   ) -> Iterator[str]:
  """The texts of a prepared tfds dataset split, in index order.

  The dataset is opened (and every error raised) when this is called, not at
  the first `next()`.

  Args:
    name: `<dataset>[/<config>][:<version>]`, e.g. `c4/en`, `lm1b`.
    split: a split or split expression (`train`, `train[:1%]`).
    text_feature: the feature holding the text (a `tfds.features.Text`).
    data_dir: where the dataset is prepared (default: tfds's, i.e.
      `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); may be `gs://...`.

  Returns:
    An iterator of the non-blank texts as `str`; bytes are decoded as UTF-8
    (invalid bytes replaced).

  Raises:
    ValueError: unknown dataset, config, version, split or feature, or a
      dataset prepared only in a format without random access.
    FileNotFoundError: the dataset is not prepared in `data_dir`.
  """
  builder, source = _open(name, split, text_feature, data_dir)
  logging.info("Reading tfds %s split %r (%d examples, feature %r) from %s.",
               builder.info.full_name, split, len(source), text_feature,
               builder.data_dir)
  return _texts(source, text_feature)


def tfds_num_documents(name: str, *, split: str = "train",
                       text_feature: str = "text",
                       data_dir: str | os.PathLike[str] | None = None) -> int:
  """The number of examples of the split, for progress bars.

  An upper bound of what `tfds_documents` yields, which skips blank texts.
  Raises as `tfds_documents`.
  """
  return len(_open(name, split, text_feature, data_dir)[1])


def tfds_fingerprint(name: str, split: str = "train",
                     data_dir: str | os.PathLike[str] | None = None,
                     text_feature: str = "text") -> str:
  """A short hash of what `tfds_documents` would read, for cache keys.

  It covers the dataset's full name (dataset/config/version), the split, its
  number of examples, the text feature and `READ_VERSION`. Not `data_dir`:
  the same prepared dataset copied elsewhere (or to a bucket) is the same
  data. Raises as `tfds_documents`.
  """
  builder, source = _open(name, split, text_feature, data_dir)
  spec = [READ_VERSION, builder.info.full_name, str(split), len(source),
          text_feature]
  return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _texts(source: Sequence[Any], text_feature: str) -> Iterator[str]:
  # One example at a time: under `tfds.testing.mock_data` (4.9.10) the batched
  # `__getitems__` of a data source is broken.
  for i in range(len(source)):
    text = source[i][text_feature]
    if isinstance(text, bytes):  # Real data; the mock gives str.
      text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
      raise TypeError(f"tfds feature {text_feature!r} of example {i} is a "
                      f"{type(text).__name__}, not a text.")
    if text.strip():
      yield text


def _open(name: str, split: str, text_feature: str,
          data_dir: str | os.PathLike[str] | None,
          ) -> tuple[tfds.core.DatasetBuilder, Sequence[Any]]:
  """(builder, data source of the split), or one clear error."""
  if data_dir is not None:
    data_dir = os.fspath(data_dir)
  builder = _builder(name, data_dir)
  _check_text_feature(builder, name, text_feature)
  try:
    source = builder.as_data_source(split=split)
  except (ValueError, KeyError, NotImplementedError) as e:
    raise _read_error(builder, name, split, e) from e
  return builder, source


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """`tfds.builder(name)`, with the errors of an unknown name made clear."""
  try:
    return _tfds_builder(name, data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    pass
  for package in _BUILDER_PACKAGES:  # See _BUILDER_PACKAGES.
    with contextlib.suppress(ImportError):
      importlib.import_module(f"tensorflow_datasets.{package}")
  try:
    return _tfds_builder(name, data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    match = re.search(r"Did you mean: \S+ -> (\S+) \?", str(e))
    hint = f" Did you mean {match.group(1)!r}?" if match else ""
    raise ValueError(
        f"Unknown tfds dataset {name!r}.{hint} Names are "
        "'<dataset>[/<config>][:<version>]', from "
        "https://www.tensorflow.org/datasets/catalog/overview; a builder "
        "defined outside tfds needs its module imported first.") from None


def _tfds_builder(name: str,
                  data_dir: str | None) -> tfds.core.DatasetBuilder:
  """`tfds.builder`; errors other than an unknown dataset name as ValueError."""
  try:
    with _no_stray_temp_dirs():
      return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise
  except (ValueError, AssertionError) as e:  # Bad name, config or version.
    error = e
  message = f"Cannot open tfds dataset {name!r}: {error}"
  with contextlib.suppress(Exception):  # If it is the config, list them.
    dataset, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
    configs = tfds.builder_cls(str(dataset)).builder_configs
    config = kwargs.get("config")
    if configs and config is not None and config not in configs:
      message = (f"tfds dataset {str(dataset)!r} has no config {config!r}; "
                 f"its configs: {', '.join(sorted(configs))}.")
  raise ValueError(message) from None


@contextlib.contextmanager
def _no_stray_temp_dirs() -> Iterator[None]:
  """Temporary directories made meanwhile go to one removed on exit.

  A tfds builder of an unprepared dataset makes an empty `tmp*tfds`
  directory in the system temp dir and leaves it there (tfds 4.9.10,
  `DatasetInfo.initialize_from_bucket`, which then finds GCS disabled).
  Only empty directories are removed: anything else made meanwhile (by
  another thread) stays, if in a leftover directory.
  """
  previous = tempfile.tempdir
  private = tempfile.mkdtemp(prefix="mlm_jax-tfds-")
  tempfile.tempdir = private
  try:
    yield
  finally:
    tempfile.tempdir = previous
    for entry in os.scandir(private):
      with contextlib.suppress(OSError):
        os.rmdir(entry.path)
    with contextlib.suppress(OSError):
      os.rmdir(private)


def _check_text_feature(builder: tfds.core.DatasetBuilder, name: str,
                        text_feature: str) -> None:
  features = builder.info.features
  if text_feature not in features:
    raise ValueError(
        f"tfds dataset {name!r} has no feature {text_feature!r}; its "
        f"features: {', '.join(sorted(features))}. Set the text feature "
        "to one of them.")
  if not _is_text(features[text_feature]):
    texts = [key for key, feature in features.items() if _is_text(feature)]
    raise ValueError(
        f"tfds feature {text_feature!r} of {name!r} is not a text but "
        f"{features[text_feature]!r}; its text features: "
        f"{', '.join(sorted(texts)) or 'none'}.")


def _is_text(feature: tfds.features.FeatureConnector) -> bool:
  """A scalar string feature (`Text`, or a string `Tensor`)."""
  # `np_dtype`, not `dtype`: that one is TensorFlow's.
  return (isinstance(feature, tfds.features.Text)
          or (isinstance(feature, tfds.features.Tensor) and feature.shape == ()
              and np.dtype(feature.np_dtype).kind in "OSU"))


def _read_error(builder: tfds.core.DatasetBuilder, name: str, split: str,
                error: Exception) -> Exception:
  """What went wrong when `as_data_source` failed, and how to fix it."""
  root = _data_dir_root(builder)
  # Not `is_prepared()` alone: it warns when there is no folder at all.
  if not builder.data_path.exists() or not builder.is_prepared():
    imports = ("" if builder.__module__.startswith("tensorflow_datasets.")
               else f" --imports={builder.__module__}")
    return FileNotFoundError(
        f"tfds dataset {name!r} ({builder.info.full_name}) is not prepared "
        f"in {root}. Prepare it once as array_record:\n"
        f"  tfds build {name}{imports} --file_format=array_record "
        f"--data_dir={root}\n"
        "or in Python:\n"
        f"  tfds.builder({name!r}, data_dir={root!r}).download_and_prepare("
        "file_format='array_record')\n"
        "The tfds CLI needs TensorFlow; so does preparing many datasets, and "
        "some (c4, wikipedia) also need Apache Beam: "
        "https://www.tensorflow.org/datasets/beam_datasets")
  random_access = set(tfds.core.FileFormat.with_random_access())
  formats = builder.info.available_file_formats()
  if not formats & random_access:
    return ValueError(
        f"tfds dataset {name!r} is prepared in {builder.data_dir} as "
        f"{', '.join(sorted(f.value for f in formats))}, which has no random "
        "access (needed to read without TensorFlow). With TensorFlow "
        "installed, convert it in place:\n"
        f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
        "--out_file_format=array_record\n"
        "or rebuild it in another data_dir:\n"
        f"  tfds build {name} --file_format=array_record "
        "--data_dir=<another dir>")
  splits = sorted(builder.info.splits)
  # A split expression: `train`, `train[:1%]`, `train+test[:10]`.
  names = [part.split("[")[0].strip() for part in str(split).split("+")]
  if unknown := [n for n in names if n not in splits]:
    return ValueError(
        f"tfds dataset {name!r} has no split {unknown[0]!r}; its splits: "
        f"{', '.join(splits)}.")
  return ValueError(
      f"Cannot read split {split!r} of tfds dataset {name!r}: {error}")


def _data_dir_root(builder: tfds.core.DatasetBuilder) -> str:
  """The data_dir the builder was opened in (`data_dir`'s tfds default)."""
  # `<root>/<dataset>[/<config>]/<version>`, as many parts as the full name.
  path = os.fspath(builder.data_dir)
  for _ in builder.info.full_name.split("/"):
    path = os.path.dirname(path.rstrip("/"))
  return path
