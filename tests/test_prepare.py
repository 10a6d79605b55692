"""Preparation: source -> tokenizer -> packed ArrayRecord shards + manifest."""
import gzip
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs_loader import load_config
from mlm_jax import config as config_lib
from mlm_jax import tokenizer as tok
from mlm_jax.data import chunks
from mlm_jax.data import prepare
from mlm_jax.data import scratch

PROSE = ("The model reads every sentence of the corpus once per epoch, and "
         "the masks change each time it does. ")


def small_config(cache_dir, **data):
  cfg = load_config("size=tiny,runlocal")
  cfg.vocab_size = 400
  cfg.tokenizer.model_type = "bpe"
  cfg.data.cache_dir = str(cache_dir)
  cfg.data.max_documents = 300
  cfg.data.seq_len = 64
  cfg.data.eval_fraction = 0.05
  cfg.data.workers = 1
  cfg.data.update(data)
  return cfg


def all_examples(data, split):
  ds = data.source(split)
  return [ds[i] for i in range(len(ds))]


def test_offline_source_through_tfds_to_shards(cache_dir):
  data = prepare.prepare(small_config(cache_dir))
  m = data.manifest
  assert m["spec"]["source"]["name"].startswith("mlm_jax_offline/")
  assert m["documents"] == 300
  assert data.tokenizer.vocab_size == 400 == m["vocab_size"]
  assert (data.directory / "tokenizer.model").exists()
  train, held = all_examples(data, "train"), all_examples(data, "eval")
  assert (len(train), len(held)) == (m["examples"]["train"],
                                     m["examples"]["eval"])
  assert len(held) == max(1, round(0.05 * (len(train) + len(held))))
  tokens = np.stack([e["tokens"] for e in train + held])
  assert tokens.shape[1] == 64 and np.all(tokens[:, 0] == tok.CLS_ID)
  assert int(np.sum(tokens != tok.PAD_ID)) == m["tokens"]
  assert m["packing_efficiency"] > 0.99
  text = data.tokenizer.decode(train[0]["tokens"][1:-1])
  assert sum(c.isalpha() for c in text) > 0.6 * len(text)


def test_reuse_mismatch_and_non_dataset_dirs(cache_dir, tmp_path):
  target = tmp_path / "prepared"
  a = prepare.prepare(small_config(cache_dir, dir=str(target)))
  stamp = (target / "manifest.json").stat().st_mtime_ns
  b = prepare.prepare(small_config(cache_dir, dir=str(target)))
  assert b.directory == target
  assert (target / "manifest.json").stat().st_mtime_ns == stamp  # reused
  assert a.manifest == b.manifest
  with pytest.raises(config_lib.ConfigError,
                     match=r"holds data prepared with another config "
                     r"\(seq_len: 64 -> 32\)"):
    prepare.prepare(small_config(cache_dir, dir=str(target), seq_len=32))
  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "notes.txt").write_text("mine")
  with pytest.raises(config_lib.ConfigError, match="not empty and has no "
                     "manifest.json"):
    prepare.prepare(small_config(cache_dir, dir=str(junk)))
  assert (junk / "notes.txt").read_text() == "mine"  # untouched


def test_shards_identical_for_any_number_of_workers(cache_dir, tmp_path,
                                                    monkeypatch):
  monkeypatch.setattr(prepare, "CHUNK_BYTES", 20_000)  # several chunks
  one = prepare.prepare(small_config(cache_dir, dir=str(tmp_path / "w1")))
  two = prepare.prepare(small_config(cache_dir, dir=str(tmp_path / "w2"),
                                     workers=2))
  assert len(one.manifest["shards"]["train"]) > 2
  for split in ("train", "eval"):
    assert one.manifest["shards"][split] == two.manifest["shards"][split]
    for a, b in zip(one.shards(split), two.shards(split)):
      assert a.read_bytes() == b.read_bytes()


