"""mlm_jax/fill_mask.py and experiments/fill_mask.py on one tiny run: the
pieces are the MLM head's argmax, Mask-Predict re-predicts only what it
re-masks, special ids are never candidates, bad input is one line.
"""
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train import ROOT

from mlm_jax import fill_mask
from mlm_jax import objectives
from mlm_jax import pretrained
from mlm_jax import tokenizer as tok

TEXTS = ["Return the [MASK] of the array.",
         "Return the [MASK] [MASK] of the [MASK] array.",
         "If [MASK] is given, the [MASK] [MASK] [MASK] is used."]


@pytest.fixture(scope="module")
def run(pretrained_run):
  return pretrained_run  # the session's tiny pre-training run


@pytest.fixture(scope="module")
def model(run):
  return pretrained.load(run, "latest")


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def head(model, texts, fill=None):
  """[T, P, V] probabilities at the masks, the masks filled from `fill`."""
  seq_len = model.config.data.seq_len
  encoded = [fill_mask.encode(model.tokenizer, t, seq_len) for t in texts]
  tokens, slots = fill_mask.batch(encoded, seq_len)
  for i, fills in (fill or {}).items():
    for j, token in fills.items():
      tokens[i, slots[i, j]] = token
  logits = fill_mask.logits_fn(model)(model.params, tokens, slots)
  return softmax(np.asarray(logits, np.float64))


def test_text_is_encoded_as_in_pre_training(model):
  t = model.tokenizer
  whole = t.encode(["Return the sum of the array."])[0]
  starts = [t.id_to_piece(i).startswith("\u2581") for i in whole]
  # A one-piece word in the middle, masked.
  k = next(i for i in range(1, len(whole) - 1) if starts[i] and starts[i + 1])
  text = f"{t.decode(whole[:k])} [MASK] {t.decode(whole[k + 1:])}"
  ids, slots = fill_mask.encode(t, text, 32)
  expected = [tok.CLS_ID, *whole, tok.SEP_ID]
  expected[k + 1] = tok.MASK_ID
  assert ids.tolist() == expected and slots.tolist() == [k + 1]
  # Text right after a [MASK] continues its word: no lone '\u2581' piece.
  ids, _ = fill_mask.encode(t, "Return the [MASK].", 32)
  assert ids[-2:].tolist() == [*t.encode_following("."), tok.SEP_ID]
  assert not t.id_to_piece(ids[-2]).startswith("\u2581")


def test_independent_is_the_heads_argmax_without_special_ids(model):
  results = fill_mask.fill_mask(model, TEXTS, top_k=model.config.vocab_size)
  probs = head(model, TEXTS)
  for i, r in enumerate(results):
    assert len(r.masks) == TEXTS[i].count("[MASK]")
    assert r.passes == [(tuple(range(len(r.masks))),
                         tuple(m[0].piece for m in r.masks))]
    for j, candidates in enumerate(r.masks):
      p = probs[i, j].copy()
      p[:tok.NUM_SPECIAL_TOKENS] = 0
      assert candidates[0].token_id == np.argmax(p)
      ids = [c.token_id for c in candidates]
      assert min(ids) >= tok.NUM_SPECIAL_TOKENS
      assert len(ids) == model.config.vocab_size - tok.NUM_SPECIAL_TOKENS
      shown = np.array([c.probability for c in candidates])
      np.testing.assert_allclose(shown, probs[i, j, ids], rtol=1e-5)
      assert np.all(np.diff(shown) <= 0) and shown.sum() <= 1 + 1e-9
      assert candidates[0].piece == model.tokenizer.id_to_piece(ids[0])
    assert "[MASK]" not in r.filled


def test_mask_predict_of_one_mask_is_independent(model):
  independent = fill_mask.fill_mask(model, TEXTS[:1], top_k=3)
  for iterations in (None, 3):
    assert fill_mask.fill_mask(model, TEXTS[:1], top_k=3,
                               mode="mask_predict",
                               iterations=iterations) == independent


