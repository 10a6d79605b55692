"""Documents from a researcher's own files: plain text or JSON Lines.

Data preparation (tokenize, then pack into examples) reads corpora that
nobody here has seen: scraped, concatenated, re-encoded, gzipped. Two rules
follow from that:

- Bad input is neither a crash nor silent. Bytes that are not UTF-8 are
  replaced with U+FFFD, JSONL lines that are not usable are skipped, and
  every such item is counted in a `ReadStats` that is logged (with the
  first place each kind of problem was seen) when the read ends. Mistakes
  that would make a whole file useless are errors (`CorpusError`, one line
  naming the file and the fix) instead: a JSONL file in which no line has
  the text field (almost surely the wrong `field`), a compressed file that
  does not decompress (partially read data would go missing unnoticed), a
  file that is not text at all (a program, an image: judged, as git and
  Perl's -B do, from its first block), and a read that yields no document
  (empty or blank files only: nothing to train on).
- Memory does not grow with the corpus. Files are read line by line and
  documents are yielded one at a time, so the peak is about twice the
  longest line (its bytes while they are decoded), whatever the file sizes.

Files are read in sorted path order, so the same pattern gives the same
documents in the same order on every machine, and `files_fingerprint` keys
caches of prepared data on what the files are (relative path, size, mtime),
not on where they live.
"""
from __future__ import annotations

import bz2
import codecs
import dataclasses
import glob
import gzip
import hashlib
import json
import lzma
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from absl import logging

FORMATS = ("text_blocks", "text_lines", "jsonl")

# Streams that the standard library decompresses; the suffix decides.
_OPENERS: dict[str, Callable[..., IO[bytes]]] = {
    ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a failed decompression raises (gzip.BadGzipFile is an OSError).
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# Archives hold several members (and headers); reading one as a text stream
# would yield binary garbage counted as thousands of decode errors.
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip",
                     ".7z", ".zst", ".zstd", ".lz4", ".br")
_GLOB_CHARS = re.compile(r"[*?[]")
# A file is judged text or not by its first block (after decompression): a
# NUL byte (git's rule), or more than this share of bytes that are neither
# UTF-8 nor text (Perl's -B rule, made UTF-8 aware), and it is not text.
# Text in a legacy 8-bit encoding with a few accented letters stays below
# the share (its bytes are replaced and counted); binary data does not. A
# few odd bytes never make a file binary, however short it is.
_SNIFF_BYTES = 8192
_MAX_NON_TEXT_SHARE = 0.3
_MIN_NON_TEXT_BYTES = 16
# C0 controls that text does not hold (whitespace and ESC, as in logs with
# colours, are text).
_NON_TEXT_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
# A JSON "\ud800" escape decodes to a lone surrogate, which no encoder (nor
# SentencePiece) accepts downstream.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Part of every fingerprint: bump it if what is hashed changes.
_FINGERPRINT_VERSION = 1

# Problem counters of ReadStats, in reporting order, with their wording.
_PROBLEMS = {
    "empty_files": "empty files",
    "empty_documents": "whitespace-only documents skipped",
    "bad_json_lines": "lines that are not a JSON object skipped",
    "missing_field_lines": "lines without the text field skipped",
    "non_string_field_lines": "lines whose text field is not a string "
                              "skipped",
    "decode_errors": "documents with invalid UTF-8 (replaced)",
}


class CorpusError(ValueError):
  """A corpus file that cannot be used; the one-line message names the file
  and the fix."""


@dataclasses.dataclass
class ReadStats:
  """What a read saw; counts add up over every read given the same stats.

  Attributes:
    files: files opened.
    documents: documents yielded.
    bytes: bytes read (after decompression).
    empty_files: files without a single non-blank line.
    decode_errors: documents (text_lines and jsonl: lines; text_blocks:
      blocks) in which bytes that are not UTF-8, or lone surrogates escaped
      in JSON, were replaced with U+FFFD. The document is still yielded.
    bad_json_lines: JSONL lines skipped: not JSON, or JSON but not an object.
    missing_field_lines: JSONL lines skipped: the object lacks the field.
    non_string_field_lines: JSONL lines skipped: the field is not a string.
    empty_documents: JSONL documents skipped for being empty or whitespace.
      (In text formats blank lines separate documents; they are not counted.)
    first_seen: problem counter name -> "path:line" of its first occurrence.
  """
  files: int = 0
  documents: int = 0
  bytes: int = 0
  empty_files: int = 0
  decode_errors: int = 0
  bad_json_lines: int = 0
  missing_field_lines: int = 0
  non_string_field_lines: int = 0
  empty_documents: int = 0
  first_seen: dict[str, str] = dataclasses.field(default_factory=dict)

  def problems(self) -> dict[str, int]:
    """The nonzero problem counters, in reporting order."""
    return {k: getattr(self, k) for k in _PROBLEMS if getattr(self, k)}

  def summary(self) -> str:
    """One line: the totals, then every nonzero problem count."""
    text = (f"{self.files} files, {self.documents} documents, "
            f"{self.bytes / 2**20:.1f} MiB")
    for name, count in self.problems().items():
      where = self.first_seen.get(name)
      text += f"; {count} {_PROBLEMS[name]}"
      if where:
        text += f" (first: {where})"
    return text


