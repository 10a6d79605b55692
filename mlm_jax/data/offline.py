"""The offline default corpus: English prose already on this machine.

A smoke pre-training run must not need the network, so the default corpus is
built from text every installation of this package has: the docstrings of the
standard library and of site-packages, plus the help topics of
`pydoc_data.topics`. Sources are parsed with `ast`, never imported (importing
e.g. `antigravity` opens a web browser).

This module collects, builds and caches the corpus; `prose` holds the rules
that clean a docstring into prose paragraphs (or reject it). Exact duplicate
documents (up to case and whitespace) are kept once. The corpus is a JSON
Lines file of `{"text", "source"}` documents in a deterministic order (pydoc
topics by name, then files by source name, then position in the file), the
same for any number of workers.

The cache file name carries a fingerprint of the inputs, so another
environment gets its own file, and every file is written atomically (temp
file, fsync, rename): a file at its final path is always complete. A build
killed meanwhile leaves its temp file, which the next build removes (see
`scratch`).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import platform
import re
import sysconfig
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from absl import logging

from mlm_jax.data import prose
from mlm_jax.data import scratch

# Part of the cache key: bump it whenever collection or cleaning rules (here
# or in `prose`) change.
CORPUS_VERSION = 2
# Larger sources are generated tables (unicode data, op registries), not prose.
MAX_FILE_BYTES = 4 * 1024 * 1024

# Test suites are code and fixtures. A non-venv stdlib nests the system
# site-packages, which is a root of its own (or deliberately not collected).
_SKIPPED_DIRS = frozenset({"test", "tests", "testing", "idle_test", "_tests",
                           "testdata", "test_data", "__pycache__",
                           "site-packages", "dist-packages"})
_TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """A python file to read docstrings from.

  Attributes:
    path: absolute path on this machine.
    source: `<root label>/<posix path under the root>`, the same on every
      machine: the sort key and the `source` of its documents.
    size: in bytes; part of the cache fingerprint.
  """
  path: str
  source: str
  size: int


def default_source_roots() -> dict[str, str]:
  """{label: directory} of this interpreter's stdlib and site-packages."""
  paths = sysconfig.get_paths()
  roots = {"stdlib": paths["stdlib"], "site-packages": paths["purelib"]}
  if os.path.realpath(paths["platlib"]) != os.path.realpath(paths["purelib"]):
    roots["platlib"] = paths["platlib"]
  return roots


def collect_source_files(
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
) -> list[SourceFile]:
  """The `*.py` files under `roots` (default stdlib, site-packages), by source.

  Skips test directories and files. Symlinked directories are not followed:
  no loops, and nothing is counted twice.
  """
  files = []
  if roots is None:
    roots = default_source_roots()
  for label, root in roots.items():
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
      dirnames[:] = [d for d in dirnames
                     if d not in _SKIPPED_DIRS and not d.startswith(".")]
      for name in filenames:
        if name.endswith(".py") and not _TEST_FILE.match(name):
          path = os.path.join(dirpath, name)
          with contextlib.suppress(OSError):  # A dangling symlink.
            rel = pathlib.Path(os.path.relpath(path, root)).as_posix()
            files.append(
                SourceFile(path, f"{label}/{rel}", os.stat(path).st_size))
  return sorted(files, key=lambda f: f.source)


def corpus_fingerprint(files: Iterable[SourceFile],
                       include_topics: bool = True) -> str:
  """A short hash of what the corpus is built from.

  The python version stands for the pydoc topics, which ship with it.
  """
  digest = hashlib.sha256(json.dumps([CORPUS_VERSION, include_topics,
                                      platform.python_implementation(),
                                      platform.python_version()]).encode())
  for f in files:
    digest.update(f"\n{f.source}\0{f.size}".encode())
  return digest.hexdigest()[:16]


def docstrings(source: str) -> list[str]:
  """The docstrings of a module, its classes and functions, in file order.

  Raises SyntaxError, ValueError or RecursionError if `source` does not parse.
  """
  with warnings.catch_warnings():  # Old files warn about invalid escapes.
    warnings.simplefilter("ignore")
    tree = ast.parse(source)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      if doc := ast.get_docstring(node, clean=True):
        # The module has no position, so it sorts first.
        found.append((getattr(node, "lineno", 0),
                      getattr(node, "col_offset", 0), doc))
  return [doc for _, _, doc in sorted(found)]


def file_documents(file: SourceFile) -> tuple[list[str], str | None]:
  """(cleaned documents in file order, None), or ([], why it is skipped)."""
  if file.size > MAX_FILE_BYTES:
    return [], "too_large"
  try:
    with open(file.path, "rb") as f:
      data = f.read(MAX_FILE_BYTES + 1)
  except OSError:
    return [], "unreadable"
  if len(data) > MAX_FILE_BYTES:  # Grew since it was listed.
    return [], "too_large"
  try:
    found = docstrings(data.decode("utf-8-sig"))
  except UnicodeDecodeError:
    return [], "not_utf8"
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return [], "syntax_error"  # Including syntax newer than this python.
  return [doc for doc in map(prose.clean_docstring, found) if doc], None


def topic_documents() -> list[tuple[str, str]]:
  """(source, text) of the cleaned pydoc help topics, by topic name."""
  # A pure data module: importing it has no side effects.
  from pydoc_data.topics import topics
  cleaned = ((name, prose.clean_docstring(text))
             for name, text in sorted(topics.items()))
  return [(f"pydoc_data:{name}", text) for name, text in cleaned if text]


