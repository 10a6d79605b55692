"""Preparation: offline corpus -> tokenizer -> packed, split, cached arrays."""
import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import tokenizer as tok
from mlm_jax.data import packing
from mlm_jax.data import prepare


def small_config(cache_dir, **data):
  cfg = load_config("size=tiny,runlocal")
  cfg.vocab_size = 400
  cfg.tokenizer.model_type = "bpe"
  cfg.data.cache_dir = str(cache_dir)
  cfg.data.max_documents = 300
  cfg.data.seq_len = 64
  cfg.data.eval_fraction = 0.05
  cfg.data.update(data)
  return cfg


def test_prepared_arrays_manifest_and_tokenizer(cache_dir):
  data = prepare.prepare(small_config(cache_dir))
  m = data.manifest
  assert m["documents"] == 300
  assert data.tokenizer.vocab_size == 400 == m["vocab_size"]
  n_train, n_eval = m["examples"]["train"], m["examples"]["eval"]
  assert n_eval == max(1, round(0.05 * (n_train + n_eval)))
  for split, n in ((data.train, n_train), (data.eval, n_eval)):
    assert set(split) == set(prepare.FIELDS)
    for v in split.values():
      assert v.shape == (n, 64) and v.dtype == np.int32
  tokens = np.concatenate([data.train["tokens"], data.eval["tokens"]])
  assert np.all(tokens[:, 0] == tok.CLS_ID)
  assert int(np.sum(tokens != tok.PAD_ID)) == m["tokens"]
  assert m["packing_efficiency"] > 0.99
  # Ordinary ids decode to the corpus's English text.
  text = data.tokenizer.decode(data.train["tokens"][0][1:-1])
  assert sum(c.isalpha() for c in text) > 0.6 * len(text)


def test_second_call_reuses_and_other_settings_rebuild(cache_dir):
  a = prepare.prepare(small_config(cache_dir))
  stamp = (a.directory / "manifest.json").stat().st_mtime_ns
  b = prepare.prepare(small_config(cache_dir))
  assert b.directory == a.directory
  assert (b.directory / "manifest.json").stat().st_mtime_ns == stamp
  c = prepare.prepare(small_config(cache_dir, seq_len=32))
  assert c.directory != a.directory
  assert c.train["tokens"].shape[1] == 32


def test_existing_tokenizer_file_is_used(cache_dir, tmp_path):
  own = prepare.prepare(small_config(cache_dir))
  model = tmp_path / "mine.model"
  model.write_bytes(own.tokenizer.path.read_bytes())
  cfg = small_config(cache_dir)
  cfg.tokenizer.path = str(model)
  given = prepare.prepare(cfg)
  assert given.tokenizer.fingerprint == own.tokenizer.fingerprint
  np.testing.assert_array_equal(given.train["tokens"], own.train["tokens"])


def test_missing_tokenizer_file_is_a_clear_error(cache_dir, tmp_path):
  cfg = small_config(cache_dir)
  cfg.tokenizer.path = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="config.tokenizer.path: no file"):
    prepare.prepare(cfg)


def test_failed_build_leaves_nothing_that_looks_complete(cache_dir,
                                                         monkeypatch):
  cfg = small_config(cache_dir, seq_len=48)
  def boom(*a, **k):
    raise RuntimeError("disk full")
  monkeypatch.setattr(packing, "pack_documents", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    prepare.prepare(cfg)
  root = cache_dir / "prepared"
  assert not [p for p in root.iterdir() if "-L48-" in p.name]
  assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
  monkeypatch.undo()
  assert prepare.prepare(cfg).train["tokens"].shape[1] == 48


def test_unknown_corpus(cache_dir):
  cfg = small_config(cache_dir, corpus="c4")
  with pytest.raises(ValueError, match="config.data.corpus: unknown corpus"):
    prepare.prepare(cfg)
