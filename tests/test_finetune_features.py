"""Encoding examples and batching them into a few static shapes."""
import itertools

import numpy as np
import pytest

from mlm_jax import tokenizer as tok
from mlm_jax.finetune import features
from mlm_jax.finetune.examples import Example
from mlm_jax.finetune.tasks import TaskDataError

# Words of the tokenizer's training text: every test word is spelled from
# its letters, so no piece is [UNK] and decoding gives the text back.
WORDS = ("the of and a to in is was he for it with as his on be at by "
         "house river garden morning window mountain yesterday wonderful "
         "quietly beautiful remember together").split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  return tok.Tokenizer.load(tok.train_sentencepiece(texts, path,
                                                    vocab_size=50))


def sentences(n, seed=0, lo=1, hi=30):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(lo, hi)))
          for _ in range(n)]


def test_single_and_pair_layout(tokenizer):
  texts = sentences(6)
  encoded = features.encode(
      [Example((a, b), label) for a, b, label in zip(texts, texts[1:], "xyx")],
      tokenizer, kind="classification", labels=("x", "y"), max_len=256)
  assert encoded.num_truncated == 0 and list(encoded.labels) == [0, 1, 0]
  for ids, seg, a, b in zip(encoded.tokens, encoded.segment_ids, texts,
                            texts[1:]):
    seps = np.flatnonzero(ids == tok.SEP_ID)
    assert ids[0] == tok.CLS_ID and list(seps) == [seps[0], len(ids) - 1]
    assert tokenizer.decode(ids[1:seps[0]]) == a
    assert tokenizer.decode(ids[seps[0] + 1:-1]) == b
    assert list(seg) == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
  single = features.encode([Example((texts[0],), 2.5), Example(("",), None)],
                           tokenizer, kind="regression", labels=(),
                           max_len=256)
  assert tokenizer.decode(single.tokens[0][1:-1]) == texts[0]
  assert list(single.tokens[1]) == [tok.CLS_ID, tok.SEP_ID]
  assert not single.segment_ids[0].any()
  assert single.labels.dtype == np.float32 and list(single.labels) == [2.5, 0]
  assert list(single.labelled) == [True, False]


def _bert_truncate(a, b, budget):
  """BERT run_classifier's _truncate_seq_pair, on lengths."""
  while a + b > budget:
    if a > b:
      a -= 1
    else:
      b -= 1
  return [a, b]


def test_pair_truncation_cuts_the_longer_text_first(tokenizer):
  for a, b, budget in itertools.product(range(25), range(25), range(5, 20)):
    assert features._fit([a, b], budget) == _bert_truncate(a, b, budget)
  long, short = "the house " * 30, "a river"
  encoded = features.encode([Example((long, short), "x"),
                             Example((short, long), "x"),
                             Example((short, short), "x")],
                            tokenizer, kind="classification", labels=("x",),
                            max_len=24)
  assert encoded.num_truncated == 2
  assert list(encoded.lengths) == [24, 24, 2 * len(tokenizer.encode(
      [short])[0]) + 3]
  single = features.encode([Example((long,), "x"), Example((short,), "x")],
                           tokenizer, kind="classification", labels=("x",),
                           max_len=24)
  assert single.num_truncated == 1 and single.lengths[0] == 24
  first = encoded.tokens[0]
  sep = np.flatnonzero(first == tok.SEP_ID)[0]
  assert tokenizer.decode(first[sep + 1:-1]) == short  # Kept whole.
  assert long.startswith(tokenizer.decode(first[1:sep]))  # Its start kept.