def test_local_files_with_bad_input_are_counted_not_fatal(cache_dir,
                                                          tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  lines = [json.dumps({"text": PROSE * (1 + i % 5)}) for i in range(60)]
  lines[3] = "{not json"
  lines[7] = json.dumps({"body": "wrong field"})
  (corpus / "a.jsonl").write_text("\n".join(lines) + "\n")
  with gzip.open(corpus / "b.jsonl.gz", "wt") as f:
    f.write("\n".join(lines[:20]) + "\n")
  (corpus / "c.jsonl").write_bytes(
      json.dumps({"text": PROSE}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
  cfg = small_config(cache_dir, source="files", files=str(corpus),
                     files_format="jsonl", max_documents=0)
  # This tiny corpus is too repetitive to train 400 pieces on: reuse one.
  cfg.tokenizer.path = str(prepare.prepare(small_config(
      cache_dir)).tokenizer.path)
  data = prepare.prepare(cfg)
  stats = data.manifest["read_stats"]
  assert stats["files"] == 3
  assert stats["bad_json_lines"] == 2 and stats["missing_field_lines"] == 2
  assert stats["decode_errors"] == 1
  assert data.manifest["documents"] == 58 + 18 + 2


def test_missing_files_and_empty_glob_are_clear(cache_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    prepare.prepare(small_config(cache_dir, source="files",
                                 files=str(tmp_path / "nope.txt")))
  with pytest.raises(FileNotFoundError, match=r"\*\.zzz"):
    prepare.prepare(small_config(cache_dir, source="files",
                                 files=str(tmp_path / "*.zzz")))
  with pytest.raises(config_lib.ConfigError, match="config.data.files"):
    prepare.prepare(small_config(cache_dir, source="files"))


def test_tfds_source_under_mock_data(cache_dir, tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    data = prepare.prepare(small_config(
        cache_dir, source="tfds", tfds_name="lm1b", max_documents=0,
        dir=str(tmp_path / "lm1b")))
  assert data.manifest["documents"] > 0
  assert data.manifest["spec"]["source"]["name"] == "lm1b"
  assert len(data.source("train")) == data.manifest["examples"]["train"]


def test_sentence_pairs(cache_dir):
  data = prepare.prepare(small_config(cache_dir, packing="pairs"))
  train = all_examples(data, "train")
  assert train
  for ex in train[:50]:
    seps = np.nonzero(ex["tokens"] == tok.SEP_ID)[0]
    assert len(seps) == 2
    assert np.all(ex["segment_ids"][seps[0] + 1:seps[1] + 1] == 1)
    assert np.all(ex["segment_ids"][:seps[0] + 1] == 0)


def test_existing_tokenizer_file_is_used(cache_dir, tmp_path):
  own = prepare.prepare(small_config(cache_dir))
  model = tmp_path / "mine.model"
  model.write_bytes(own.tokenizer.path.read_bytes())
  cfg = small_config(cache_dir)
  cfg.tokenizer.path = str(model)
  given = prepare.prepare(cfg)
  assert given.tokenizer.fingerprint == own.tokenizer.fingerprint
  assert ([s.read_bytes() for s in given.shards("train")]
          == [s.read_bytes() for s in own.shards("train")])
  cfg.tokenizer.path = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="config.tokenizer.path: no file"):
    prepare.prepare(cfg)


def test_failed_build_leaves_nothing_that_looks_complete(cache_dir, tmp_path,
                                                         monkeypatch):
  target = tmp_path / "t"
  def boom(job):
    raise RuntimeError("disk full")
  monkeypatch.setattr(chunks, "process", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    prepare.prepare(small_config(cache_dir, dir=str(target)))
  assert not target.exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
  monkeypatch.undo()
  assert prepare.prepare(small_config(cache_dir, dir=str(target))).manifest


def test_unknown_source_is_a_config_error(cache_dir):
  with pytest.raises(config_lib.ConfigError, match="config.data.source"):
    prepare.prepare(small_config(cache_dir, source="c4"))


def test_a_build_finished_meanwhile_by_another_process_is_used(
    cache_dir, tmp_path, monkeypatch):
  # Two runs sharing a cache prepare the same dataset; the other one
  # renames its copy into place while this one builds.
  target = tmp_path / "t"
  winner = prepare.prepare(small_config(cache_dir, dir=str(tmp_path / "w")))
  real_build = prepare._build

  def build_and_lose_the_race(config, s, tmp):
    built = real_build(config, s, tmp)
    shutil.copytree(tmp_path / "w", target)
    return built
  monkeypatch.setattr(prepare, "_build", build_and_lose_the_race)
  data = prepare.prepare(small_config(cache_dir, dir=str(target)))
  assert data.manifest["examples"] == winner.manifest["examples"]
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# A corpus that cannot be used: one ConfigError line, nothing in the cache.


def _fails_in_one_line(cfg, *expected):
  """prepare(cfg) raises one ConfigError line holding `expected`, and leaves
  no file (and no temporary) in the data cache."""
  cache = pathlib.Path(cfg.data.cache_dir)
  with pytest.raises(config_lib.ConfigError) as raised:
    prepare.prepare(cfg)
  message = str(raised.value)
  assert "\n" not in message
  for part in expected:
    assert part in message, (part, message)
  assert [p for p in cache.rglob("*") if not p.is_dir() or ".tmp" in p.name
          ] == []
  return message


def test_corpus_without_text_is_one_config_error(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "zero.txt").write_bytes(b"")
  (corpus / "blank.txt").write_text(" \n\t\n\n")
  cfg = small_config(tmp_path / "cache", source="files", max_documents=0)
  for name in ("zero.txt", "blank.txt"):
    cfg.data.files = str(corpus / name)
    _fails_in_one_line(cfg, f"config.data.files: {corpus / name} holds no "
                       "text: the file is empty or whitespace only")
  cfg.data.files = str(corpus / "*.txt")
  _fails_in_one_line(cfg, f"config.data.files: {corpus / '*.txt'} holds no "
                     f"text: each of its 2 files ({corpus / 'blank.txt'}, "
                     f"{corpus / 'zero.txt'}) is empty or whitespace only")
  # With a tokenizer given, the read that finds no text is the packing's.
  cfg.data.files = str(corpus / "zero.txt")
  cfg.tokenizer.path = str(_tokenizer(tmp_path))
  _fails_in_one_line(cfg, "zero.txt holds no text")


def _tokenizer(tmp_path):
  texts = [f"{PROSE} {i} {PROSE[::-1]}" for i in range(200)]
  return tok.train_sentencepiece(texts, tmp_path / "given" / "t.model",
                                 vocab_size=60, model_type="bpe")


def test_vocabulary_larger_than_the_corpus_supports_is_one_config_error(
    tmp_path):
  (tmp_path / "small.txt").write_text("A tiny corpus.\n\nOf two documents.\n")
  cfg = small_config(tmp_path / "cache", source="files", max_documents=0,
                     files=str(tmp_path / "small.txt"))
  message = _fails_in_one_line(
      cfg, "config.vocab_size: 400 is more than this corpus supports (at "
      "most ", " pieces with tokenizer.model_type='bpe'); lower it, or give "
      "more text")
  at_most = int(re.search(r"at most (\d+)", message).group(1))
  assert 21 < at_most < 400
  cfg.vocab_size = at_most  # The fix it names works.
  assert prepare.prepare(cfg).tokenizer.vocab_size == at_most


def test_binary_corpus_file_is_one_config_error(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text(PROSE * 50)
  with open(os.path.realpath(sys.executable), "rb") as f:
    (corpus / "python").write_bytes(f.read(1 << 16))  # a compiled program
  cfg = small_config(tmp_path / "cache", source="files", max_documents=0,
                     files=str(corpus))
  _fails_in_one_line(cfg, f"config.data.files: {corpus / 'python'} is not "
                     "text: its first 8192 bytes hold NUL bytes",
                     "move it out of the corpus")


def _leftover(directory, name, pid, host=None):
  """A temporary as scratch names it, with a file in it."""
  path = directory / (f".{name}.tmp-{host or scratch._host()}-{pid}-"
                      "abcd1234")
  path.mkdir(parents=True)
  (path / "train-000000.array_record.tmp").write_bytes(b"partial")
  return path


def test_leftovers_of_killed_builds_are_removed_live_ones_kept(tmp_path):
  dead = subprocess.Popen(["true"])
  dead.wait()
  prepared = tmp_path / "cache" / "prepared"
  killed = _leftover(prepared, "files-L64-0123456789abcdef", dead.pid)
  live = _leftover(prepared, "files-L64-fedcba9876543210", os.getppid())
  remote = _leftover(prepared, "files-L64-0123456789abcdef", dead.pid,
                     host="another-host")
  (tmp_path / "a.txt").write_text(PROSE * 20)
  cfg = small_config(tmp_path / "cache", source="files", max_documents=0,
                     files=str(tmp_path / "a.txt"))
  cfg.tokenizer.path = str(_tokenizer(tmp_path))
  data = prepare.prepare(cfg)
  assert sorted(prepared.iterdir()) == sorted([data.directory, live, remote])
  assert not killed.exists()
