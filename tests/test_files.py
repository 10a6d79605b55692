"""Tests of reading documents from local files (mlm_jax/data/files.py).

Every corpus is a handful of small files written to tmp_path; the largest is
a 5 MiB single-line document.
"""
import bz2
import dataclasses
import functools
import gzip
import json
import logging
import lzma
import os
import random
import shutil
import sys
import tracemalloc

import pytest

from mlm_jax.data import files


def _write(root, contents):
  """Writes {relative name: str or bytes}; returns root."""
  for name, content in contents.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
      path.write_bytes(gzip.compress(content.encode()))
    elif isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_bytes(content.encode())  # No newline translation.
  return root


def _read(pattern, fmt, **kwargs):
  stats = files.ReadStats()
  docs = list(files.read_documents(pattern, fmt, stats=stats, **kwargs))
  return docs, stats


def _jsonl(*objects):
  return "".join(json.dumps(o) + "\n" for o in objects)


# Formats.


def test_text_blocks_split_at_runs_of_blank_lines(tmp_path):
  _write(tmp_path, {"a.txt": ("\n\nFirst block,\n  second line.\n\n \t \n\n"
                              "Second block.\nEnd\n\n\n")})
  docs, stats = _read(tmp_path / "a.txt", "text_blocks")
  assert docs == ["First block,\n  second line.", "Second block.\nEnd"]
  assert (stats.files, stats.documents) == (1, 2)
  assert stats.problems() == {}


def test_text_lines_one_document_per_non_blank_line(tmp_path):
  _write(tmp_path, {"a.txt": "one\n\n  two  \n   \nthree"})
  docs, stats = _read(tmp_path / "a.txt", "text_lines")
  assert docs == ["one", "  two  ", "three"]
  assert stats.documents == 3 and stats.problems() == {}
  assert stats.bytes == len("one\n\n  two  \n   \nthree")


def test_jsonl_reads_the_field_and_dotted_paths(tmp_path):
  _write(tmp_path, {"a.jsonl": _jsonl({"text": "a", "id": 1},
                                      {"text": "b\nc", "id": 2}) + "\n",
                    "b.jsonl": _jsonl({"meta": {"body": "nested"}},
                                      {"meta.body": "literal key"})})
  assert _read(tmp_path / "a.jsonl", "jsonl")[0] == ["a", "b\nc"]
  docs, stats = _read(tmp_path / "b.jsonl", "jsonl", field="meta.body")
  assert docs == ["nested", "literal key"]
  assert stats.problems() == {}


def test_unknown_format_is_an_error_before_iteration(tmp_path):
  _write(tmp_path, {"a.txt": "x\n"})
  with pytest.raises(ValueError, match="text_blocks, text_lines, jsonl"):
    files.read_documents(tmp_path / "a.txt", "csv")


def test_crlf_and_byte_order_mark(tmp_path):
  _write(tmp_path, {"a.txt": "\ufeffone\r\ntwo\r\n\r\nthree\r\n",
                    "a.jsonl": '\ufeff{"text": "x"}\r\n{"text": "y\\r"}\r\n'})
  assert _read(tmp_path / "a.txt", "text_lines")[0] == ["one", "two",
                                                        "three"]
  assert _read(tmp_path / "a.txt", "text_blocks")[0] == ["one\ntwo",
                                                         "three"]
  docs, stats = _read(tmp_path / "a.jsonl", "jsonl")
  assert docs == ["x", "y\r"] and stats.problems() == {}


# Which files, in which order.


@pytest.fixture
def corpus(tmp_path):
  """Files created out of order, in nested directories, some hidden."""
  return _write(tmp_path / "corpus", {
      "b.txt": "b\n", "a.txt": "a\n", "sub/c.txt": "c\n",
      "sub/deeper/d.txt": "d\n", "a.md": "md\n", ".hidden.txt": "hidden\n",
      ".git/e.txt": "git\n", "sub/.f.txt": "hidden\n"})


def test_directory_reads_every_visible_file_recursively_sorted(corpus):
  assert [p.relative_to(corpus).as_posix()
          for p in files.resolve_files(corpus)] == [
              "a.md", "a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt"]
  docs, stats = _read(corpus, "text_lines")
  assert docs == ["md", "a", "b", "c", "d"]
  assert stats.files == 5