def test_tags_sit_on_the_first_piece_of_each_word(tokenizer):
  rng = np.random.default_rng(1)
  tags = ("B-X", "I-X", "O")
  examples = []
  for _ in range(20):
    words = tuple(rng.choice(WORDS, size=rng.integers(1, 12)))
    examples.append(Example((), None, words,
                            tuple(rng.choice(tags, size=len(words)))))
  encoded = features.encode(examples, tokenizer, kind="tagging", labels=tags,
                            max_len=512)
  multi_piece = 0
  for e, ids, tag, where in zip(examples, encoded.tokens, encoded.tags,
                                encoded.word_positions):
    assert ids[0] == tok.CLS_ID and ids[-1] == tok.SEP_ID
    ends = [*where[1:], len(ids) - 1]
    for word, start, end, label in zip(e.words, where, ends, e.tags):
      assert tokenizer.decode(ids[start:end]) == word
      assert tag[start] == tags.index(label)
      assert (tag[start + 1:end] == -1).all()
      multi_piece += end - start > 1
    assert tag[0] == tag[-1] == -1 and (tag >= 0).sum() == len(e.words)
  assert multi_piece > 5  # Words of several pieces were checked.
  assert encoded.num_truncated == 0


def test_tagging_cuts_whole_words(tokenizer):
  words = ("wonderful", "of", "morning", "was", "the", "for", "river")
  example = Example((), None, words, ("O",) * len(words))
  sizes = [len(p) for p in tokenizer.encode(list(words))]
  assert sizes[5] > 1  # "for" is several pieces (here, 4).
  # Room for all but the last piece of "for": it goes, and "river" too.
  encoded = features.encode([example, Example((), None, ("a",), ())],
                            tokenizer, kind="tagging", labels=("O", "X"),
                            max_len=2 + sum(sizes[:6]) - 1)
  starts = 1 + np.cumsum([0, *sizes[:4]])
  assert list(encoded.word_positions[0]) == [*starts, -1, -1]
  assert len(encoded.tokens[0]) == 2 + sum(sizes[:5])
  assert encoded.num_truncated == 1
  assert list(encoded.labelled) == [True, False]  # No tags: unlabelled.


def test_bad_input(tokenizer):
  with pytest.raises(TaskDataError, match="label 'z', which is not among "
                     "the 2 training labels"):
    features.encode([Example(("a",), "z")], tokenizer, kind="classification",
                    labels=("x", "y"), max_len=16)
  with pytest.raises(TaskDataError, match=r"Examples of \[1, 2\] texts"):
    features.encode([Example(("a",), "x"), Example(("a", "b"), "x")],
                    tokenizer, kind="classification", labels=("x",),
                    max_len=16)
  encoded = features.encode([Example(("the house",), "x")], tokenizer,
                            kind="classification", labels=("x",), max_len=16)
  with pytest.raises(ValueError, match="longer than the largest bucket, 2"):
    next(features.batches(encoded, batch_size=2, buckets=(2,),
                          shuffle=False))


def test_bucket_lengths():
  assert features.bucket_lengths(128) == (16, 32, 64, 128)
  assert features.bucket_lengths(100) == (16, 32, 56, 100)
  assert features.bucket_lengths(16) == (8, 16)
  assert features.bucket_lengths(512, n=2) == (256, 512)
  assert features.bucket_lengths(64, n=1) == (64,)


@pytest.fixture(scope="module")
def encoded(tokenizer):
  texts = sentences(203, seed=2, hi=60)
  return features.encode([Example((t,), str(i % 3)) for i, t in
                          enumerate(texts)], tokenizer,
                         kind="classification", labels=("0", "1", "2"),
                         max_len=64)