@contextlib.contextmanager
def _atomic_open(path: pathlib.Path) -> Iterator[IO[str]]:
  """A text file that appears at `path` complete, or not at all."""
  fd, tmp = scratch.mkstemp(path.parent, path.name)
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache.
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  with contextlib.suppress(OSError):  # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)


@contextlib.contextmanager
def _file_results(
    files: Sequence[SourceFile],
    num_workers: int,
) -> Iterator[Iterator[tuple[list[str], str | None]]]:
  """`file_documents` of each file, in order, over `num_workers` processes."""
  if num_workers <= 1:
    yield map(file_documents, files)
    return
  # spawn, not fork: the caller may already run JAX threads, and forking a
  # multithreaded process can deadlock the children.
  with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
    yield pool.imap(file_documents, files, chunksize=8)


def build_offline_corpus(path: str | os.PathLike[str],
                         files: Sequence[SourceFile] | None = None,
                         num_workers: int | None = None,
                         include_topics: bool = True) -> dict[str, Any]:
  """Writes the corpus to `path` as JSON Lines, atomically.

  Args:
    path: the output file; its directory is created if needed.
    files: sources to read (default: `collect_source_files()`).
    num_workers: processes that parse (default: one per usable core); 1
      parses in this process. The output does not depend on it. With more,
      workers are spawned, so a calling script needs the usual
      `if __name__ == "__main__":` guard.
    include_topics: whether to start with the pydoc help topics.

  Returns:
    JSON-serialisable build statistics.
  """
  start = time.perf_counter()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  files = collect_source_files() if files is None else list(files)
  if num_workers is None:  # A spawned worker costs about as much as ~50 files.
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count())
    num_workers = max(1, min(cpus or 1, len(files) // 64))
  stats: dict[str, Any] = dict(
      corpus_version=CORPUS_VERSION, files_scanned=len(files), files_skipped=0,
      skipped_by_reason={}, topics=0, documents=0, duplicates_dropped=0,
      characters=0, bytes=0, words=0, num_workers=num_workers)
  seen: set[bytes] = set()
  with _atomic_open(path) as out, _file_results(files, num_workers) as results:
    topics = topic_documents() if include_topics else []
    stats["topics"] = len(topics)
    for source, text in itertools.chain(
        topics, _file_documents(files, results, stats)):
      key = hashlib.blake2b(" ".join(text.casefold().split()).encode(),
                            digest_size=16)
      if key.digest() in seen:
        stats["duplicates_dropped"] += 1
        continue
      seen.add(key.digest())
      out.write(json.dumps({"text": text, "source": source},
                           ensure_ascii=False) + "\n")
      stats["documents"] += 1
      stats["characters"] += len(text)
      stats["bytes"] += len(text.encode("utf-8"))
      stats["words"] += len(text.split())
  stats["file_bytes"] = path.stat().st_size
  stats["build_seconds"] = round(time.perf_counter() - start, 3)
  logging.info("Built the offline corpus %s: %s", path, stats)
  return stats


def _file_documents(files: Sequence[SourceFile],
                    results: Iterable[tuple[list[str], str | None]],
                    stats: dict[str, Any]) -> Iterator[tuple[str, str]]:
  """(source, text) of every document of `files`; counts skipped files."""
  for file, (documents, skipped) in zip(files, results):
    if skipped:
      stats["files_skipped"] += 1
      stats["skipped_by_reason"][skipped] = (
          stats["skipped_by_reason"].get(skipped, 0) + 1)
      logging.debug("Offline corpus: skipped %s (%s).", file.path, skipped)
    for text in documents:
      yield file.source, text


def stats_path(corpus: str | os.PathLike[str]) -> pathlib.Path:
  """Where the stats of a corpus file are kept: `<name>.stats.json`."""
  corpus = pathlib.Path(corpus)
  return corpus.with_name(corpus.stem + ".stats.json")


def offline_corpus(cache_dir: str | os.PathLike[str],
                   num_workers: int | None = None,
                   roots: Mapping[str, str | os.PathLike[str]] | None = None,
                   include_topics: bool = True) -> pathlib.Path:
  """The cached offline corpus of this environment, built if absent.

  Args:
    cache_dir: directory of cached corpora (created if needed).
    num_workers: see `build_offline_corpus`.
    roots: {label: directory} to collect from (default: stdlib,
      site-packages).
    include_topics: whether to include the pydoc help topics.

  Returns:
    The path of the JSON Lines corpus; its stats are at `stats_path(path)`.
  """
  files = collect_source_files(roots)
  path = pathlib.Path(cache_dir) / (
      f"offline-v{CORPUS_VERSION}-"
      f"{corpus_fingerprint(files, include_topics)}.jsonl")
  scratch.remove_dead(cache_dir)  # of builds killed before
  if path.exists():  # Written atomically: existing means complete.
    return path
  stats = build_offline_corpus(path, files, num_workers, include_topics)
  with _atomic_open(stats_path(path)) as out:
    json.dump(stats, out, indent=1, sort_keys=True)
  return path


def read_documents(path: str | os.PathLike[str]) -> Iterator[str]:
  """Yields the texts of a corpus file, in order."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield json.loads(line)["text"]