def test_globs_select_files_sorted(corpus, monkeypatch):
  assert _read(corpus / "*.txt", "text_lines")[0] == ["a", "b"]
  assert _read(corpus / "*", "text_lines")[0] == ["md", "a", "b"]  # Not sub/.
  assert _read(corpus / "**" / "*.txt", "text_lines")[0] == ["a", "b", "c",
                                                             "d"]
  assert _read(corpus / "[b-z].txt", "text_lines")[0] == ["b"]
  monkeypatch.chdir(corpus)
  assert _read("sub/**/?.txt", "text_lines")[0] == ["c", "d"]


def test_single_file_home_and_literal_glob_characters(tmp_path, monkeypatch):
  _write(tmp_path, {"odd[1].txt": "literal\n", "notes.txt": "home\n"})
  assert _read(tmp_path / "odd[1].txt", "text_lines")[0] == ["literal"]
  monkeypatch.setenv("HOME", str(tmp_path))
  assert _read("~/notes.txt", "text_lines")[0] == ["home"]


def test_missing_path_empty_glob_and_empty_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"'nope/a.txt'.*working dir"):
    files.read_documents("nope/a.txt", "text_lines")
  with pytest.raises(FileNotFoundError,
                     match=r"glob 'data/\*\.txt' matches no files.*"
                     + str(tmp_path)):
    files.resolve_files("data/*.txt")
  _write(tmp_path, {"data/.only_hidden": "x\n"})
  with pytest.raises(FileNotFoundError, match="glob 'data/\\*' matches no"):
    files.resolve_files("data/*")  # It matches a hidden file only.
  with pytest.raises(FileNotFoundError, match="Directory 'data' contains no"):
    files.resolve_files("data")


# Compressed files.


def test_gzip_text_and_jsonl(tmp_path):
  _write(tmp_path, {"a.txt.gz": "one\n\ntwo\n",
                    "b.jsonl.gz": _jsonl({"text": "three"})})
  assert _read(tmp_path / "a.txt.gz", "text_blocks")[0] == ["one", "two"]
  assert _read(tmp_path / "b.jsonl.gz", "jsonl")[0] == ["three"]


def test_bz2_and_xz(tmp_path):
  (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(b"bz\n"))
  (tmp_path / "b.txt.xz").write_bytes(lzma.compress(b"xz\n"))
  assert _read(tmp_path, "text_lines")[0] == ["bz", "xz"]