def _check_batch(batch, encoded, batch_size, buckets):
  length = batch["tokens"].shape[1]
  assert length in buckets
  assert {k: v.shape for k, v in batch.items()} == {
      "tokens": (batch_size, length), "segment_ids": (batch_size, length),
      "positions": (batch_size, length), "example_id": (batch_size,),
      "label": (batch_size,), "weight": (batch_size,)}
  assert batch["example_id"].dtype == np.uint32
  assert batch["label"].dtype == np.int32
  assert batch["weight"].dtype == np.float32
  real = batch["example_id"] != features.PAD_EXAMPLE_ID
  assert (batch["weight"] == real).all()
  assert (batch["tokens"][~real] == tok.PAD_ID).all()
  for row, i in zip(batch["tokens"][real], batch["example_id"][real]):
    n = len(encoded.tokens[i])
    smaller = [b for b in buckets if b < length]
    assert n <= length and (not smaller or n > smaller[-1])  # Smallest fit.
    assert (row[:n] == encoded.tokens[i]).all() and not row[n:].any()
  for positions, tokens in zip(batch["positions"], batch["tokens"]):
    n = (tokens != tok.PAD_ID).sum()
    assert (positions == np.r_[np.arange(n), np.zeros(length - n)]).all()
  assert (batch["label"][real] == encoded.labels[batch["example_id"][real]]
          ).all()


def test_evaluation_sees_every_example_once_in_order(encoded):
  buckets = features.bucket_lengths(64)
  out = list(features.batches(encoded, batch_size=16, buckets=buckets,
                              shuffle=False))
  for batch in out:
    _check_batch(batch, encoded, 16, buckets)
  ids = np.concatenate([b["example_id"] for b in out])
  ids = ids[ids != features.PAD_EXAMPLE_ID]
  assert sorted(ids) == list(range(len(encoded)))
  lengths = [b["tokens"].shape[1] for b in out]
  assert lengths == sorted(lengths)  # Shortest bucket first,
  for length in set(lengths):  # examples in split order within each.
    within = np.concatenate([b["example_id"] for b in out
                             if b["tokens"].shape[1] == length])
    within = within[within != features.PAD_EXAMPLE_ID]
    assert (np.diff(within.astype(np.int64)) > 0).all()
  assert len(out) == features.num_batches(encoded, batch_size=16,
                                          buckets=buckets)


def test_training_batches_are_static_shuffled_and_deterministic(encoded):
  buckets = features.bucket_lengths(64)
  assert len({b for b in buckets}) == 4
  kwargs = dict(batch_size=8, buckets=buckets, shuffle=True, seed=3)
  shapes, passes = set(), []
  for epoch in range(3):
    out = list(features.batches(encoded, epoch=epoch, **kwargs))
    for batch in out:
      _check_batch(batch, encoded, 8, buckets)
      shapes.add(batch["tokens"].shape)
    ids = np.concatenate([b["example_id"] for b in out])
    assert sorted(ids[ids != features.PAD_EXAMPLE_ID]) == list(
        range(len(encoded)))
    passes.append(ids)
  assert len(shapes) <= len(buckets)  # A step compiles this many times.
  assert len(shapes) > 1  # The data does span several buckets.
  again = np.concatenate([b["example_id"] for b in features.batches(
      encoded, epoch=1, **kwargs)])
  assert (again == passes[1]).all()
  assert (passes[0] != passes[1]).any()


def test_tagging_batches(tokenizer):
  examples = [Example((), None, ("the", "wonderful", "house"),
                      ("O", "B-X", "I-X")),
              Example((), None, ("river",), ())]
  encoded = features.encode(examples, tokenizer, kind="tagging",
                            labels=("B-X", "I-X", "O"), max_len=16)
  batch, = features.batches(encoded, batch_size=4, buckets=(8, 16),
                            shuffle=False)
  assert set(batch) == {"tokens", "segment_ids", "positions", "example_id",
                        "tags", "tag_weight"}
  assert batch["tags"].shape == batch["tag_weight"].shape == (4, 8)
  assert list(batch["example_id"][:2]) == [0, 1]
  where = encoded.word_positions[0]
  assert list(np.flatnonzero(batch["tag_weight"][0])) == list(where)
  assert list(batch["tags"][0][where]) == [2, 0, 1]
  assert not batch["tag_weight"][1:].any()  # Unlabelled, and padding.
  assert batch["tags"].dtype == np.int32
  assert batch["tag_weight"].dtype == np.float32
