"""Sentence-pair packing: [CLS] A [SEP] B [SEP] with segment ids."""
import numpy as np
import pytest

from mlm_jax import tokenizer as tok
from mlm_jax.data import pairs


def test_split_sentences():
  assert pairs.split_sentences("One two. Three? Four!\nFive six") == [
      "One two.", "Three?", "Four!", "Five six"]
  assert pairs.split_sentences("  \n ") == []


def sentences(rng, n, lo=3, hi=12):
  return [rng.integers(10, 100, rng.integers(lo, hi)).astype(np.int32)
          for _ in range(n)]


def check_structure(out, seq_len):
  for row, seg in zip(out["tokens"], out["segment_ids"]):
    real = row[row != tok.PAD_ID]
    assert real[0] == tok.CLS_ID and real[-1] == tok.SEP_ID
    seps = np.nonzero(real == tok.SEP_ID)[0]
    assert len(seps) == 2 and 1 < seps[0] < len(real) - 2  # A, B non-empty
    assert np.all(seg[:seps[0] + 1] == 0)
    assert np.all(seg[seps[0] + 1:len(real)] == 1)
    assert np.all(seg[len(real):] == 0)
    assert np.all(row[len(real):] == tok.PAD_ID)  # padding only at the end
  assert out["tokens"].shape[1] == seq_len


def test_pairs_keep_order_and_content_within_budget():
  rng = np.random.default_rng(0)
  docs = [sentences(rng, 12), sentences(rng, 3), sentences(rng, 1, 6, 7)]
  out = pairs.pack_pairs(docs, 32, seed=0)
  check_structure(out, 32)
  # A and B are each a contiguous run of the document stream (trimming
  # only cuts their ends), and B comes after A.
  stream = np.concatenate([np.concatenate(d) for d in docs])

  def where(piece):
    hits = [s for s in np.nonzero(stream == piece[0])[0]
            if np.array_equal(stream[s:s + len(piece)], piece)]
    assert hits, piece
    return hits

  for row in out["tokens"]:
    seps = np.nonzero(row == tok.SEP_ID)[0]
    a, b = row[1:seps[0]], row[seps[0] + 1:seps[1]]
    assert max(where(b)) > min(where(a))
  np.testing.assert_array_equal(out["document_ids"], out["tokens"] != 0)


def test_long_sentences_are_trimmed_to_fit():
  rng = np.random.default_rng(1)
  docs = [sentences(rng, 4, 40, 60)]
  out = pairs.pack_pairs(docs, 32, seed=0)
  check_structure(out, 32)
  assert np.all(out["tokens"][:, -1] == tok.SEP_ID)  # filled to the brim


def test_deterministic_by_seed():
  rng = np.random.default_rng(2)
  docs = [sentences(rng, 20)]
  a = pairs.pack_pairs(docs, 64, seed=3)
  b = pairs.pack_pairs(docs, 64, seed=3)
  c = pairs.pack_pairs(docs, 64, seed=4)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.array_equal(a["segment_ids"], c["segment_ids"])


def test_tiny_documents_are_skipped_and_short_seq_rejected():
  out = pairs.pack_pairs([[np.array([7], np.int32)], []], 16, seed=0)
  assert out["tokens"].shape == (0, 16)
  with pytest.raises(ValueError, match="too short"):
    pairs.pack_pairs([], 4, seed=0)