def resolve_files(pattern: str | os.PathLike[str]) -> list[pathlib.Path]:
  """The files named by `pattern`, in sorted order.

  Args:
    pattern: a file; a directory (every regular file under it, recursively,
      except hidden files and directories; symlinked directories are not
      followed); or a glob with `*`, `?`, `[...]` and `**` (any depth), which
      selects the files it matches (not directories, nor hidden names unless
      spelled out). `~` is expanded. An existing path is taken literally even
      if it contains glob characters.

  Returns:
    The files, sorted by path: the order documents are read in.

  Raises:
    FileNotFoundError: nothing exists at the path, or the glob or directory
      yields no file.
  """
  text = os.path.expanduser(os.fspath(pattern))
  path = pathlib.Path(text)
  if path.is_dir():
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      found.extend(pathlib.Path(dirpath, name) for name in filenames
                   if not name.startswith(".")
                   and os.path.isfile(os.path.join(dirpath, name)))
    if not found:
      raise FileNotFoundError(
          f"Directory {text!r} contains no files (hidden files are skipped); "
          "point to the directory that holds the corpus files.")
    return sorted(found)
  if path.exists():
    return [path]
  if not _GLOB_CHARS.search(text):
    raise FileNotFoundError(
        f"No such file or directory: {text!r} (working directory "
        f"{os.getcwd()!r}). Give an existing file or directory, or a glob "
        "such as 'corpus/*.jsonl.gz' or 'corpus/**/*.txt'.")
  found = [pathlib.Path(p) for p in glob.glob(text, recursive=True)
           if os.path.isfile(p)]
  if not found:
    raise FileNotFoundError(
        f"The glob {text!r} matches no files (working directory "
        f"{os.getcwd()!r}); check the directory and the extension, and use "
        "'**' to match files in subdirectories.")
  return sorted(found)


def files_fingerprint(paths: Sequence[str | os.PathLike[str]]) -> str:
  """A short hash of (relative path, size, mtime_ns) of `paths`, in order.

  Paths are taken relative to the deepest directory holding all of them, so
  a corpus copied elsewhere with its mtimes (`cp -p`, `rsync -a`) keeps its
  fingerprint; any edit, addition, removal or rename changes it. Contents
  are not read: hashing a large corpus would take minutes on every run.
  """
  absolute = [os.path.abspath(p) for p in paths]
  root = os.path.commonpath([os.path.dirname(p) for p in absolute]
                            ) if absolute else ""
  digest = hashlib.sha256(f"files-v{_FINGERPRINT_VERSION}".encode())
  for path in absolute:
    stat = os.stat(path)
    relative = pathlib.Path(os.path.relpath(path, root)).as_posix()
    digest.update(json.dumps([relative, stat.st_size,
                              stat.st_mtime_ns]).encode() + b"\n")
  return digest.hexdigest()[:16]


def read_documents(pattern: str | os.PathLike[str], fmt: str, *,
                   field: str = "text",
                   stats: ReadStats | None = None) -> Iterator[str]:
  """Yields the documents of the files named by `pattern`, in order.

  The arguments are checked and the files listed when this is called, so
  configuration errors surface before any document is consumed.

  Args:
    pattern: a file, directory or glob; see `resolve_files`. Files ending in
      `.gz`, `.bz2` or `.xz` are decompressed on the fly.
    fmt: 'text_blocks' (documents are runs of non-blank lines, separated by
      one or more blank or whitespace-only lines; lines joined with "\\n"),
      'text_lines' (every non-blank line is a document) or 'jsonl' (one JSON
      object per line; the document is its string `field`).
    field: the JSONL key holding the text; a dotted path such as `meta.text`
      reaches into nested objects (a key that itself contains the dots wins).
    stats: counts are added to it; a fresh one if None. Its summary is
      logged when the read ends (or is abandoned), as a warning if anything
      was skipped or replaced.

  Returns:
    An iterator of document texts: line endings ("\\n", "\\r\\n") and a
    leading UTF-8 byte-order mark removed, otherwise as in the file.

  Raises:
    ValueError: `fmt` is unknown.
    CorpusError: a file is an archive (.zip, .tar...).
    FileNotFoundError: see `resolve_files`.
    While iterating, CorpusError: a compressed file is corrupt or
    truncated, a file is not text (binary, or not UTF-8 at all), a JSONL
    file has no line with a string `field`, or no file holds any text.
  """
  if fmt not in FORMATS:
    raise ValueError(
        f"Unknown file format {fmt!r}; use one of {', '.join(FORMATS)}.")
  paths = resolve_files(pattern)
  for path in paths:
    name = path.name.lower()
    if name.endswith(_ARCHIVE_SUFFIXES):
      raise CorpusError(
          f"{path} is an archive, or compressed in a format not read here; "
          "extract or decompress it (.gz, .bz2 and .xz files are read "
          "directly).")
  return _read(paths, fmt, field, ReadStats() if stats is None else stats,
               os.fspath(pattern))