@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "corrupt"])
def test_damaged_compressed_file_is_an_error_naming_it(tmp_path, damage):
  data = gzip.compress(os.urandom(50_000).hex().encode())
  data = {"truncated": data[:len(data) // 2], "not_gzip": b"plain text\n",
          "corrupt": data[:5000] + bytes(1000) + data[6000:]}[damage]
  (tmp_path / "bad.txt.gz").write_bytes(data)
  with pytest.raises(ValueError, match="bad.txt.gz: corrupt or truncated"):
    list(files.read_documents(tmp_path / "bad.txt.gz", "text_lines"))


def test_archives_are_refused(tmp_path):
  _write(tmp_path, {"a.txt": "x\n", "b.tar.gz": "x\n"})
  with pytest.raises(ValueError, match="b.tar.gz is an archive"):
    files.read_documents(tmp_path, "text_lines")


# Bad input: replaced or skipped, and counted.


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
  _write(tmp_path, {"a.txt": b"caf\xe9\nok\nbad \xff\xfe\n\nblock \x80\n",
                    "b.jsonl": b'{"text": "x\xe9y"}\n{"text": "ok"}\n'})
  docs, stats = _read(tmp_path / "a.txt", "text_lines")
  assert docs == ["caf\ufffd", "ok", "bad \ufffd\ufffd", "block \ufffd"]
  assert stats.decode_errors == 3
  assert stats.first_seen["decode_errors"] == f"{tmp_path / 'a.txt'}:1"
  docs, stats = _read(tmp_path / "a.txt", "text_blocks")  # Per block.
  assert docs == ["caf\ufffd\nok\nbad \ufffd\ufffd", "block \ufffd"]
  assert stats.decode_errors == 2
  docs, stats = _read(tmp_path / "b.jsonl", "jsonl")
  assert docs == ["x\ufffdy", "ok"] and stats.decode_errors == 1


def test_escaped_lone_surrogate_is_replaced_and_counted(tmp_path):
  _write(tmp_path, {"a.jsonl": '{"text": "a\\ud83d b"}\n'})
  docs, stats = _read(tmp_path / "a.jsonl", "jsonl")
  assert docs == ["a\ufffd b"] and stats.decode_errors == 1
  docs[0].encode("utf-8")  # Downstream can encode it.


def test_bad_jsonl_lines_are_skipped_and_counted(tmp_path):
  _write(tmp_path, {"a.jsonl": (
      '{"text": "good 1"}\n'
      '{"text": "truncated\n'
      '["an", "array"]\n'
      '"a string"\n'
      '{"body": "wrong key"}\n'
      '{"text": null}\n'
      '{"text": ["a", "list"]}\n'
      '{"text": " \\n\\t "}\n'
      '\n'
      '{"text": "good 2"}\n')})
  docs, stats = _read(tmp_path / "a.jsonl", "jsonl")
  assert docs == ["good 1", "good 2"]
  assert stats.problems() == {"empty_documents": 1, "bad_json_lines": 3,
                              "missing_field_lines": 1,
                              "non_string_field_lines": 2}
  assert stats.first_seen["bad_json_lines"].endswith("a.jsonl:2")
  assert stats.first_seen["missing_field_lines"].endswith("a.jsonl:5")
  summary = stats.summary()
  assert "3 lines that are not a JSON object skipped" in summary
  assert "1 whitespace-only documents skipped" in summary


def test_jsonl_file_without_the_field_is_a_config_error(tmp_path):
  _write(tmp_path, {"a.jsonl": _jsonl({"text": "fine"}),
                    "b.jsonl": _jsonl({"id": 1, "content": "x"},
                                      {"id": 2, "content": "y"}) + "oops\n",
                    "c.jsonl": "plain text\nnot json\n"})
  docs = files.read_documents(tmp_path / "*.jsonl", "jsonl")
  assert next(docs) == "fine"  # Files before the broken one are read.
  with pytest.raises(ValueError, match=r"b.jsonl: no line has a string field "
                     r"'text' \(checked 3 lines\)\. Keys of the first object: "
                     r"\['id', 'content'\]"):
    next(docs)
  with pytest.raises(ValueError, match="c.jsonl: none of its 2 non-blank "
                     "lines is a JSON object"):
    list(files.read_documents(tmp_path / "c.jsonl", "jsonl"))
  # The right field reads it.
  assert _read(tmp_path / "b.jsonl", "jsonl", field="content")[0] == ["x", "y"]


def test_empty_files_are_counted(tmp_path):
  _write(tmp_path, {"a.txt": "", "b.txt": "\n \n\r\n", "c.txt.gz": "",
                    "d.txt": "doc\n", "j/a.jsonl": "", "j/b.jsonl": "\n\n",
                    "j/c.jsonl": _jsonl({"text": "doc"})})
  for fmt in ("text_lines", "text_blocks"):
    docs, stats = _read(tmp_path / "*.txt*", fmt)
    assert docs == ["doc"]
    assert (stats.files, stats.empty_files) == (4, 3)
    assert stats.first_seen["empty_files"] == str(tmp_path / "a.txt")
  docs, stats = _read(tmp_path / "j", "jsonl")
  assert docs == ["doc"]
  assert stats.problems() == {"empty_files": 2}


def test_no_text_at_all_is_an_error_naming_the_files(tmp_path):
  _write(tmp_path, {"zero.txt": "", "blank.txt": " \n\t\r\n\n",
                    "blank.txt.gz": "\n\n", "j/a.jsonl": "",
                    "j/b.jsonl": _jsonl({"text": " "}, {"text": ""})})
  for pattern, fmt in [("zero.txt", "text_blocks"), ("blank.txt", "text_lines"),
                       ("blank.txt.gz", "text_blocks"), ("j/b.jsonl", "jsonl")]:
    docs = files.read_documents(tmp_path / pattern, fmt)
    with pytest.raises(files.CorpusError, match=(
        f"^{tmp_path / pattern} holds no text: the file is empty") + (
            " or holds only blank text fields" if fmt == "jsonl" else
            " or whitespace only") + "; give a file that holds text.$"):
      next(docs)
  with pytest.raises(files.CorpusError) as raised:
    list(files.read_documents(tmp_path / "*.txt*", "text_lines"))
  assert str(raised.value) == (
      f"{tmp_path / '*.txt*'} holds no text: each of its 3 files "
      f"({tmp_path / 'blank.txt'}, {tmp_path / 'blank.txt.gz'}, "
      f"{tmp_path / 'zero.txt'}) is empty or whitespace only; give files "
      "that hold text.")
  with pytest.raises(files.CorpusError, match=r"j holds no text: each of its "
                     r"2 files .* is empty or holds only blank text fields"):
    list(files.read_documents(tmp_path / "j", "jsonl"))
  # Several reads adding up into one ReadStats are judged one by one.
  stats = files.ReadStats()
  _write(tmp_path, {"text.txt": "doc\n"})
  list(files.read_documents(tmp_path / "text.txt", "text_lines", stats=stats))
  with pytest.raises(files.CorpusError, match="zero.txt holds no text"):
    list(files.read_documents(tmp_path / "zero.txt", "text_lines",
                              stats=stats))


# Files that are not text.


def _program_bytes():
  """The start of this machine's python interpreter: a compiled program."""
  with open(os.path.realpath(sys.executable), "rb") as f:
    return f.read(64 * 1024)


PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00"
       b"\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa" + bytes(range(256)) * 4)


