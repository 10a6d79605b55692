"""Next-sentence and sentence-order prediction: the negatives they make on
device, their labels and rates, and the pooled classifier's loss."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import config as config_lib
from mlm_jax import masking
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import nsp
from mlm_jax.objectives import sop

Z = 5.0
L = 24


def _pairs(rng, rows, pad_rows=0):
  """[CLS] A [SEP] B [SEP] [PAD]... with random lengths; A ids < 500 and B
  ids >= 500, so a segment's origin is visible in its ids."""
  tokens = np.zeros((rows, L), np.int32)
  segments = np.zeros((rows, L), np.int32)
  for r in range(rows - pad_rows):
    a = rng.integers(1, 9)
    b = rng.integers(1, L - 3 - a + 1)
    row = ([tok.CLS_ID] + list(rng.integers(5, 500, a)) + [tok.SEP_ID]
           + list(rng.integers(500, 1000, b)) + [tok.SEP_ID])
    tokens[r, :len(row)] = row
    segments[r, a + 2:len(row)] = 1
  real = tokens != tok.PAD_ID
  return {"tokens": tokens, "segment_ids": segments,
          "positions": np.where(real, np.arange(L), 0).astype(np.int32),
          "document_ids": real.astype(np.int32),
          "example_id": np.arange(1000, 1000 + rows, dtype=np.uint32)}


def _objective(cls, rate=0.5):
  from mlm_jax import model as model_lib
  cfg = model_lib.EncoderConfig(vocab_size=1000, num_layers=1, hidden_size=16,
                                num_heads=2, intermediate_size=32,
                                max_positions=L)
  return cls(cfg, masking.Masking(max_predictions=4, vocab_size=1000), rate)


def _make(cls, batch, rate=0.5, seed=0):
  fn = jax.jit(lambda b: _objective(cls, rate).make_pairs(
      b, masking.stream_key(seed, 0), None))
  fields, label, weight = fn(batch)
  return jax.tree.map(np.asarray, fields), np.asarray(label), np.asarray(
      weight)


def _segments(row_tokens, row_segments):
  real = row_tokens != tok.PAD_ID
  a = row_tokens[real & (row_segments == 0)]
  b = row_tokens[real & (row_segments == 1)]
  assert a[0] == tok.CLS_ID and a[-1] == tok.SEP_ID and b[-1] == tok.SEP_ID
  return list(a[1:-1]), list(b[:-1])


def test_sop_swaps_the_segments_and_their_ids():
  batch = _pairs(np.random.default_rng(0), 64, pad_rows=2)
  fields, label, weight = _make(sop.SentenceOrder, batch)
  np.testing.assert_array_equal(weight, [1] * 62 + [0, 0])
  assert 0 < label.sum() < 62 and label[62:].sum() == 0
  for r in range(62):
    a, b = _segments(batch["tokens"][r], batch["segment_ids"][r])
    new_a, new_b = _segments(fields["tokens"][r], fields["segment_ids"][r])
    assert (new_a, new_b) == ((b, a) if label[r] else (a, b))
    np.testing.assert_array_equal(fields["positions"][r],
                                  batch["positions"][r])
  np.testing.assert_array_equal(fields["tokens"][62:], tok.PAD_ID)


def test_nsp_negatives_take_another_examples_text_as_long_as_their_own_b():
  batch = _pairs(np.random.default_rng(1), 64, pad_rows=2)
  fields, label, weight = _make(nsp.NextSentence, batch)
  np.testing.assert_array_equal(weight, [1] * 62 + [0, 0])
  text_of = {}
  for r in range(62):
    a, b = _segments(batch["tokens"][r], batch["segment_ids"][r])
    text_of[r] = a + b
  same_length = 0
  for r in range(62):
    a, b = _segments(batch["tokens"][r], batch["segment_ids"][r])
    new_a, new_b = _segments(fields["tokens"][r], fields["segment_ids"][r])
    assert new_a == a
    if not label[r]:
      assert new_b == b
      continue
    # The start of another example's text (its A, then its B), as long as
    # this example's B unless that text is shorter.
    others = [s for s, text in text_of.items()
              if s != r and text[:len(new_b)] == new_b]
    assert others and new_b
    assert len(new_b) == min(len(b), max(len(text_of[s]) for s in others))
    same_length += len(new_b) == len(b)
    real = fields["tokens"][r] != tok.PAD_ID
    np.testing.assert_array_equal(fields["positions"][r],
                                  np.where(real, np.arange(L), 0))
  assert same_length > label.sum() // 2

@pytest.mark.parametrize("cls", [nsp.NextSentence, sop.SentenceOrder])
def test_negative_rate_is_kept(cls):
  rows = 4096
  batch = _pairs(np.random.default_rng(2), rows)
  _, label, _ = _make(cls, batch, rate=0.3)
  p = 0.3
  assert abs(label.mean() - p) < Z * math.sqrt(p * (1 - p) / rows)


def test_nsp_partners_follow_example_ids_not_rows():
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.permutation(100).astype(np.uint32) * 7)
  u = jax.random.uniform(jax.random.key(0), (100,))
  partner = np.asarray(nsp.partners(ids, u))
  assert np.all(partner != np.arange(100))
  perm = rng.permutation(100)
  moved = np.asarray(nsp.partners(ids[perm], u[perm]))
  # Row perm[i] now holds example i's id: its partner is the same example.
  np.testing.assert_array_equal(np.asarray(ids)[perm][moved],
                                np.asarray(ids)[partner][perm])


def test_nsp_corruption_is_the_same_for_any_row_order():
  batch = _pairs(np.random.default_rng(4), 32)
  perm = np.random.default_rng(5).permutation(32)
  fields, label, _ = _make(nsp.NextSentence, batch)
  shuffled = {k: v[perm] for k, v in batch.items()}
  fields2, label2, _ = _make(nsp.NextSentence, shuffled)
  np.testing.assert_array_equal(label2, label[perm])
  np.testing.assert_array_equal(fields2["tokens"], fields["tokens"][perm])


@pytest.mark.parametrize("name", ["nsp", "sop"])
def test_pair_objectives_need_pairs_packing(name):
  cfg = load_config(f"size=tiny,runlocal,objective={name}")
  assert cfg.data.packing == "pairs"  # the variant sets it
  cfg.data.packing = "stream"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.data.packing: objective '%s' predicts a "
                           r"relation between two segments, and packing "
                           r"'stream' makes none; set "
                           r"--config.data.packing=pairs" % name):
    config_lib.validate(cfg, num_devices=1)
  cfg.data.packing = "pairs"
  config_lib.validate(cfg, num_devices=1)


def test_pooled_classifier_loss_counts_pairs_only():
  batch = _pairs(np.random.default_rng(6), 8, pad_rows=3)
  objective = _objective(sop.SentenceOrder)
  # Jitted: eagerly, each of ~450 ops compiled apart (10 s).
  params = jax.jit(objective.init, static_argnums=1)(jax.random.key(0), L)
  assert {"pooler", "seq_relationship", "bert", "transform",
          "output_bias"} <= set(params)
  corrupted = jax.jit(objective.corrupt)(batch, masking.stream_key(0, 0))
  m = jax.jit(objective.metrics)(params, corrupted)
  assert float(m["sop_loss"][1]) == 5  # the 3 padding rows have no pair
  # At init the classifier is near chance: loss ~ ln 2 per pair.
  assert abs(float(m["sop_loss"][0] / m["sop_loss"][1]) - math.log(2)) < 0.2
