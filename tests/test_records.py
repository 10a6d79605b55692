"""The ArrayRecord example format: round trip, dtypes, atomic shards."""
import numpy as np
import pytest

from mlm_jax.data import records


def examples(n=5, seq_len=16, vocab=1000, seed=0):
  rng = np.random.default_rng(seed)
  return {"tokens": rng.integers(0, vocab, (n, seq_len)).astype(np.int32),
          "segment_ids": rng.integers(0, 2, (n, seq_len)).astype(np.int32),
          "document_ids": rng.integers(0, 9, (n, seq_len)).astype(np.int32)}


@pytest.mark.parametrize("vocab", [1000, 2 ** 16, 2 ** 16 + 1, 250_000])
def test_round_trip_across_shards(tmp_path, vocab):
  a, b = examples(5, vocab=vocab, seed=1), examples(3, vocab=vocab, seed=2)
  paths = [tmp_path / "s0.array_record", tmp_path / "s1.array_record"]
  assert records.write_shard(paths[0], a, vocab) == 5
  assert records.write_shard(paths[1], b, vocab) == 3
  ds = records.source(paths, 16, vocab)
  assert len(ds) == 8
  for i in range(8):
    src, j = (a, i) if i < 5 else (b, i - 5)
    ex = ds[i]
    for k in records.FIELDS:
      assert ex[k].dtype == np.int32
      np.testing.assert_array_equal(ex[k], src[k][j])
    np.testing.assert_array_equal(ex["positions"], np.arange(16))


def test_small_vocab_stores_two_bytes_per_token():
  ex = {k: v[0] for k, v in examples().items()}
  assert len(records.encode(ex, 1000)) == 16 * (2 + 1 + 2)
  assert len(records.encode(ex, 100_000)) == 16 * (4 + 1 + 2)


def test_wrong_layout_is_a_clear_error(tmp_path):
  path = tmp_path / "s.array_record"
  records.write_shard(path, examples(), 1000)
  with pytest.raises(ValueError, match="does not hold an example of seq_len"):
    records.source([path], 32, 1000)[0]


def test_shard_is_renamed_only_when_complete(tmp_path, monkeypatch):
  path = tmp_path / "s.array_record"
  bad = examples()
  bad["segment_ids"] = bad["segment_ids"][:2]  # fails midway
  with pytest.raises(IndexError):
    records.write_shard(path, bad, 1000)
  assert not path.exists()
