"""Labelled examples of a downstream task, from tfds or from local files.

`read_split` reads a split of a `tasks.TaskSpec`: CSV or TSV with a header
row, JSON Lines, CoNLL (a word and its tag per line), or a tfds dataset,
read as pre-training reads one (`mlm_jax.data.tfds_source`): prepared as
ArrayRecord, without TensorFlow. Every problem is one `tasks.TaskDataError`
naming the file and line, the problem and the fix.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mlm_jax.data import tfds_source
from mlm_jax.finetune.tasks import GLUE, TaskDataError, TaskSpec


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled (or, in a test split, unlabelled) example.

  texts: 1 text, or 2 for a pair task; empty for tagging.
  label: the class name (classification), a float (regression), or None
    (unlabelled, or tagging).
  words, tags: tagging only: the words of a sentence and a tag per word.
  """
  texts: tuple[str, ...]
  label: str | float | None
  words: tuple[str, ...] = ()
  tags: tuple[str, ...] = ()

def read_split(spec: TaskSpec, split: str) -> list[Example]:
  """The examples of split 'train', 'dev' or 'test', in file/index order."""
  if not spec.splits.get(split):
    raise TaskDataError(f"The task has no {split} split; set "
                        f"--config.task.{split} to its file or tfds split.")
  if spec.source == "tfds":
    examples, where = _read_tfds(spec, split), (
        f"tfds {spec.path_or_name} {spec.splits[split]}")
  else:
    reader = {"csv": _read_table, "tsv": _read_table, "jsonl": _read_jsonl,
              "conll": _read_conll}[spec.source]
    paths, examples = _files(spec, split), []
    for path in paths:
      try:
        examples.extend(reader(path, spec, split))
      except UnicodeDecodeError as e:
        raise TaskDataError(f"{path} is not UTF-8 text ({e.reason} at byte "
                            f"{e.start}); re-encode it as UTF-8.") from None
    where = ", ".join(paths)
  if not examples:
    raise TaskDataError(f"The {split} split ({where}) has no examples; point "
                        f"--config.task.{split} at data that has some.")
  return examples


def label_vocabulary(train_examples: Sequence[Example],
                     kind: str) -> tuple[str, ...]:
  """The sorted labels (tags, for tagging) of the training split.

  Regression has none. Raises TaskDataError for fewer than two.
  """
  if kind == "regression":
    return ()
  labels = sorted({t for e in train_examples for t in _labels(e)})
  if len(labels) < 2:
    raise TaskDataError(
        f"The training split has {len(labels)} distinct label(s) "
        f"({', '.join(map(repr, labels))}): nothing to learn; check "
        "--config.task.label_column and the training data.")
  return tuple(labels)


def check_labels(vocab: Sequence[str], examples: Sequence[Example],
                 split_name: str) -> None:
  """Raises TaskDataError if `examples` hold labels outside `vocab`."""
  known = set(vocab)
  unseen = collections.Counter(t for e in examples for t in _labels(e)
                               if t not in known)
  if unseen:
    listed = ", ".join(f"{label!r} ({n} times)"
                       for label, n in unseen.most_common(5))
    more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
    raise TaskDataError(
        f"The {split_name} split has {len(unseen)} label(s) the training "
        f"split never had: {listed}{more}; the model cannot predict them: add "
        "training examples of them, or use one spelling in every split.")


def _labels(example: Example) -> tuple[str, ...]:
  if example.words:
    return example.tags
  return (example.label,) if isinstance(example.label, str) else ()


def _files(spec: TaskSpec, split: str) -> list[str]:
  """The files of a split: its field, relative to or put in path_or_name."""
  value = spec.splits[split]
  path = (spec.path_or_name.replace("{split}", value)
          if "{split}" in spec.path_or_name
          else os.path.join(spec.path_or_name, value))
  paths = sorted(filter(os.path.isfile, glob.glob(path) if glob.has_magic(
      path) else [path]))
  if not paths:
    raise TaskDataError(
        f"The {split} split's file {path} does not exist; set "
        f"--config.task.{split} (relative to --config.task.path_or_name, a "
        "directory or a path with '{split}') to an existing file.")
  return paths


def _open(path: str):
  # utf-8-sig: spreadsheet exports start with a byte-order mark.
  return open(path, encoding="utf-8-sig", newline="")


def _read_table(path: str, spec: TaskSpec, split: str) -> Iterator[Example]:
  # As BERT's run_classifier: no quoting in TSV (GLUE texts hold stray ").
  quoting = csv.QUOTE_NONE if spec.source == "tsv" else csv.QUOTE_MINIMAL
  delimiter = "\t" if spec.source == "tsv" else ","
  with _open(path) as f:
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:  # An empty file: an empty split, if no other file.
      return
    columns = [c.strip() for c in header]
    _check_columns(spec, split, columns, f"{path} (its first line, the "
                   "header)")
    while True:
      try:
        row = next(reader, None)
      except csv.Error as e:
        raise TaskDataError(f"{path}:{reader.line_num}: {e}; fix the "
                            "line.") from None
      where = f"{path}:{reader.line_num}"
      if row is None:
        return
      if not row:
        continue
      if len(row) != len(columns):
        raise TaskDataError(
            f"{where}: {len(row)} fields where the header has "
            f"{len(columns)}; fix the line ({spec.source.upper()}: a "
            f"delimiter inside a text must be quoted or removed).")
      yield _example(spec, split, dict(zip(columns, row)), where)