@pytest.mark.parametrize("kind", ["program", "png", "gzipped_program",
                                  "random_bytes_without_nul", "utf16",
                                  "cp1251"])
def test_a_file_that_is_not_text_is_refused_naming_it(tmp_path, kind):
  program = _program_bytes()
  noise = bytes(b % 255 + 1 for b in random.Random(0).randbytes(20_000))
  data, name = {
      "program": (program, "python"), "png": (PNG, "img.png"),
      "gzipped_program": (gzip.compress(program), "lib.so.gz"),
      "random_bytes_without_nul": (noise, "noise.txt"),
      "utf16": ("Text in UTF-16.\n".encode("utf-16"), "notes.txt"),
      "cp1251": ("Текст по-ру"
                 "сски.\n".encode("cp1251") * 50,
                 "ru.txt")}[kind]
  _write(tmp_path, {"a.txt": "Some text first.\n"})
  (tmp_path / name).write_bytes(data)
  docs = files.read_documents(tmp_path, "text_lines")
  with pytest.raises(files.CorpusError) as raised:
    list(docs)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(str(tmp_path / name) + " is ")
  if kind == "utf16":
    assert "is UTF-16 text, not UTF-8; convert it (iconv" in message
  else:
    assert ("hold NUL bytes" in message) == (kind in ("program", "png",
                                                      "gzipped_program"))
    assert message.endswith("move it out of the corpus, or convert it to "
                            "UTF-8 text.")


