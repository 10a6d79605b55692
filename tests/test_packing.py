"""Tests for mlm_jax.data.packing: packed layout, document ids, splits."""
import numpy as np
import pytest

from mlm_jax import tokenizer as tok
from mlm_jax.data import packing

CLS, SEP, PAD = tok.CLS_ID, tok.SEP_ID, tok.PAD_ID
KEYS = ("tokens", "segment_ids", "positions", "document_ids")


def make_docs(lengths, start=0):
  """Documents of ordinary ids (>= 5) that are unique across documents."""
  docs, nxt = [], start
  for n in lengths:
    docs.append(tok.NUM_SPECIAL_TOKENS + nxt + np.arange(n))
    nxt += n
  return docs


def check_packed(docs, seq_len):
  """Checks every documented property of pack_documents(docs, seq_len)."""
  out = packing.pack_documents(docs, seq_len)
  assert set(out) == set(KEYS)
  for k in KEYS:
    assert out[k].dtype == np.int32 and out[k].shape == out["tokens"].shape
  tokens = out["tokens"]
  num, width = tokens.shape
  assert width == seq_len
  real = tokens != PAD
  content = tokens >= tok.NUM_SPECIAL_TOKENS

  # Round trip: every document token exactly once, in order.
  nonempty = [d for d in docs if len(d)]
  expected = np.concatenate(nonempty) if nonempty else np.zeros(0)
  np.testing.assert_array_equal(tokens[content], expected)

  # Layout: [CLS] ... [SEP] then padding; padding only as a suffix.
  assert (tokens[:, 0] == CLS).all()
  assert (tokens[:, 1] != SEP).all()  # Never "[CLS] [SEP]".
  lengths = real.sum(1)
  np.testing.assert_array_equal(real, np.arange(seq_len) < lengths[:, None])
  assert (tokens[np.arange(num), lengths - 1] == SEP).all()
  assert not ((tokens[:, 1:] == SEP) & (tokens[:, :-1] == SEP)).any()
  # Only the last example is short by more than one position.
  assert (lengths[:-1] >= seq_len - 1).all()
  # And no example is wasted: the last one holds document text.
  if num:
    assert content[-1].any()

  np.testing.assert_array_equal(out["segment_ids"], 0)
  np.testing.assert_array_equal(out["positions"],
                                np.where(real, np.arange(seq_len), 0))

  # Document ids: per-example numbering of the true source documents.
  doc_ids = out["document_ids"]
  assert (doc_ids[~real] == 0).all() and (doc_ids[real] >= 1).all()
  assert (doc_ids[:, 0] == 1).all()
  source = np.zeros(tokens.shape, np.int64)
  source[content] = np.repeat(np.arange(len(nonempty)),
                              [len(d) for d in nonempty])
  for i in range(num):
    idx = np.flatnonzero(content[i])
    np.testing.assert_array_equal(doc_ids[i, idx],
                                  source[i, idx] - source[i, idx[0]] + 1)
    # Between two documents' tokens exactly one [SEP]; none within one.
    gap = np.diff(idx)
    change = np.diff(source[i, idx]) != 0
    assert (gap[~change] == 1).all() and (gap[change] == 2).all()
    assert (tokens[i, idx[:-1][change] + 1] == SEP).all()
    # A [SEP] belongs to the document it ends, [CLS] to the first one.
    seps = np.flatnonzero(tokens[i] == SEP)
    np.testing.assert_array_equal(doc_ids[i, seps], doc_ids[i, seps - 1])
  return out


