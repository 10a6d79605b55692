"""The offline downstream task: which package a docstring comes from.

Fine-tuning needs a labelled task that, like the offline pre-training corpus,
is already on this machine. This one is made from that corpus
(`mlm_jax.data.offline`): each example is the leading text of a docstring,
its label the top-level package of the file it comes from (`numpy`, `jax`,
`matplotlib`, ...; the standard library, whose modules are each small, is one
package, `stdlib`). Real text with real labels, learnable from vocabulary and
style but not from one keyword or from length: on the `.[dev]` install's
corpus (8 classes, 504 test examples) a tf-idf logistic regression scores 71%
on test, a nearest centroid 60%, length alone 16%, the majority class 12.5%.

The pre-training corpus holds these same texts, unlabelled: unsupervised
pre-training on the downstream domain's text, as BERT's recipe allows (the
labels, and the split, are never seen in pre-training).

How examples are chosen, so that accuracy means something:
  - Texts are cut to their leading paragraphs, at most `max_chars`
    characters (a cut paragraph ends at a word boundary). The default, 400,
    is a median of 70 pieces of the smoke run's 2,000-piece vocabulary, and
    98% fit 128 tokens; the task is about text, not length.
  - Copies of other projects inside a package (`_vendor`, `third_party`,
    ...) are dropped: they are not that package's writing.
  - Texts that are equal after the cut (up to case and whitespace) are kept
    once if they agree on the label, and dropped if they do not.
  - Splits are made by source file, so near-duplicate docstrings of one file
    never straddle train and test. Within each package, files are taken in
    the order of a hash of their name and given to test, then dev, until each
    holds a tenth of the package's documents; the rest is train. (A threshold
    on the hash alone would leave a package's dev split with a few per cent
    of its documents: documents per file are heavy-tailed.)
  - The `num_classes` packages with the most documents are kept, among those
    with at least `min_per_class` documents in every split; others dropped.
  - Classes are balanced within each split: each is capped at the size of the
    smallest, keeping the documents with the lowest text hash. Majority-class
    accuracy is exactly 1/num_classes.

Everything is deterministic. The task is written under
`<cache_dir>/tasks/<name>/` as `train.jsonl`, `dev.jsonl`, `test.jsonl`
(`{"text", "label"}` per line, classes interleaved) and `stats.json`; the
name carries a hash of the corpus's contents and of the settings, so another
corpus or setting gets its own directory. Each file is written atomically and
`stats.json` last: a directory with `stats.json` is complete and reused.
Concurrent builders write identical bytes, so they never corrupt each other.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from absl import logging

from mlm_jax.data import offline
from mlm_jax.data import prose

# The same atomic writer as the corpus's: one rule for every cache file.
_atomic_open = offline._atomic_open  # pylint: disable=protected-access

# Part of the cache key: bump it whenever the rules above change.
TASK_VERSION = 1
TEXT_FIELD = "text"
LABEL_FIELD = "label"
SPLITS = ("train", "dev", "test")
# The share of each package's documents in test and in dev; train has the rest.
HELD_OUT_FRACTION = 0.1
STATS_FILE = "stats.json"
# Directories of copies of other projects (pip/_vendor, jax/_src/third_party).
_VENDORED_DIRS = frozenset({"_vendor", "vendor", "_vendored", "vendored",
                            "third_party", "_extern", "extern"})


class OfflineTaskError(ValueError):
  """The offline task cannot be made; the message names the fix."""


def package_of(source: str) -> str:
  """The label of a corpus `source`: its top-level package.

  'site-packages/PIL/Image.py' -> 'PIL', 'site-packages/six.py' -> 'six';
  'stdlib/...' and the pydoc topics ('pydoc_data:assert') -> 'stdlib'.
  """
  if source.startswith(("stdlib/", "pydoc_data:")):
    return "stdlib"
  _, _, path = source.partition("/")
  return path.split("/", 1)[0].removesuffix(".py")


def is_vendored(source: str) -> bool:
  """Whether `source` is a copy of another project inside a package.

  pip's `_vendor` alone holds four fifths of pip's docstrings (rich, urllib3,
  requests, ...): labelled `pip`, they would teach the other projects' style.
  """
  return not _VENDORED_DIRS.isdisjoint(source.split("/")[1:-1])


def file_of(source: str) -> str:
  """The source file of a corpus `source`: all pydoc topics are one file."""
  return source.split(":", 1)[0]


def leading_text(text: str, max_chars: int | None) -> str:
  """The leading paragraphs of `text`, at most `max_chars` characters.

  Whole paragraphs while they fit; a first paragraph longer than `max_chars`
  is cut at the last space that fits (or mid-word if there is none).
  """
  if max_chars is None or len(text) <= max_chars:
    return text
  paragraphs = text.split(prose.PARAGRAPH_SEPARATOR)
  kept = paragraphs[0]
  for paragraph in paragraphs[1:]:
    longer = kept + prose.PARAGRAPH_SEPARATOR + paragraph
    if len(longer) > max_chars:
      break
    kept = longer
  if len(kept) > max_chars:
    space = kept.rfind(" ", 0, max_chars + 1)
    kept = kept[:space] if space > 0 else kept[:max_chars]
  return kept


def _hash(text: str) -> bytes:
  return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def split_files(documents_per_file: dict[str, int],
                held_out_fraction: float = HELD_OUT_FRACTION
                ) -> dict[str, str]:
  """{file: split} for the files of one package (see the module docstring)."""
  total = sum(documents_per_file.values())
  split, before = {}, 0
  for file in sorted(documents_per_file, key=lambda f: (_hash(f), f)):
    if before < held_out_fraction * total:
      split[file] = "test"
    elif before < 2 * held_out_fraction * total:
      split[file] = "dev"
    else:
      split[file] = "train"
    before += documents_per_file[file]
  return split


def _read_corpus(path: pathlib.Path) -> Iterator[tuple[str, str]]:
  """(text, source) of each document of an offline corpus file."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        document = json.loads(line)
        yield document["text"], document["source"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise OfflineTaskError(
            f"offline task: line {number} of {path} is not a JSON object with "
            f"'text' and 'source' ({type(e).__name__}: {e}); give a corpus "
            "built by mlm_jax.data.offline.offline_corpus.") from None


def _unique_texts(documents: Iterable[tuple[str, str]], max_chars: int | None,
                  stats: dict[str, Any]) -> list[tuple[str, str, str]]:
  """(text, label, file) of the cut documents, one per distinct text."""
  groups: dict[str, list[tuple[str, str, str]]] = {}
  for text, source in documents:
    stats["documents"] += 1
    if is_vendored(source):
      stats["vendored_dropped"] += 1
      continue
    text = leading_text(text, max_chars)
    key = " ".join(text.casefold().split())
    groups.setdefault(key, []).append((text, package_of(source),
                                       file_of(source)))
  unique = []
  for group in groups.values():
    if len({label for _, label, _ in group}) > 1:
      stats["ambiguous_dropped"] += len(group)
    else:
      stats["duplicates_dropped"] += len(group) - 1
      # The copy kept does not depend on the corpus's order.
      unique.append(min(group, key=lambda e: (e[2], e[0])))
  return unique


def build_offline_task(corpus_path: str | os.PathLike[str],
                       directory: str | os.PathLike[str], *,
                       num_classes: int, max_chars: int | None,
                       min_per_class: int) -> dict[str, Any]:
  """Writes the task's splits and stats under `directory`; returns the stats.

  Args: as `offline_task`, with the corpus file given.

  Raises:
    OfflineTaskError: fewer than `num_classes` packages have at least
      `min_per_class` documents in every split, or the corpus is malformed.
  """
  corpus_path, directory = pathlib.Path(corpus_path), pathlib.Path(directory)
  stats: dict[str, Any] = dict(
      task_version=TASK_VERSION, corpus=str(corpus_path),
      settings=dict(num_classes=num_classes, max_chars=max_chars,
                    min_per_class=min_per_class,
                    held_out_fraction=HELD_OUT_FRACTION),
      documents=0, vendored_dropped=0, duplicates_dropped=0,
      ambiguous_dropped=0)
  examples = _unique_texts(_read_corpus(corpus_path), max_chars, stats)
  per_file: dict[str, collections.Counter[str]] = collections.defaultdict(
      collections.Counter)
  for _, label, file in examples:
    per_file[label][file] += 1
  split_of = {label: split_files(files) for label, files in per_file.items()}
  by_split: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
  for text, label, file in examples:
    by_split[split_of[label][file], label].append(text)

  eligible = [label for label in per_file
              if all(len(by_split[s, label]) >= min_per_class for s in SPLITS)]
  # Most documents first; the name breaks ties, so the order is fixed.
  eligible.sort(key=lambda label: (-sum(per_file[label].values()), label))
  if len(eligible) < num_classes:
    raise OfflineTaskError(
        f"offline task: only {len(eligible)} of the {len(per_file)} packages "
        f"in {corpus_path} ({stats['documents']} documents) have at least "
        f"{min_per_class} documents in each of {', '.join(SPLITS)}, fewer "
        f"than num_classes={num_classes}; lower num_classes or min_per_class, "
        "or build the corpus where more packages are installed.")
  labels = eligible[:num_classes]
  stats["labels"] = labels
  stats["available"] = {label: {s: len(by_split[s, label]) for s in SPLITS}
                        for label in labels}
  stats["examples"] = {}

  directory.mkdir(parents=True, exist_ok=True)
  for split in SPLITS:
    cap = min(len(by_split[split, label]) for label in labels)
    chosen = [(text, label) for label in labels
              for text in sorted(by_split[split, label], key=_hash)[:cap]]
    chosen.sort(key=lambda example: _hash(example[0]))  # Interleave classes.
    with _atomic_open(directory / f"{split}.jsonl") as out:
      for text, label in chosen:
        out.write(json.dumps({TEXT_FIELD: text, LABEL_FIELD: label},
                             ensure_ascii=False) + "\n")
    stats["examples"][split] = {"per_class": cap, "total": len(chosen)}
  with _atomic_open(directory / STATS_FILE) as out:
    json.dump(stats, out, indent=1)
  logging.info("Built the offline task %s: %s", directory, json.dumps(
      {k: stats[k] for k in ("labels", "examples")}))
  return stats


def _file_digest(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def task_directory(cache_dir: str | os.PathLike[str],
                   corpus_path: str | os.PathLike[str], *, num_classes: int,
                   max_chars: int | None, min_per_class: int) -> pathlib.Path:
  """Where the task of this corpus (by contents) and settings is cached."""
  key = json.dumps([TASK_VERSION, _file_digest(pathlib.Path(corpus_path)),
                    num_classes, max_chars, min_per_class, HELD_OUT_FRACTION])
  fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
  return (pathlib.Path(cache_dir).expanduser() / "tasks" /
          f"offline-package-K{num_classes}-C{max_chars}-{fingerprint}")


def _check_int(name: str, value: Any, least: int, alternative: str = ""
               ) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < least:
    raise OfflineTaskError(f"offline task: {name}={value!r}; give an integer "
                           f"of at least {least}{alternative}.")


def offline_task(cache_dir: str | os.PathLike[str], *,
                 corpus_path: str | os.PathLike[str] | None = None,
                 num_classes: int = 8, max_chars: int | None = 400,
                 min_per_class: int = 20) -> dict[str, pathlib.Path]:
  """The offline package-classification task, built if absent.

  Args:
    cache_dir: the cache directory of the package (`config.data.cache_dir`,
      e.g. ~/.cache/mlm_jax): the corpus is under `corpora/`, the task under
      `tasks/`.
    corpus_path: an offline corpus file (JSON Lines of `{"text", "source"}`);
      default: this environment's, built by `offline.offline_corpus` if
      absent.
    num_classes: how many packages to tell apart.
    max_chars: texts are cut to their leading paragraphs within this many
      characters; None keeps them whole.
    min_per_class: the fewest documents a package needs in each split to be
      a class (so a split's accuracy rests on that many examples per class).

  Returns:
    {'train', 'dev', 'test'}: paths of JSON Lines files of
    `{TEXT_FIELD: str, LABEL_FIELD: str}`; `STATS_FILE` beside them holds the
    labels and the counts.

  Raises:
    OfflineTaskError: a bad setting, or a corpus with too few documents.
  """
  _check_int("num_classes", num_classes, 2)
  if max_chars is not None:
    _check_int("max_chars", max_chars, 1, " (or None for whole texts)")
  _check_int("min_per_class", min_per_class, 1)
  cache_dir = pathlib.Path(cache_dir).expanduser()
  if corpus_path is None:
    corpus_path = offline.offline_corpus(cache_dir / "corpora")
  corpus_path = pathlib.Path(corpus_path)
  if not corpus_path.is_file():
    raise OfflineTaskError(f"offline task: no corpus file {corpus_path}; give "
                           "an existing corpus_path, or None to build this "
                           "environment's.")
  settings = dict(num_classes=num_classes, max_chars=max_chars,
                  min_per_class=min_per_class)
  directory = task_directory(cache_dir, corpus_path, **settings)
  paths = {split: directory / f"{split}.jsonl" for split in SPLITS}
  # The stats are written last: present means the splits are complete.
  if not all(path.exists() for path in [*paths.values(),
                                        directory / STATS_FILE]):
    build_offline_task(corpus_path, directory, **settings)
  return paths


def read_examples(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
  """(text, label) of each example of a task file, in order."""
  with open(path, encoding="utf-8") as f:
    examples = [json.loads(line) for line in f if line.strip()]
  return [(example[TEXT_FIELD], example[LABEL_FIELD]) for example in examples]


def class_names(paths: dict[str, pathlib.Path]) -> Sequence[str]:
  """The class names of a task returned by `offline_task`, in a fixed order."""
  stats_file = paths["train"].with_name(STATS_FILE)
  return json.loads(stats_file.read_text(encoding="utf-8"))["labels"]