def test_text_with_a_few_odd_bytes_is_still_text(tmp_path):
  latin1 = ("Le c\u0153ur d\u00e9\u00e7u mais l'\u00e2me plut\u00f4t "
            "na\u00efve, Lou\u00ffs r\u00eava. ").encode("cp1252") * 100
  odd = b"Plain text. " * 500 + b"\xff\xfe\x80 and \x01 controls\n" * 20
  coloured = "\x1b[31mERROR\x1b[0m thing happened\f\v\n" * 100
  # A character across the end of the block judged is read whole.
  cut = "\u00e9" * (files._SNIFF_BYTES // 2 - 1) + "e\u00e9\n"
  _write(tmp_path, {"a.txt": latin1, "b.txt": odd, "c.log": coloured,
                    "d.txt": cut, "e.txt": b"\xff\n"})
  docs, stats = _read(tmp_path, "text_lines")
  assert len(docs) == 1 + 20 + 100 + 1 + 1  # a.txt, b.txt ... in order.
  assert stats.decode_errors == 1 + 20 + 1
  assert docs[-2] == cut.rstrip("\n")


# Scale.


def _peak_bytes(fn):
  """(fn(), peak bytes traced while it ran)."""
  tracemalloc.start()
  try:
    result = fn()
    return result, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def _decode_whole(path, parse):
  text = path.read_bytes().decode("utf-8")
  return json.loads(text) if parse else text


def test_five_megabyte_single_line_document_is_read_intact(tmp_path):
  doc = ("word " * (5 * 2**20 // 5)).strip() + " \u00e9nd"
  (tmp_path / "big.txt").write_text(doc + "\n", encoding="utf-8")
  (tmp_path / "big.jsonl").write_text(_jsonl({"text": doc}), encoding="utf-8")
  for name, fmt in [("big.txt", "text_lines"), ("big.txt", "text_blocks"),
                    ("big.jsonl", "jsonl")]:
    # The least any reader needs: the file's bytes while they are decoded
    # (and parsed).
    _, least = _peak_bytes(functools.partial(_decode_whole, tmp_path / name,
                                             parse=fmt == "jsonl"))
    docs = files.read_documents(tmp_path / name, fmt)
    got, peak = _peak_bytes(functools.partial(next, docs))
    assert got == doc, fmt
    assert list(docs) == []
    assert peak < 1.1 * least, (fmt, peak / least)


def test_memory_does_not_grow_with_the_corpus(tmp_path):
  line = "x" * 200 + "\n"
  for i in range(4):
    (tmp_path / f"{i}.txt").write_text(line * 5000)  # 4 MiB in all.
  docs = files.read_documents(tmp_path, "text_lines")
  count, peak = _peak_bytes(lambda: sum(1 for _ in docs))
  assert count == 20_000
  assert peak < 256 * 1024, peak


# Reporting.


def test_summary_is_logged_as_warning_when_something_was_skipped(
    tmp_path, caplog):
  _write(tmp_path, {"a.txt": "fine\n", "b.jsonl": '{"text": "x"}\n{oops\n'})
  with caplog.at_level(logging.INFO):
    list(files.read_documents(tmp_path / "a.txt", "text_lines"))
    list(files.read_documents(tmp_path / "b.jsonl", "jsonl"))
  records = [r for r in caplog.records if "Read " in r.getMessage()]
  assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
  assert "1 files, 1 documents" in records[0].getMessage()
  assert ("1 lines that are not a JSON object skipped (first: "
          f"{tmp_path / 'b.jsonl'}:2)") in records[1].getMessage()


def test_abandoned_read_logs_and_counts_what_was_read(tmp_path, caplog):
  _write(tmp_path, {"a.txt": "one\ntwo\nthree\n"})
  stats = files.ReadStats()
  with caplog.at_level(logging.INFO):
    docs = files.read_documents(tmp_path / "a.txt", "text_lines", stats=stats)
    assert next(docs) == "one"
    docs.close()
  assert stats.documents == 1
  assert any("(stopped early)" in r.getMessage() for r in caplog.records)


def test_stats_accumulate_and_serialise(tmp_path):
  _write(tmp_path, {"a.txt": "one\ntwo\n", "b.txt": b"\xff\n"})
  stats = files.ReadStats()
  list(files.read_documents(tmp_path / "a.txt", "text_lines", stats=stats))
  list(files.read_documents(tmp_path / "b.txt", "text_lines", stats=stats))
  assert (stats.files, stats.documents, stats.decode_errors) == (2, 3, 1)
  assert json.loads(json.dumps(dataclasses.asdict(stats)))["documents"] == 3


# Fingerprints.


def test_fingerprint_tracks_changes_not_location(corpus, tmp_path):
  paths = files.resolve_files(corpus)
  before = files.files_fingerprint(paths)
  assert files.files_fingerprint(files.resolve_files(corpus)) == before
  assert len(before) == 16
  copy = shutil.copytree(corpus, tmp_path / "elsewhere")  # Keeps mtimes.
  assert files.files_fingerprint(files.resolve_files(copy)) == before

  target = corpus / "a.txt"
  stat = target.stat()
  target.write_text("A\n")  # Same size: only the mtime tells.
  os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  touched = files.files_fingerprint(paths)
  assert touched != before
  target.write_text("longer\n")
  os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  assert files.files_fingerprint(paths) not in (before, touched)
  _write(corpus, {"z.txt": "new\n"})
  assert files.files_fingerprint(files.resolve_files(corpus)) != (
      files.files_fingerprint(paths))
