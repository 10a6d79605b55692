"""Downstream tasks: what a task is, where its data is, GLUE's defaults.

A task is a `TaskSpec`: its kind, where its data is, which columns hold the
texts and the label, and what its train, dev and test splits are. A GLUE
task needs only its tfds name (`GLUE` holds the rest); a local task names
its files and columns. It comes from the `config.task` block of a
fine-tuning config (`task_config`, `TaskSpec.from_config`); `examples`
reads its splits.

Every problem with a task's config or data is one `TaskDataError`: a single
line naming what is wrong (with file:line where there is one) and the fix.
It is a `ConfigError`, so `cli.one_line_errors` prints it without a
traceback.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections

from mlm_jax.errors import ConfigError

KINDS = ("classification", "regression", "tagging")
SOURCES = ("tfds", "csv", "tsv", "jsonl", "conll")
SPLITS = ("train", "dev", "test")
# The file formats `TaskSpec.from_config` recognises by extension.
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
              ".json": "jsonl", ".conll": "conll", ".iob": "conll",
              ".bio": "conll"}


class TaskDataError(ConfigError):
  """Bad task data or task config; the one-line message says the fix."""


def check(ok: bool, field: str, problem: str, fix: str) -> None:
  """Raises TaskDataError naming `config.task.<field>` and its fix unless ok."""
  if not ok:
    raise TaskDataError(f"config.task.{field}: {problem}; set "
                        f"--config.task.{field} to {fix}.")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Where a task's examples are and how to read them (see `task_config`)."""
  kind: str
  source: str
  path_or_name: str
  text_columns: tuple[str, ...]
  label_column: str
  splits: dict[str, str]
  tfds_data_dir: str = ""

  def __post_init__(self):
    check(self.kind in KINDS, "kind", f"{self.kind!r} is not a task kind",
          f"one of {', '.join(KINDS)}")
    check(self.source in SOURCES, "source", f"{self.source!r} is not a "
          "source", f"one of {', '.join(SOURCES)}")
    check(bool(self.path_or_name) or self.source != "tfds", "path_or_name",
          "is empty", "a tfds name (glue/sst2)")
    check(bool(self.splits.get("train")), "train", "is empty",
          "the training split's file or tfds split")
    check(self.source != "conll" or self.kind == "tagging", "kind",
          f"CoNLL files hold tags, not a {self.kind} task", "tagging")
    check(self.kind != "tagging" or self.source in ("conll", "tfds"),
          "source", f"{self.source} files hold no tags", "conll")
    check(self.kind == "tagging" or 1 <= len(self.text_columns) <= 2,
          "text_columns", f"{len(self.text_columns)} columns given",
          "one text column, or two comma-separated for a pair task")
    check(self.source != "tfds" or self.kind != "tagging"
          or len(self.text_columns) == 1, "text_columns",
          f"{len(self.text_columns)} columns given", "the words feature")

  @classmethod
  def from_config(cls, task: ml_collections.ConfigDict) -> TaskSpec:
    """The spec of a `config.task` block (fields: `task_config`).

    Empty fields take their defaults: for a GLUE name, GLUE's; for files,
    the format from the extension, 'tagging' for CoNLL, columns 'text' and
    'label', and splits 'train' and 'dev' when the path holds '{split}'.
    """
    get = lambda key: str(task.get(key, "") or "").strip()
    name = get("path_or_name")
    glue = GLUE.get(name.split(":")[0])
    check(bool(name or get("train")), "path_or_name", "is empty",
          "a tfds name (glue/sst2), or where the task's files are")
    source = get("source") or ("tfds" if glue else "")
    if not source:
      known = [EXTENSIONS.get(os.path.splitext(p)[1].lower())
               for p in (name, get("train"))]
      source = next(filter(None, known), "")
      check(bool(source), "source", f"cannot tell the format of "
            f"{name or get('train')!r} from its extension",
            f"one of {', '.join(SOURCES)}")
    pattern = "{split}" in name
    defaults = glue.splits if glue else {"train": "train" if pattern else "",
                                         "dev": "dev" if pattern else ""}
    splits = {s: get(s) or defaults.get(s, "") for s in SPLITS}
    columns = get("text_columns") or (",".join(glue.text_columns) if glue
                                      else "text")
    return cls(
        kind=get("kind") or (glue.kind if glue else
                             "tagging" if source == "conll" else ""),
        source=source, path_or_name=name,
        text_columns=tuple(c.strip() for c in columns.split(",") if c.strip()),
        label_column=get("label_column") or "label",
        splits={s: v for s, v in splits.items() if v},
        tfds_data_dir=get("tfds_data_dir"))


def _glue(config: str, kind: str, *columns: str, dev: str = "validation",
          test: str = "test") -> tuple[str, TaskSpec]:
  name = f"glue/{config}"
  return name, TaskSpec(kind, "tfds", name, columns, "label",
                        {"train": "train", "dev": dev, "test": test})


# The GLUE tasks of tfds (features of tfds 4.9's `glue` builder).
GLUE = dict([
    _glue("cola", "classification", "sentence"),
    _glue("sst2", "classification", "sentence"),
    _glue("mrpc", "classification", "sentence1", "sentence2"),
    _glue("qqp", "classification", "question1", "question2"),
    _glue("stsb", "regression", "sentence1", "sentence2"),
    _glue("mnli", "classification", "premise", "hypothesis",
          dev="validation_matched", test="test_matched"),
    _glue("qnli", "classification", "question", "sentence"),
    _glue("rte", "classification", "sentence1", "sentence2"),
    _glue("wnli", "classification", "sentence1", "sentence2"),
])


def task_config() -> ml_collections.ConfigDict:
  """The `config.task` block read by `TaskSpec.from_config`, all defaults."""
  task = ml_collections.ConfigDict()
  # A tfds name (glue/sst2, or any prepared tfds dataset), or where the files
  # are: a directory the split fields are relative to, or a path whose
  # '{split}' is replaced by a split field (data/ner/{split}.conll).
  task.path_or_name = ""
  # classification, regression or tagging ('' = GLUE's, or tagging for
  # CoNLL).
  task.kind = ""
  # tfds, csv, tsv, jsonl or conll ('' = tfds for GLUE, else the extension).
  task.source = ""
  # The text column(s), comma-separated: two for a pair task ('' = GLUE's,
  # or 'text'). For tfds tagging: the feature holding the words.
  task.text_columns = ""
  # The label column ('' = 'label'); for tfds tagging, the tags feature.
  task.label_column = ""
  # Each split's tfds split or file (a glob reads every match, sorted);
  # '' = GLUE's, or train/dev with a '{split}' path. A test split may lack
  # labels (GLUE's: -1), train and dev may not.
  task.train = ""
  task.dev = ""
  task.test = ""
  # Where tfds datasets are prepared ('' = tfds's default).
  task.tfds_data_dir = ""
  return task