def _read(paths: list[pathlib.Path], fmt: str, field: str, stats: ReadStats,
          pattern: str) -> Iterator[str]:
  reader = {"text_blocks": _text_blocks, "text_lines": _text_lines,
            "jsonl": _jsonl}[fmt]
  ending = ""
  documents = stats.documents  # Before this read (stats may add up reads).
  try:
    for path in paths:
      stats.files += 1
      yield from reader(path, field, stats)
    if stats.documents == documents:
      raise _no_text(paths, pattern, fmt)
  except GeneratorExit:  # The consumer stopped, e.g. at a document cap.
    ending = " (stopped early)"
    raise
  except BaseException:
    ending = " (failed)"
    raise
  finally:
    level = logging.WARNING if stats.problems() else logging.INFO
    logging.log(level, "Read %s as %s%s: %s", pattern, fmt, ending,
                stats.summary())


def _no_text(paths: list[pathlib.Path], pattern: str,
             fmt: str) -> CorpusError:
  blank = ("or holds only blank text fields" if fmt == "jsonl"
           else "or whitespace only")
  if len(paths) == 1:
    return CorpusError(f"{paths[0]} holds no text: the file is empty {blank}; "
                       "give a file that holds text.")
  shown = ", ".join(map(str, paths[:3]))
  if len(paths) > 3:
    shown += f" and {len(paths) - 3} more"
  return CorpusError(
      f"{pattern} holds no text: each of its {len(paths)} files ({shown}) is "
      f"empty {blank}; give files that hold text.")


def _check_text(path: pathlib.Path, head: bytes) -> None:
  """Raises CorpusError unless `head`, the file's first block, is text."""
  if head.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise CorpusError(
        f"{path} is UTF-16 text, not UTF-8; convert it (iconv -f UTF-16 -t "
        "UTF-8) or move it out of the corpus.")
  if b"\0" in head:
    problem = f"its first {len(head)} bytes hold NUL bytes"
  else:
    decoder = codecs.getincrementaldecoder("utf-8")("ignore")
    text = decoder.decode(head)  # A character cut at the end is held back.
    invalid = len(head) - len(decoder.getstate()[0]) - len(
        text.encode("utf-8"))
    odd = invalid + len(_NON_TEXT_CONTROLS.findall(text))
    if odd < max(_MIN_NON_TEXT_BYTES, _MAX_NON_TEXT_SHARE * len(head)):
      return
    problem = (f"{odd / len(head):.0%} of its first {len(head)} bytes are "
               "not UTF-8 text")
  raise CorpusError(
      f"{path} is not text: {problem} (a program, an image, compressed "
      "data, or text in another encoding?); move it out of the corpus, or "
      "convert it to UTF-8 text.")


def _lines(path: pathlib.Path,
           stats: ReadStats) -> Iterator[tuple[int, str, bool]]:
  """(line number, text, had invalid UTF-8) of each line of a file.

  Splits at b"\\n" only (never inside a UTF-8 sequence), and decodes each
  line once, through a view that leaves out the line ending.
  """
  opener = _OPENERS.get(path.suffix.lower())
  with (opener or open)(path, "rb") as f:  # Compressed: reads nothing yet.
    try:
      _check_text(path, f.read(_SNIFF_BYTES))
      f.seek(0)  # Compressed: decompresses the block again.
      number = 0  # Not enumerate(): its cached tuple would keep `raw`.
      for raw in f:
        number += 1
        stats.bytes += len(raw)
        end = len(raw)
        if raw.endswith(b"\n"):
          end -= 2 if raw.endswith(b"\r\n") else 1
        try:
          text, invalid = str(memoryview(raw)[:end], "utf-8"), False
        except UnicodeDecodeError:
          text, invalid = str(memoryview(raw)[:end], "utf-8", "replace"), True
        del raw  # The bytes of a huge line need not outlive its text.
        if number == 1 and text.startswith("\ufeff"):
          text = text[1:]
        yield number, text, invalid
    except _DECOMPRESS_ERRORS as e:
      if opener is None:
        raise
      raise CorpusError(
          f"{path}: corrupt or truncated compressed file ({e}). Its data is "
          "not read in full; re-download or re-compress it, or move it out "
          "of the corpus.") from e