def test_remask_counts_decay_linearly():
  assert fill_mask.remask_counts(4, 4) == [3, 2, 1]
  assert fill_mask.remask_counts(5, 2) == [2]
  assert fill_mask.remask_counts(3, 1) == []
  assert fill_mask.remask_counts(1, 5) == []


def test_mask_predict_repredicts_the_least_confident_given_the_rest(model):
  text = TEXTS[2]
  r, = fill_mask.fill_mask(model, [text], top_k=2, mode="mask_predict")
  assert fill_mask.fill_mask(model, [text], top_k=2,
                             mode="mask_predict") == [r]  # deterministic
  n = text.count("[MASK]")
  assert [len(masks) for masks, _ in r.passes] == [n, n - 1, n - 2, n - 3]
  for (_, before), (masks, after) in zip(r.passes, r.passes[1:]):
    assert all(before[j] == after[j] for j in range(n) if j not in masks)
  assert tuple(m[0].piece for m in r.masks) == r.passes[-1][1]
  # Pass 1 by hand: keep the most confident of pass 0, re-predict the rest
  # given it.
  first = head(model, [text])[0]
  first[:, :tok.NUM_SPECIAL_TOKENS] = 0
  kept = int(np.argmax(first.max(-1)))
  assert r.passes[1][0] == tuple(j for j in range(n) if j != kept)
  again = head(model, [text], fill={0: {kept: np.argmax(first[kept])}})[0]
  again[:, :tok.NUM_SPECIAL_TOKENS] = 0
  assert r.passes[1][1] == tuple(
      model.tokenizer.id_to_piece(np.argmax(first[j] if j == kept
                                            else again[j])) for j in range(n))


def with_objective(model, name):
  """This run's shapes under another objective, random weights."""
  config = model.config.copy_and_resolve_references()
  config.objective.name = name
  objective = objectives.build(config, model.tokenizer.word_starts())
  return pretrained.Pretrained(
      config=config, objective=objective, tokenizer=model.tokenizer,
      # Jitted: eagerly, each of its ops compiled apart (~5 s).
      params=jax.jit(objective.init, static_argnums=1)(
          jax.random.key(0), config.data.seq_len), step=0, path=model.path)


def test_electra_fills_with_its_generator_and_lms_are_refused(model):
  r, = fill_mask.fill_mask(with_objective(model, "electra"), TEXTS[1:2],
                           top_k=4, mode="mask_predict")
  assert all(c.token_id >= tok.NUM_SPECIAL_TOKENS
             for m in r.masks for c in m)
  with pytest.raises(fill_mask.FillMaskError, match="objective 'prefix_lm'.*"
                     "use a checkpoint of mlm, nsp, sop, electra"):
    fill_mask.fill_mask(with_objective(model, "prefix_lm"), TEXTS[:1])


def fill(*args):
  return subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "fill_mask.py"),
       *map(str, args)], capture_output=True, text=True, timeout=600)


def test_launcher_prints_candidates_and_bad_input_is_one_line(run, tmp_path):
  proc = fill("--workdir", run, "--text", TEXTS[1], "--text", TEXTS[0],
              "--mode", "mask_predict", "--top_k", 2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert TEXTS[1] in out and TEXTS[0] in out and "[MASK] 3:" in out
  proc = fill("--help")
  assert proc.returncode == 0
  assert "ONE token piece" in " ".join(proc.stdout.split())
  before = sorted(run.rglob("*"))
  cases = {
      ("--workdir", run): "--text is required",
      ("--workdir", run, "--text", "No mask here."): "has no [MASK]",
      ("--workdir", tmp_path / "nowhere", "--text", TEXTS[0]):
          "does not exist",
      ("--workdir", run, "--checkpoint", "best2", "--text", TEXTS[0]):
          "unknown checkpoint",
      ("--workdir", run, "--text", "word " * 40 + "[MASK]"):
          "data.seq_len = 64",
      ("--workdir", run, "--text", TEXTS[0], "--iterations", 2):
          "applies to --mode=mask_predict",
  }
  for args, message in cases.items():
    proc = fill(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], (message, lines[0])
  assert sorted(run.rglob("*")) == before
