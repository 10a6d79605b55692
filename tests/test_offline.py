"""Tests of the offline default corpus (mlm_jax/data/offline.py).

Builds run on a few small files written to tmp_path (and a few real stdlib
files), never on the whole stdlib, so the file runs in seconds. The cleaning
rules themselves are tested in test_prose.py.
"""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from mlm_jax.data import offline
from mlm_jax.data import prose
from mlm_jax.data import scratch

PROSE = ("The quick brown fox jumps over the lazy dog while the farmer "
         "watches from the porch of the old house, and nobody in the village "
         "seems to mind it.")



def _write_package(root, files):
  for name, content in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content, encoding="utf-8")
  return root


@pytest.fixture
def package(tmp_path):
  """A small package: prose, a duplicate, bad files and skipped tests."""
  root = _write_package(tmp_path / "pkg", {
      "a.py": (f'"""Module a. {PROSE}"""\n\n'
               f'class A:\n    """Class A. {PROSE}"""\n\n'
               f'    def method(self):\n        """Method. {PROSE}"""\n\n'
               f'def shared():\n    """{PROSE}"""\n'),
      # The same docstring as a.shared up to case and wrapping.
      "b.py": ('def g():\n    """'
               + PROSE.upper().replace(" the ", "\n    the ") + '"""\n'),
      "c.py": (f'def h():\n    """Function h. {PROSE}"""\n\n'
               'def short():\n    """Too short."""\n'),
      "broken.py": 'def f(:\n    """Never read."""\n',
      "latin1.py": b'"""Caf\xe9 ' + PROSE.encode() + b'"""\n',
      "tests/test_x.py": f'"""Skipped test. {PROSE}"""\n',
      "tests/helpers.py": f'"""Skipped test helper. {PROSE}"""\n',
      "sub/__pycache__/d.py": f'"""Skipped cache. {PROSE}"""\n',
      "sub/test_y.py": f'"""Skipped test. {PROSE}"""\n',
      "sub/z_test.py": f'"""Skipped test. {PROSE}"""\n',
      "sub/d.py": f'"""Module d. {PROSE}"""\n',
  })
  # Would recurse forever if followed.
  os.symlink(root, root / "sub" / "loop")
  return root


def _records(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]



def test_docstrings_in_file_order_without_importing():
  source = ('"""Module."""\nimport antigravity\n\ndef f():\n    """F."""\n'
            'class C:\n    """C."""\n    async def m(self):\n        """M."""\n'
            'def g():\n    """G."""\n')
  assert offline.docstrings(source) == ["Module.", "F.", "C.", "M.", "G."]
  with pytest.raises(SyntaxError):
    offline.docstrings("def f(:\n")


def test_collect_skips_tests_and_symlinked_dirs(package):
  files = offline.collect_source_files({"pkg": package})
  assert [f.source for f in files] == [
      "pkg/a.py", "pkg/b.py", "pkg/broken.py", "pkg/c.py", "pkg/latin1.py",
      "pkg/sub/d.py"]
  assert all(f.size == os.path.getsize(f.path) for f in files)


def test_build_dedups_skips_bad_files_and_keeps_order(package, tmp_path):
  files = offline.collect_source_files({"pkg": package})
  path = tmp_path / "out" / "corpus.jsonl"
  stats = offline.build_offline_corpus(path, files, num_workers=1,
                                       include_topics=False)
  records = _records(path)
  assert [(r["source"], r["text"].split()[0]) for r in records] == [
      ("pkg/a.py", "Module"), ("pkg/a.py", "Class"), ("pkg/a.py", "Method."),
      ("pkg/a.py", "The"), ("pkg/c.py", "Function"), ("pkg/sub/d.py", "Module")]
  assert stats["documents"] == 6
  assert stats["duplicates_dropped"] == 1  # b.g repeats a.shared.
  assert stats["files_scanned"] == 6
  assert stats["files_skipped"] == 2
  assert stats["skipped_by_reason"] == {"syntax_error": 1, "not_utf8": 1}
  assert stats["characters"] == sum(len(r["text"]) for r in records)
  assert stats["words"] == sum(len(r["text"].split()) for r in records)
  assert list(offline.read_documents(path)) == [r["text"] for r in records]
  assert not [p for p in path.parent.iterdir() if p.name != "corpus.jsonl"]


def test_build_is_identical_for_any_number_of_workers(package, tmp_path):
  # Several chunks per worker; the first files are slow to clean, so the
  # workers finish out of order.
  for i in range(40):
    functions = 300 if i < 3 else 0
    (package / f"m{i:02d}.py").write_text(
        f'"""Module {i}. {PROSE}"""\n' + "".join(
            f'def f{j}():\n    """Function {i}.{j}. {PROSE}"""\n'
            for j in range(functions)))
  files = offline.collect_source_files({"pkg": package})
  one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
  stats1 = offline.build_offline_corpus(one, files, num_workers=1,
                                        include_topics=False)
  stats2 = offline.build_offline_corpus(two, files, num_workers=2,
                                        include_topics=False)
  assert one.read_bytes() == two.read_bytes()
  assert stats1["documents"] == stats2["documents"] == 46 + 900
  assert stats2["num_workers"] == 2