def _count(stats: ReadStats, name: str, where: str) -> None:
  """Counts one problem, remembering where the first of its kind was."""
  setattr(stats, name, getattr(stats, name) + 1)
  stats.first_seen.setdefault(name, where)


def _is_blank(text: str) -> bool:
  return not text or text.isspace()  # No stripped copy of a huge line.


def _text_lines(path: pathlib.Path, field: str,
                stats: ReadStats) -> Iterator[str]:
  del field  # Only JSONL has fields.
  empty = True
  for number, text, invalid in _lines(path, stats):
    if _is_blank(text):
      continue
    empty = False
    if invalid:
      _count(stats, "decode_errors", f"{path}:{number}")
    stats.documents += 1
    yield text
  if empty:
    _count(stats, "empty_files", str(path))


def _text_blocks(path: pathlib.Path, field: str,
                 stats: ReadStats) -> Iterator[str]:
  del field  # Only JSONL has fields.
  block, invalid_at, empty = [], 0, True
  for number, text, invalid in _lines(path, stats):
    if not _is_blank(text):
      block.append(text)
      if invalid and not invalid_at:
        invalid_at = number
      continue
    if block:
      empty = False
      yield _finish_block(block, invalid_at, path, stats)
      block, invalid_at = [], 0
  if block:
    empty = False
    yield _finish_block(block, invalid_at, path, stats)
  if empty:
    _count(stats, "empty_files", str(path))


def _finish_block(block: list[str], invalid_at: int, path: pathlib.Path,
                  stats: ReadStats) -> str:
  if invalid_at:
    _count(stats, "decode_errors", f"{path}:{invalid_at}")
  stats.documents += 1
  return "\n".join(block)


def _lookup(obj: dict[str, Any], field: str) -> tuple[bool, Any]:
  """(found, value) of `field` in `obj`, a plain or dotted key."""
  if field in obj:
    return True, obj[field]
  value = obj
  for key in field.split("."):
    if not isinstance(value, dict) or key not in value:
      return False, None
    value = value[key]
  return True, value


def _jsonl(path: pathlib.Path, field: str, stats: ReadStats) -> Iterator[str]:
  lines = usable = 0
  first_keys = None  # Of the first JSON object: the hint if none is usable.
  for number, text, invalid in _lines(path, stats):
    if _is_blank(text):
      continue
    lines += 1
    if invalid:
      _count(stats, "decode_errors", f"{path}:{number}")
    try:
      obj = json.loads(text)
    except ValueError:  # json.JSONDecodeError, or e.g. a huge int literal.
      obj = None
    del text
    if not isinstance(obj, dict):
      _count(stats, "bad_json_lines", f"{path}:{number}")
      continue
    if first_keys is None:
      first_keys = list(obj)
    found, value = _lookup(obj, field)
    del obj
    if not found:
      _count(stats, "missing_field_lines", f"{path}:{number}")
      continue
    if not isinstance(value, str):
      _count(stats, "non_string_field_lines", f"{path}:{number}")
      continue
    usable += 1
    if _is_blank(value):
      _count(stats, "empty_documents", f"{path}:{number}")
      continue
    if _SURROGATE.search(value):
      value = _SURROGATE.sub("\ufffd", value)
      if not invalid:
        _count(stats, "decode_errors", f"{path}:{number}")
    stats.documents += 1
    yield value
  if not lines:
    _count(stats, "empty_files", str(path))
  elif not usable:
    if first_keys is None:
      raise CorpusError(
          f"{path}: none of its {lines} non-blank lines is a JSON object; is "
          "it really JSON Lines? For plain text use the format 'text_lines' "
          "or 'text_blocks'.")
    shown = ", ".join(repr(k) for k in first_keys[:20])
    if len(first_keys) > 20:
      shown += f", ... ({len(first_keys)} keys)"
    raise CorpusError(
        f"{path}: no line has a string field {field!r} (checked {lines} "
        f"lines). Keys of the first object: [{shown}]. Set the field to the "
        "key that holds the text (a dotted path like 'meta.text' reaches "
        "into nested objects).")