def _read_jsonl(path: str, spec: TaskSpec, split: str) -> Iterator[Example]:
  with _open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        record, error = None, e.msg
      if not isinstance(record, dict):
        raise TaskDataError(f"{where}: not a JSON object "
                            f"({error if record is None else 'a value'}); "
                            "each line must be one JSON object.")
      _check_columns(spec, split, list(record), where)
      yield _example(spec, split, record, where)


def _read_conll(path: str, spec: TaskSpec, split: str) -> Iterator[Example]:
  del spec, split  # A word in the first column, its tag in the last.
  words, tags = [], []
  with _open(path) as f:
    for n, line in enumerate(f, 1):
      fields = line.split()
      if fields and fields[0] == "-DOCSTART-":
        continue
      if len(fields) == 1:
        raise TaskDataError(
            f"{path}:{n}: malformed CoNLL line {line.strip()[:80]!r}: a word "
            "and its tag (last column) separated by whitespace are needed; "
            "fix or remove the line (sentences end at blank lines).")
      if fields:
        words.append(fields[0])
        tags.append(fields[-1])
      elif words:
        yield Example((), None, tuple(words), tuple(tags))
        words, tags = [], []
  if words:
    yield Example((), None, tuple(words), tuple(tags))


def _read_tfds(spec: TaskSpec, split: str) -> list[Example]:
  name, data_dir = spec.path_or_name, spec.tfds_data_dir or None
  try:
    builder = tfds_source._builder(name, data_dir)
  except ValueError as e:
    raise TaskDataError(f"{e} Set --config.task.path_or_name.") from None
  features = builder.info.features
  _check_columns(spec, split, list(features), f"tfds {name}", tfds=True)
  try:
    source = builder.as_data_source(split=spec.splits[split])
  except (ValueError, KeyError, NotImplementedError) as e:
    error = tfds_source._read_error(builder, name, spec.splits[split], e)
    where = (" Or set --config.task.tfds_data_dir to where it is prepared."
             if isinstance(error, FileNotFoundError) else "")
    raise TaskDataError(" ".join(line.strip() for line in
                                 str(error).splitlines()) + where) from None
  label = features[spec.label_column]
  names = getattr(getattr(label, "feature", label), "names", None)
  # tfds's "no label" (GLUE's test splits): -1 of a ClassLabel or of GLUE.
  unlabelled = names is not None or name.split(":")[0] in GLUE
  examples = []
  for i in range(len(source)):  # One by one: see tfds_source._texts.
    record, where = source[i], f"tfds {name} {spec.splits[split]}[{i}]"
    if spec.kind == "tagging":
      words = tuple(_text(w, where) for w in record[spec.text_columns[0]])
      tags = tuple(names[t] if names else _text(t, where)
                   for t in record[spec.label_column])
      if len(words) != len(tags):
        raise TaskDataError(
            f"{where}: {len(words)} words but {len(tags)} tags; set "
            "--config.task.text_columns and label_column to matching "
            "features.")
      examples.append(Example((), None, words, tags))
      continue
    value = record[spec.label_column]
    if unlabelled and np.asarray(value).dtype.kind in "iuf" and value == -1:
      value = None
    elif spec.kind == "classification":
      value = str(int(value)) if np.asarray(value).dtype.kind in "iub" else (
          _text(value, where))
    examples.append(_example(spec, split, {**record, spec.label_column: value},
                             where))
  return examples


def _check_columns(spec: TaskSpec, split: str, columns: list[str],
                   where: str, tfds: bool = False) -> None:
  """Every text column and the label column (test splits may lack it)."""
  wanted = list(spec.text_columns)
  if split != "test" or tfds:
    wanted.append(spec.label_column)
  for column in wanted:
    if column not in columns:
      field = ("label_column" if column == spec.label_column
               else "text_columns")
      raise TaskDataError(
          f"{where} has no {'feature' if tfds else 'column'} {column!r}; its "
          f"{'features' if tfds else 'columns'} are "
          f"{', '.join(map(str, columns)) or 'none'}; set "
          f"--config.task.{field}.")


def _example(spec: TaskSpec, split: str, record: dict[str, Any],
             where: str) -> Example:
  """The Example of one row or record: texts and a typed label."""
  texts = tuple(_text(record[c], where, c) for c in spec.text_columns)
  value = record.get(spec.label_column)
  if value is None or (isinstance(value, str) and not value.strip()):
    if split != "test":
      raise TaskDataError(
          f"{where}: no label in column {spec.label_column!r}; every {split} "
          "example needs one (only a test split may be unlabelled).")
    return Example(texts, None)
  if spec.kind == "classification":
    return Example(texts, str(value).strip())
  try:
    label = float(value)
  except (TypeError, ValueError):
    label = math.nan
  if not math.isfinite(label):
    raise TaskDataError(
        f"{where}: regression label {value!r} is not a finite number; fix "
        "the line, or set --config.task.kind=classification.")
  return Example(texts, label)


def _text(value: Any, where: str, column: str = "") -> str:
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if not isinstance(value, str):
    raise TaskDataError(
        f"{where}: {f'column {column!r}' if column else 'a value'} holds a "
        f"{type(value).__name__}, not a text; set --config.task.text_columns "
        "to text columns.")
  return value