def test_build_is_atomic(package, tmp_path, monkeypatch):
  files = offline.collect_source_files({"pkg": package})
  path = tmp_path / "corpus.jsonl"
  real = offline.file_documents
  calls = []

  def fail_on_fourth_file(file):
    calls.append(file)
    if len(calls) == 4:
      raise RuntimeError("simulated crash")
    return real(file)

  monkeypatch.setattr(offline, "file_documents", fail_on_fourth_file)
  with pytest.raises(RuntimeError, match="simulated crash"):
    offline.build_offline_corpus(path, files, num_workers=1,
                                 include_topics=False)
  assert len(calls) == 4  # It crashed midway, after writing documents.
  # No partial file, no temp file.
  assert list(tmp_path.iterdir()) == [package]

  # A failed rebuild leaves a good file as it was.
  monkeypatch.setattr(offline, "file_documents", real)
  offline.build_offline_corpus(path, files, num_workers=1,
                               include_topics=False)
  good = path.read_bytes()
  calls.clear()
  monkeypatch.setattr(offline, "file_documents", fail_on_fourth_file)
  with pytest.raises(RuntimeError):
    offline.build_offline_corpus(path, files, num_workers=1,
                                 include_topics=False)
  assert path.read_bytes() == good
  assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "pkg"]


def test_offline_corpus_is_cached_per_inputs(package, tmp_path, monkeypatch):
  builds = []
  real = offline.build_offline_corpus

  def counting_build(*args, **kwargs):
    builds.append(args[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(offline, "build_offline_corpus", counting_build)
  cache = tmp_path / "cache"
  kwargs = dict(roots={"pkg": package}, include_topics=False, num_workers=1)
  first = offline.offline_corpus(cache, **kwargs)
  mtime = first.stat().st_mtime_ns
  assert offline.offline_corpus(cache, **kwargs) == first
  assert len(builds) == 1 and first.stat().st_mtime_ns == mtime
  stats = json.loads(offline.stats_path(first).read_text())
  assert stats["documents"] == len(list(offline.read_documents(first))) == 6
  assert offline.stats_path(first).name == first.stem + ".stats.json"

  # Different inputs: a new cache file; the old one stays.
  (package / "c.py").write_text(f'"""Changed. {PROSE}"""\n')
  second = offline.offline_corpus(cache, **kwargs)
  assert second != first and first.exists() and len(builds) == 2


def test_fingerprint_depends_on_inputs():
  files = [offline.SourceFile("/x/a.py", "pkg/a.py", 10)]
  key = offline.corpus_fingerprint(files)
  assert offline.corpus_fingerprint(list(files)) == key
  assert offline.corpus_fingerprint(
      [offline.SourceFile("/y/a.py", "pkg/a.py", 10)]) == key
  assert offline.corpus_fingerprint(
      [offline.SourceFile("/x/a.py", "pkg/a.py", 11)]) != key
  assert offline.corpus_fingerprint(
      [offline.SourceFile("/x/b.py", "pkg/b.py", 10)]) != key
  assert offline.corpus_fingerprint(files, include_topics=False) != key


def test_pydoc_topics_are_included(tmp_path):
  path = tmp_path / "topics.jsonl"
  stats = offline.build_offline_corpus(path, files=[], num_workers=1)
  records = _records(path)
  assert len(records) > 50
  # Some topics repeat others.
  assert stats["topics"] == len(records) + stats["duplicates_dropped"]
  sources = [r["source"] for r in records]
  assert sources == sorted(sources)
  assert all(s.startswith("pydoc_data:") for s in sources)
  assert_topic = next(r["text"] for r in records
                      if r["source"] == "pydoc_data:assert")
  assert "debugging assertions" in assert_topic
  # Grammar, headings.
  assert "::=" not in assert_topic and "*****" not in assert_topic


def test_real_stdlib_files(tmp_path):
  stdlib = sysconfig.get_paths()["stdlib"]
  names = ["antigravity.py", "textwrap.py", "json/__init__.py", "bisect.py"]
  files = [f for f in offline.collect_source_files({"stdlib": stdlib})
           if f.source.removeprefix("stdlib/") in names]
  assert len(files) == len(names)
  sys.modules.pop("antigravity", None)
  path = tmp_path / "stdlib.jsonl"
  stats = offline.build_offline_corpus(path, files, num_workers=1,
                                       include_topics=False)
  assert "antigravity" not in sys.modules  # Parsed, never imported.
  texts = list(offline.read_documents(path))
  assert stats["documents"] == len(texts) >= 5
  assert stats["files_skipped"] == 0
  for text in texts:
    assert ">>>" not in text and "\n\n\n" not in text
    assert all(p and "\n" not in p
               for p in text.split(prose.PARAGRAPH_SEPARATOR))


def test_offline_corpus_removes_what_a_killed_build_left(package, tmp_path):
  dead = subprocess.Popen(["true"])
  dead.wait()
  cache = tmp_path / "cache"
  cache.mkdir()
  left = cache / f".offline-v2-0123.jsonl.tmp-{scratch._host()}-{dead.pid}-ab"
  left.write_text('{"text": "half a corpus"}\n{"te')
  path = offline.offline_corpus(cache, roots={"pkg": package},
                                include_topics=False, num_workers=1)
  assert sorted(p.name for p in cache.iterdir()) == sorted(
      [path.name, offline.stats_path(path).name])
