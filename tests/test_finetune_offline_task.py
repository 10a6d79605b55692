"""Tests of the offline downstream task (mlm_jax/finetune/offline_task.py).

Every build reads a small synthetic corpus written to tmp_path, never the
real offline corpus (which takes 20 s to build), so the file runs in seconds.
"""
import collections
import json
import random
import threading

import pytest

from mlm_jax.data import offline
from mlm_jax.finetune import offline_task as task

WORDS = ("array axis figure plot socket parse token value matrix stream "
         "buffer module handle option widget kernel").split()


def _text(source, number):
  rng = random.Random(f"{source}/{number}")
  first = f"Doc {number} of {source}: " + " ".join(rng.choices(WORDS, k=12))
  return first + "\n\n" + " ".join(rng.choices(WORDS, k=20)) + "."


def _documents():
  """(source, text): packages of several sizes, vendored code, duplicates."""
  sources = ([f"site-packages/alpha/mod{i}.py" for i in range(30)] * 4
             + [f"site-packages/beta/sub/mod{i}.py" for i in range(20)] * 4
             + [f"stdlib/lib{i}.py" for i in range(15)] * 4
             + [f"pydoc_data:topic{i}" for i in range(5)]
             + [f"site-packages/delta/m{i}.py" for i in range(10)] * 2
             # The most documents, but one file: in one split only.
             + ["site-packages/solo.py"] * 150
             # Copies of other projects: dropped.
             + [f"site-packages/pip/_vendor/rich/r{i}.py" for i in range(30)]
             * 5)
  counts = collections.Counter()
  documents = []
  for source in sources:
    documents.append((source, _text(source, counts[source])))
    counts[source] += 1
  shared = "A docstring copied word for word. " * 3
  documents += [("site-packages/alpha/mod0.py", shared),
                ("site-packages/alpha/mod1.py", shared),  # Kept once.
                ("site-packages/beta/sub/mod0.py", shared + "Twice."),
                ("stdlib/lib0.py", shared + "Twice.")]  # Dropped: 2 labels.
  return documents


def _write(path, documents):
  with open(path, "w", encoding="utf-8") as f:
    for source, text in documents:
      f.write(json.dumps({"text": text, "source": source}) + "\n")
  return path


@pytest.fixture
def corpus(tmp_path):
  return _write(tmp_path / "corpus.jsonl", _documents())


def _build(cache, corpus, **kwargs):
  kwargs = {"num_classes": 3, "max_chars": 120, "min_per_class": 2, **kwargs}
  return task.offline_task(cache, corpus_path=corpus, **kwargs)


def _read_all(paths):
  return {split: task.read_examples(path) for split, path in paths.items()}


def test_sources_give_labels_and_files():
  assert task.package_of("site-packages/PIL/Image.py") == "PIL"
  assert task.package_of("site-packages/six.py") == "six"
  assert task.package_of("platlib/numpy/core/a.py") == "numpy"
  assert task.package_of("stdlib/email/message.py") == "stdlib"
  assert task.package_of("pydoc_data:assert") == "stdlib"
  assert task.file_of("pydoc_data:assert") == "pydoc_data"
  assert task.file_of("stdlib/os.py") == "stdlib/os.py"
  assert task.is_vendored("site-packages/pip/_vendor/rich/text.py")
  assert task.is_vendored("site-packages/jax/_src/third_party/scipy/a.py")
  assert not task.is_vendored("site-packages/vendor.py")
  assert not task.is_vendored("pydoc_data:assert")


def test_leading_text_keeps_whole_paragraphs_then_cuts_at_a_word():
  text = "One two three.\n\nFour five six.\n\nSeven."
  assert task.leading_text(text, None) == text
  assert task.leading_text(text, len(text)) == text
  assert task.leading_text(text, 30) == "One two three.\n\nFour five six."
  assert task.leading_text(text, 20) == "One two three."
  assert task.leading_text(text, 9) == "One two"
  assert task.leading_text("abcdefgh and", 4) == "abcd"


def test_split_files_gives_each_split_a_tenth_of_the_documents():
  rng = random.Random(0)
  sizes = {f"f{i}.py": int(rng.paretovariate(1.2)) for i in range(300)}
  splits = task.split_files(sizes)
  assert splits == task.split_files(dict(reversed(sizes.items())))
  total, largest = sum(sizes.values()), max(sizes.values())
  held = 0
  for split, fraction in (("test", 0.1), ("dev", 0.2)):
    held += sum(n for f, n in sizes.items() if splits[f] == split)
    # Files are added until the fraction is reached: over by under one file.
    assert fraction * total <= held < fraction * total + largest, split


def test_labels_come_from_the_source_and_classes_are_balanced(
    tmp_path, corpus):
  paths = _build(tmp_path / "cache", corpus)
  assert set(paths) == {"train", "dev", "test"}
  assert task.class_names(paths) == ["alpha", "beta", "stdlib"]
  label_of = {task.leading_text(text, 120): task.package_of(source)
              for source, text in _documents()}
  stats = json.loads(paths["train"].with_name(task.STATS_FILE).read_text())
  for split, examples in _read_all(paths).items():
    assert examples, split
    for text, label in examples:
      assert len(text) <= 120
      assert label == label_of[text]
    counts = collections.Counter(label for _, label in examples)
    assert sorted(counts) == ["alpha", "beta", "stdlib"]
    assert len(set(counts.values())) == 1, counts  # Majority = 1/3.
    assert stats["examples"][split]["total"] == len(examples)
  assert stats["vendored_dropped"] == 150
  assert stats["duplicates_dropped"] == 1
  assert stats["ambiguous_dropped"] == 2
  texts = [text for examples in _read_all(paths).values()
           for text, _ in examples]
  assert len(texts) == len(set(texts))


