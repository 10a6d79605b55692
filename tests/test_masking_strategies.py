"""Whole-word and span masking: units kept whole, budgets, boundaries,
80/10/10, and SpanBERT's span-length distribution.

Words are checked against a numpy reading of the same rule: a word starts
at a piece whose table entry says so, or after a non-ordinary token, so no
word crosses [CLS], [SEP], [UNK] or padding. Statistical checks use Z
standard errors of their sample, as in test_masking.py.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax import masking
from mlm_jax import synthetic
from mlm_jax import tokenizer as tok

Z = 5.0
VOCAB = 1000
# Pieces whose id is a multiple of 3 start a word: words of ~3 pieces.
WORD_STARTS = np.arange(VOCAB) % 3 == 0
WORD_STARTS[:tok.NUM_SPECIAL_TOKENS] = True


def _batch(rng, batch, length, pad_from=None, seps=0):
  """[CLS] ordinary tokens (with [UNK]s and `seps` inner [SEP]s) [SEP] [PAD]."""
  return synthetic.token_rows(rng, batch, length, VOCAB, pad_from, seps)


@functools.lru_cache(maxsize=None)
def _masker(strategy, **kw):
  m = masking.Masking(vocab_size=VOCAB, strategy=strategy,
                      word_starts=WORD_STARTS, **kw)
  return jax.jit(lambda ids, t: m(masking.example_keys(
      0, masking.TRAIN_MASK_STREAM, ids), t))


def _mask(strategy, tokens, max_predictions=20, **kw):
  ids = jnp.arange(len(tokens), dtype=jnp.uint32)
  out = _masker(strategy, max_predictions=max_predictions, **kw)(
      ids, jnp.asarray(tokens))
  return jax.tree.map(np.asarray, out)


def _selected(out, shape):
  sel = np.zeros(shape, bool)
  used = out.weights > 0
  sel[np.nonzero(used)[0], out.positions[used]] = True
  return sel


def _words(row, starts=WORD_STARTS):
  """The words of a row as lists of positions (numpy reference)."""
  words, current = [], []
  for i, t in enumerate(row):
    if t < tok.NUM_SPECIAL_TOKENS:
      if current:
        words.append(current)
      current = []
    elif starts[t] and current:
      words.append(current)
      current = [i]
    else:
      current.append(i)
  if current:
    words.append(current)
  return words


def _budget(row, rate, cap):
  n = int((row >= tok.NUM_SPECIAL_TOKENS).sum())
  return int(np.clip(np.floor(rate * n + 0.5), min(n, 1), cap))


# ----------------------------------------------------------- whole words ----


def test_whole_words_are_masked_whole_and_greedily_within_the_budget():
  tokens = _batch(np.random.default_rng(0), 512, 64, pad_from=10, seps=1)
  out = _mask("whole_word", tokens)
  sel = _selected(out, tokens.shape)
  for row, s in zip(tokens, sel):
    budget = _budget(row, 0.15, 20)
    words = _words(row)
    assert sum(len(w) for w in words) == (row >= tok.NUM_SPECIAL_TOKENS).sum()
    chosen = [w for w in words if s[w].all()]
    # Every word is all in or all out: no piece is masked alone.
    assert all(s[w].all() or not s[w].any() for w in words)
    assert s.sum() == sum(len(w) for w in chosen) <= budget
    # A word is skipped only when it does not fit what is left: words are
    # taken greedily and what is left only shrinks.
    left = budget - s.sum()
    assert all(len(w) > left for w in words if not s[w].any())
  # Only rows whose every word outgrows their budget (of 1 or 2) get none.
  assert sel.any(1).mean() > 0.95


def test_whole_word_80_10_10_holds_per_token():
  tokens = _batch(np.random.default_rng(1), 2048, 128)
  out = _mask("whole_word", tokens)
  used = out.weights > 0
  new = out.inputs[np.nonzero(used)[0], out.positions[used]]
  n = int(used.sum())
  assert n > 30_000
  for frac, p in (((new == tok.MASK_ID).mean(), 0.8),
                  ((new == out.labels[used]).mean(), 0.1)):
    assert abs(frac - p) < Z * math.sqrt(p * (1 - p) / n) + 1e-3, (frac, p)


def test_one_piece_words_mask_exactly_like_the_budget():
  # With every piece a word start, whole words are tokens: the budget is
  # met exactly, as token masking meets it.
  starts = np.ones(VOCAB, bool)
  m = masking.Masking(max_predictions=20, vocab_size=VOCAB,
                      strategy="whole_word", word_starts=starts)
  tokens = _batch(np.random.default_rng(2), 64, 128, pad_from=5)
  out = jax.jit(lambda t: m(masking.example_keys(
      0, 0, jnp.arange(64, dtype=jnp.uint32)), t))(tokens)
  np.testing.assert_array_equal(
      np.asarray(out.weights).sum(1),
      [_budget(r, 0.15, 20) for r in tokens])


def _length_rates(tokens, chosen_of_row):
  """Per word length: [words chosen, words seen] over all rows."""
  rates = {}
  for i, row in enumerate(tokens):
    chosen = chosen_of_row(i, row)
    for w, c in zip(_words(row), chosen):
      r = rates.setdefault(len(w), [0, 0])
      r[0] += c
      r[1] += 1
  return rates


def test_whole_words_are_taken_in_a_uniformly_random_order():
  # BERT shuffles the words, then takes each that fits. The same rule run
  # in numpy (its own random orders, 4 per row) gives each word length the
  # same chance of being masked as the device does, within the two
  # samples' errors; choosing words by a random piece instead would favour
  # long words.
  tokens = _batch(np.random.default_rng(3), 2048, 64)
  tokens[tokens == tok.UNK_ID] = 6
  sel = _selected(_mask("whole_word", tokens, rate=0.1), tokens.shape)
  device = _length_rates(tokens, lambda i, row: [
      sel[i][w].all() for w in _words(row)])
  rng, reps = np.random.default_rng(0), 4

  def greedy(i, row):
    words, left = _words(row), _budget(row, 0.1, 20)
    taken = [False] * len(words)
    for j in rng.permutation(len(words)):
      if len(words[j]) <= left:
        taken[j], left = True, left - len(words[j])
    return taken

  reference = _length_rates(np.repeat(tokens, reps, axis=0), lambda i, row:
                            greedy(i, row))
  for size in (1, 2, 3, 4):
    (a, n), (b, m) = device[size], reference[size]
    p = (a + b) / (n + m)
    assert abs(a / n - b / m) < Z * math.sqrt(p * (1 - p) * (1 / n + 1 / m)), (
        size, a / n, b / m)
  assert device[1][0] / device[1][1] > device[3][0] / device[3][1]


# ----------------------------------------------------------------- spans ----


def test_span_length_sampler_follows_the_truncated_geometric():
  n, p, max_len = 200_000, 0.2, 10
  u = jax.random.uniform(jax.random.key(0), (n,))
  lengths = np.asarray(masking.span_lengths(u, p, max_len))
  probs = masking.span_length_probabilities(p, max_len)
  assert probs.sum() == pytest.approx(1.0)
  mean = float((np.arange(1, 11) * probs).sum())
  assert mean == pytest.approx(3.797, abs=1e-3)  # SpanBERT's 3.8
  sd = math.sqrt(float(((np.arange(1, 11) - mean) ** 2 * probs).sum()))
  assert abs(lengths.mean() - mean) < Z * sd / math.sqrt(n)
  counts = np.bincount(lengths, minlength=11)[1:]
  assert counts.sum() == n  # nothing outside 1..10
  np.testing.assert_array_less(np.abs(counts - n * probs),
                               Z * np.sqrt(n * probs * (1 - probs)))


def _runs(selected_row):
  """Maximal runs of selected positions as (start, stop)."""
  runs, start = [], None
  for i, s in enumerate(list(selected_row) + [False]):
    if s and start is None:
      start = i
    elif not s and start is not None:
      runs.append((start, i))
      start = None
  return runs


def test_spans_meet_the_budget_and_never_cross_a_separator():
  tokens = _batch(np.random.default_rng(4), 1024, 128, pad_from=20, seps=2)
  out = _mask("span", tokens)
  sel = _selected(out, tokens.shape)
  budgets = np.array([_budget(r, 0.15, 20) for r in tokens])
  # The masked fraction is the budget's: every sequence reaches it (the
  # last span is cut to fit), so the fraction is exact, not approximate.
  np.testing.assert_array_equal(sel.sum(1), budgets)
  cand = tokens >= tok.NUM_SPECIAL_TOKENS
  assert not (sel & ~cand).any()
  masked_fraction = sel.sum() / cand.sum()
  assert masked_fraction == pytest.approx(budgets.sum() / cand.sum())
  # Runs of masked tokens: contiguous, inside one run of ordinary tokens
  # (they cannot cross [SEP], [UNK] or padding, which are never selected).
  lengths = [b - a for row in sel for a, b in _runs(row)]
  assert np.mean(lengths) > 2.0  # spans, not scattered tokens (~1.2)


def test_realized_spans_have_spanberts_mean_length():
  # Whether a draw places a span (its anchor unmasked, budget left) depends
  # on the earlier draws only, so the drawn lengths of placed spans are the
  # sampler's: their mean is SpanBERT's 3.8. A placed span masks exactly
  # its drawn length, except the one the budget cuts and those cut by the
  # end of their run or by an earlier span: rare on long runs at a low rate.
  rows, length, draws = 256, 1024, 120
  tokens = _batch(np.random.default_rng(5), rows, length)
  tokens[tokens == tok.UNK_ID] = 6
  u = jax.random.uniform(jax.random.key(5), (rows, 2, draws))
  num_to_mask = jnp.full(rows, 40)
  out = jax.jit(jax.vmap(lambda ua, ul, t, n: masking.span_selection(
      ua, ul, t, None, num_to_mask=n, p=0.2, max_length=10)))(
          u[:, 0], u[:, 1], jnp.asarray(tokens), num_to_mask)
  added, drawn = np.asarray(out.added), np.asarray(out.length)
  np.testing.assert_array_equal(added.sum(1), 40)
  placed = added > 0
  assert np.all(added <= drawn)
  probs = masking.span_length_probabilities(0.2, 10)
  mean = float((np.arange(1, 11) * probs).sum())
  sd = math.sqrt(float(((np.arange(1, 11) - mean) ** 2 * probs).sum()))
  n = int(placed.sum())
  assert n > 2000
  assert abs(drawn[placed].mean() - mean) < Z * sd / math.sqrt(n)
  last = np.zeros_like(placed)
  last[np.arange(rows), draws - 1 - np.argmax(placed[:, ::-1], axis=1)] = True
  whole = added[placed & ~last] == drawn[placed & ~last]
  assert whole.mean() > 0.9, whole.mean()
  # The realized lengths of uncut spans are SpanBERT's too.
  realized = added[placed & ~last][whole]
  assert abs(realized.mean() - mean) < 0.1 * mean


def test_span_replacement_is_drawn_once_per_span():
  tokens = _batch(np.random.default_rng(6), 1024, 256)
  tokens[tokens == tok.UNK_ID] = 6
  out = _mask("span", tokens, max_predictions=40)
  sel = _selected(out, tokens.shape)
  is_mask = out.inputs == tok.MASK_ID
  mixed = whole = 0
  spans = 0
  for row_sel, row_mask in zip(sel, is_mask):
    for a, b in _runs(row_sel):
      spans += 1
      part = row_mask[a:b]
      whole += part.all() or not part.any()
      mixed += part.any() and not part.all()
  # Runs are mostly single spans, all [MASK] or none; a mixed run is two
  # spans that touch with different draws.
  assert spans > 5000 and mixed / spans < 0.1, (mixed, spans)
  used = out.weights > 0
  frac = (out.inputs[np.nonzero(used)[0], out.positions[used]]
          == tok.MASK_ID).mean()
  # Per span, the [MASK] share is 0.8 over spans: over tokens it is near
  # 0.8 with a spread set by the number of spans, not of tokens.
  assert abs(frac - 0.8) < Z * math.sqrt(0.16 / spans) * 3


def test_whole_word_spans_start_and_end_at_word_boundaries():
  tokens = _batch(np.random.default_rng(7), 256, 128, seps=1)
  out = _mask("span", tokens, span_whole_words=True)
  sel = _selected(out, tokens.shape)
  budgets = np.array([_budget(r, 0.15, 20) for r in tokens])
  cut = 0
  for row, s, budget in zip(tokens, sel, budgets):
    assert s.sum() == budget
    partial = [w for w in _words(row) if s[w].any() and not s[w].all()]
    # Only the budget's cut may leave a word partly masked, once per row.
    assert len(partial) <= 1
    cut += len(partial)
  assert cut < len(tokens)


def test_no_candidates_no_predictions_for_every_strategy():
  tokens = np.zeros((3, 16), np.int32)
  tokens[:, 0], tokens[:, 1] = tok.CLS_ID, tok.SEP_ID
  for strategy in ("whole_word", "span"):
    out = _mask(strategy, tokens, max_predictions=4)
    assert out.weights.sum() == 0
    np.testing.assert_array_equal(out.inputs, tokens)


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_masks_follow_the_example_not_the_layout(strategy):
  tokens = _batch(np.random.default_rng(8), 16, 64)
  ids = jnp.arange(100, 116, dtype=jnp.uint32)
  fn = _masker(strategy, max_predictions=10)
  whole = jax.tree.map(np.asarray, fn(ids, tokens))
  halves = [jax.tree.map(np.asarray, fn(ids[s], tokens[s]))
            for s in (slice(0, 8), slice(8, 16))]
  for field in masking.Masked._fields:
    np.testing.assert_array_equal(
        getattr(whole, field),
        np.concatenate([getattr(h, field) for h in halves]))