def test_small_example_exactly():
  # seq_len 8: 6 slots between [CLS] and the closing [SEP].
  docs = [np.array(d) for d in
          ([10, 11, 12], [20, 21, 22, 23, 24, 25], [30] * 7, [], [40] * 5,
           [50, 51, 52, 53, 54, 55, 56])]
  out = check_packed(docs, 8)
  np.testing.assert_array_equal(out["tokens"], [
      [CLS, 10, 11, 12, SEP, 20, 21, SEP],
      [CLS, 22, 23, 24, 25, SEP, 30, SEP],
      # The 3rd document's last token fills the last slot: the closing [SEP]
      # ends it, the next example starts with the next document.
      [CLS, 30, 30, 30, 30, 30, 30, SEP],
      # The 5th document's [SEP] takes the last slot: it closes the example.
      [CLS, 40, 40, 40, 40, 40, SEP, PAD],
      [CLS, 50, 51, 52, 53, 54, 55, SEP],
      [CLS, 56, SEP, PAD, PAD, PAD, PAD, PAD],
  ])
  np.testing.assert_array_equal(out["document_ids"], [
      [1, 1, 1, 1, 1, 2, 2, 2],
      [1, 1, 1, 1, 1, 1, 2, 2],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 0, 0, 0, 0, 0],
  ])
  np.testing.assert_array_equal(out["positions"][3], [0, 1, 2, 3, 4, 5, 6, 0])
  np.testing.assert_array_equal(out["positions"][5], [0, 1, 2, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("seq_len", [8, 9, 16, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_documents(seq_len, seed):
  rng = np.random.default_rng(seed)
  width = seq_len - 2
  # Mix of edge lengths around the slot width, empties, and long documents.
  choices = [0, 1, 2, width - 2, width - 1, width, width + 1, 2 * width,
             5 * width + 3]
  lengths = list(rng.choice(choices, size=60)) + list(rng.integers(1, 40, 60))
  rng.shuffle(lengths)
  check_packed(make_docs(lengths), seq_len)


def test_long_document_spans_examples():
  width = 14
  out = check_packed(make_docs([5 * width + 3]), width + 2)
  assert out["tokens"].shape == (6, width + 2)
  np.testing.assert_array_equal(out["document_ids"][:5], 1)
  assert (out["tokens"][:5] != PAD).all()
  # Last example: [CLS] 3 tokens [SEP] then padding.
  np.testing.assert_array_equal(out["positions"][5, :5], np.arange(5))
  assert (out["tokens"][5, 4] == SEP) and (out["tokens"][5, 5:] == PAD).all()


def test_empty_input_and_empty_documents():
  out = packing.pack_documents([np.zeros(0, np.int32), []], 16)
  for k in KEYS:
    assert out[k].shape == (0, 16) and out[k].dtype == np.int32
  a = packing.pack_documents(make_docs([3, 0, 4]), 16)
  b = packing.pack_documents(make_docs([3, 4]), 16)
  for k in KEYS:
    np.testing.assert_array_equal(a[k], b[k])


def test_accepts_lists_and_int64():
  out = packing.pack_documents([[7, 8, 9], np.array([10], np.int64)], 8)
  np.testing.assert_array_equal(out["tokens"],
                                [[CLS, 7, 8, 9, SEP, 10, SEP, PAD]])


def test_errors():
  with pytest.raises(ValueError, match="seq_len=4 is too short"):
    packing.pack_documents(make_docs([3]), 4)
  with pytest.raises(ValueError, match="Document 1 must be a 1-D integer"):
    packing.pack_documents([np.arange(5, 8), np.ones((2, 2), np.int32)], 8)
  with pytest.raises(ValueError, match="Document 0 must be a 1-D integer"):
    packing.pack_documents([np.array([5.0, 6.0])], 8)
  with pytest.raises(ValueError, match="Document 2 contains pad_id=0"):
    packing.pack_documents([np.arange(5, 8), [], np.array([9, 0, 9])], 8)


def test_packing_efficiency():
  assert packing.packing_efficiency(np.array([[2, 5, 3, 0]])) == 0.75
  assert packing.packing_efficiency(np.zeros((0, 8), np.int32)) == 0.0
  out = packing.pack_documents(make_docs([200] * 50), 128)
  assert packing.packing_efficiency(out["tokens"]) > 0.99


def test_split_train_eval():
  train, eval_ = packing.split_train_eval(1000, 0.05, seed=3)
  assert len(eval_) == 50 and len(train) == 950
  assert train.dtype == eval_.dtype == np.int64
  np.testing.assert_array_equal(np.sort(np.concatenate([train, eval_])),
                                np.arange(1000))
  assert (np.diff(train) > 0).all() and (np.diff(eval_) > 0).all()
  again = packing.split_train_eval(1000, 0.05, seed=3)
  np.testing.assert_array_equal(again[1], eval_)
  other = packing.split_train_eval(1000, 0.05, seed=4)
  assert not np.array_equal(other[1], eval_)
  # Pinned: the held-out set must not change with numpy versions.
  np.testing.assert_array_equal(packing.split_train_eval(10, 0.2, seed=0)[1],
                                [1, 4])
  # Spread over the whole range, not a block.
  assert eval_.min() < 200 and eval_.max() > 800


def test_split_edge_cases():
  train, eval_ = packing.split_train_eval(2, 0.01, seed=0)
  assert len(eval_) == 1 and len(train) == 1  # At least one eval item.
  train, eval_ = packing.split_train_eval(5, 0.0, seed=0)
  np.testing.assert_array_equal(train, np.arange(5))
  assert eval_.shape == (0,)
  for n in (0, 1):
    with pytest.raises(ValueError, match="Too little data"):
      packing.split_train_eval(n, 0.1, seed=0)
  with pytest.raises(ValueError, match="Too little data"):
    packing.split_train_eval(4, 0.9, seed=0)
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="eval_fraction"):
      packing.split_train_eval(10, bad, seed=0)