def test_no_source_file_is_split_across_splits(tmp_path, corpus):
  paths = _build(tmp_path / "cache", corpus)
  file_of = {task.leading_text(text, 120): task.file_of(source)
             for source, text in _documents()}
  files = {split: {file_of[text] for text, _ in examples}
           for split, examples in _read_all(paths).items()}
  assert not files["train"] & files["dev"]
  assert not files["train"] & files["test"]
  assert not files["dev"] & files["test"]


def test_the_build_is_deterministic_and_independent_of_corpus_order(
    tmp_path, corpus):
  first = _build(tmp_path / "a", corpus)
  again = _build(tmp_path / "b", corpus)
  documents = _documents()
  random.Random(1).shuffle(documents)
  shuffled = _build(tmp_path / "c", _write(tmp_path / "shuffled.jsonl",
                                           documents))
  for split in task.SPLITS:
    assert first[split].read_bytes() == again[split].read_bytes()
    assert first[split].read_bytes() == shuffled[split].read_bytes()


def test_an_existing_build_is_reused_and_settings_get_their_own(
    tmp_path, corpus, monkeypatch):
  cache = tmp_path / "cache"
  paths = _build(cache, corpus)
  built = {split: path.read_bytes() for split, path in paths.items()}

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt a complete task")

  with monkeypatch.context() as m:
    m.setattr(task, "build_offline_task", no_build)
    assert _build(cache, corpus) == paths
  other = _build(cache, corpus, num_classes=2)
  assert other["train"].parent != paths["train"].parent
  assert task.class_names(other) == ["alpha", "beta"]
  # An interrupted build (no stats yet) is built again, the same.
  paths["train"].with_name(task.STATS_FILE).unlink()
  paths["dev"].unlink()
  assert _build(cache, corpus) == paths
  assert {s: p.read_bytes() for s, p in paths.items()} == built
  # Another corpus under the same name is another task.
  _write(corpus, _documents()[:-4])
  assert _build(cache, corpus)["train"].parent != paths["train"].parent


def test_concurrent_builders_leave_complete_files(tmp_path, corpus):
  cache, results = tmp_path / "cache", []
  barrier = threading.Barrier(4)

  def build():
    barrier.wait()
    results.append(_build(cache, corpus))

  threads = [threading.Thread(target=build) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(results) == 4 and all(r == results[0] for r in results)
  reference = _build(tmp_path / "alone", corpus)
  for split in task.SPLITS:
    assert results[0][split].read_bytes() == reference[split].read_bytes()
  assert not list(results[0]["train"].parent.glob(".*.tmp"))


def test_too_few_documents_is_one_clear_line(tmp_path, corpus):
  cache = tmp_path / "cache"
  with pytest.raises(task.OfflineTaskError) as error:
    _build(cache, corpus, num_classes=5)
  message = str(error.value)
  assert isinstance(error.value, ValueError) and "\n" not in message
  assert "only 4 of the 5 packages" in message
  assert "num_classes=5" in message and "lower num_classes" in message
  tiny = _write(tmp_path / "tiny.jsonl", _documents()[:3])
  with pytest.raises(task.OfflineTaskError, match="only 0 of the 1 packages"):
    _build(cache, tiny)
  assert not (cache / "tasks").exists()  # Nothing written.


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes=1"),
    ({"num_classes": True}, "num_classes=True"),
    ({"max_chars": 0}, "max_chars=0"),
    ({"min_per_class": 0}, "min_per_class=0"),
])
def test_bad_settings_are_one_clear_line(tmp_path, corpus, kwargs, match):
  with pytest.raises(task.OfflineTaskError, match=match):
    _build(tmp_path, corpus, **kwargs)


def test_bad_corpus_files_are_one_clear_line(tmp_path):
  with pytest.raises(task.OfflineTaskError, match="no corpus file"):
    _build(tmp_path, tmp_path / "missing.jsonl")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "a", "source": "stdlib/a.py"}\n{"text": "b"}\n')
  with pytest.raises(task.OfflineTaskError, match="line 2 of .*'source'"):
    _build(tmp_path, bad)


def test_without_a_corpus_path_this_environments_corpus_is_used(
    tmp_path, corpus, monkeypatch):
  asked = []

  def offline_corpus(cache_dir):
    asked.append(cache_dir)
    return corpus

  monkeypatch.setattr(offline, "offline_corpus", offline_corpus)
  paths = task.offline_task(tmp_path / "cache", num_classes=3,
                            min_per_class=2)
  assert asked == [tmp_path / "cache" / "corpora"]
  assert paths["train"].is_relative_to(tmp_path / "cache" / "tasks")
  assert task.read_examples(paths["train"])
