"""Losses: exact sums against numpy, weight-0 slots ignored (values and
gradients), and the loss of the real tiny model at initialisation."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import masking
from mlm_jax import model as model_lib
from mlm_jax.objectives import losses
from mlm_jax.objectives import mlm as mlm_lib
from mlm_jax import tokenizer as tok

B, P, V = 3, 5, 11


def _ce(logits, labels, weights):
  return losses.softmax_cross_entropy(logits, labels, weights)._asdict()


def _fused(hid, table, bias, labels, weights):
  return losses.fused_head(hid, table, bias, labels, weights)[0]._asdict()


def _inputs(seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(B, P, V)) * scale).astype(np.float32)
  labels = rng.integers(0, V, size=(B, P)).astype(np.int32)
  weights = np.ones((B, P), np.float32)
  weights[0, 3:] = 0.0
  weights[2, 1] = 0.0
  return logits, labels, weights


def _numpy_metrics(logits, labels, weights):
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  log_p = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
  correct = x.argmax(-1) == labels
  return {"loss": (nll * weights).sum(),
          "correct": (correct * weights).sum(),
          "count": weights.sum()}


@functools.lru_cache(maxsize=None)
def _metrics_fn():
  return jax.jit(_ce)


def _metrics(logits, labels, weights):
  return {k: float(v) for k, v in _metrics_fn()(logits, labels,
                                                  weights).items()}


def test_matches_numpy():
  logits, labels, weights = _inputs()
  # Make some predictions right so the accuracy sum is not trivially 0.
  labels[1] = logits[1].argmax(-1)
  got, want = _metrics(logits, labels, weights), _numpy_metrics(
      logits, labels, weights)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
  assert want["correct"] >= P  # row 1 is all correct
  for v in _metrics_fn()(logits, labels, weights).values():
    assert v.shape == () and v.dtype == jnp.float32


def test_large_logits_are_stable():
  # A naive log(sum(exp(x))) overflows float32 above ~88.
  logits, labels, weights = _inputs(seed=1, scale=1e3)
  got, want = _metrics(logits, labels, weights), _numpy_metrics(
      logits, labels, weights)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)


def test_bfloat16_logits_are_summed_in_float32():
  logits, labels, weights = _inputs(seed=2)
  logits16 = jnp.asarray(logits, jnp.bfloat16)
  got = _metrics(logits16, labels, weights)
  want = _numpy_metrics(np.asarray(logits16, np.float32), labels, weights)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)


def test_weight_zero_slots_are_ignored():
  logits, labels, weights = _inputs(seed=3)
  base = _metrics(logits, labels, weights)
  unused = weights == 0
  logits2, labels2 = logits.copy(), labels.copy()
  logits2[unused] = np.random.default_rng(9).normal(
      size=(unused.sum(), V)) * 50
  labels2[unused] = (labels[unused] + 1) % V
  assert _metrics(logits2, labels2, weights) == base
  zero = _metrics(logits, labels, np.zeros_like(weights))
  assert zero == {"loss": 0.0, "correct": 0.0,
                  "count": 0.0}


def test_gradient_is_zero_at_unused_slots():
  logits, labels, weights = _inputs(seed=4)
  grad = np.asarray(jax.jit(jax.grad(
      lambda x: _ce(x, labels, weights)["loss"]))(
          logits))
  assert np.all(grad[weights == 0] == 0.0)
  # At used slots it is softmax - one_hot (times the weight, here 1).
  x = logits.astype(np.float64)
  softmax = np.exp(x - x.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  expected = (softmax - np.eye(V)[labels]) * weights[..., None]
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_initial_loss_of_tiny_model_is_about_log_vocab():
  """At init, the logits are ~N(0, s^2) with s = ||h|| * std(E) (h leaves a
  LayerNorm with unit scale, so ||h|| = sqrt(H)), i.e. s = sqrt(128) * 0.02 *
  0.88 (truncation) = 0.2. For iid N(0, s^2) logits the expected loss is
  log(V) + s^2 / 2 = log(V) + 0.02, and the standard error of a mean over
  the 33 predictions below is about s / sqrt(33) = 0.035. A tolerance of 0.15 nats covers both with room
  to spare, while a wrong init scale, a missing LayerNorm or an untied,
  unscaled projection puts the loss well above (s = 1 already adds 0.5).
  """
  config = load_config("size=tiny,runlocal")
  cfg = model_lib.EncoderConfig.from_config(config)
  model = mlm_lib.BertForMaskedLM(cfg)
  batch, length, budget = 4, 64, 16
  rng = np.random.default_rng(0)
  tokens = rng.integers(tok.NUM_SPECIAL_TOKENS, cfg.vocab_size,
                        size=(batch, length)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = tok.CLS_ID, tok.SEP_ID
  tokens[1, 40:] = tok.PAD_ID
  positions = np.broadcast_to(np.arange(length, dtype=np.int32),
                              (batch, length))

  # LLVM -O0: compiles much faster, same HLO semantics (see test_model.py).
  @functools.partial(
      jax.jit, compiler_options={"xla_backend_optimization_level": 0})
  def init_loss(tokens):
    keys = masking.example_keys(0, masking.TRAIN_MASK_STREAM,
                                jnp.arange(batch, dtype=jnp.uint32))
    masked = masking.mask_tokens(keys, tokens, max_predictions=budget,
                                 vocab_size=cfg.vocab_size)
    segments = jnp.zeros_like(tokens)
    params = model.init(jax.random.key(0), masked.inputs, segments,
                        positions, masked.positions, method="logits")["params"]
    logits = model.apply({"params": params}, masked.inputs, segments,
                         positions, masked.positions, method="logits")
    return _ce(logits, masked.labels, masked.weights)

  metrics = {k: float(v) for k, v in init_loss(tokens).items()}
  # round(0.15 * 62) = 9 candidates selected per full row, 6 of 38 in row 1.
  assert metrics["count"] == 3 * 9 + 6
  mean_loss = metrics["loss"] / metrics["count"]
  assert abs(mean_loss - math.log(cfg.vocab_size)) < 0.15, mean_loss


def _fused_case(seed=0, n=12, h=8, v=37, bias_scale=0.1):
  rng = np.random.default_rng(seed)
  hid = jnp.asarray(rng.normal(size=(3, n // 3, h)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(v, h)) * 0.5, jnp.float32)
  bias = jnp.asarray(rng.normal(size=(v,)) * bias_scale, jnp.float32)
  labels = rng.integers(0, v, (3, n // 3))
  # Every other slot's label is its argmax: accuracy is checked, not 0.
  top = np.argmax(np.einsum("bph,vh->bpv", hid, table) + bias, axis=-1)
  labels[:, ::2] = top[:, ::2]
  labels = jnp.asarray(labels, jnp.int32)
  weights = jnp.asarray((rng.random((3, n // 3)) > 0.3), jnp.float32)
  return hid, table, bias, labels, weights


# Bias spreads of ~0.4, ~25 (both under the head's shift bound, 30) and
# ~100 (over it: the exact row max).
@pytest.mark.parametrize("bias_scale", [0.1, 5.0, 25.0])
def test_fused_head_equals_logits_then_loss_in_value_and_gradient(bias_scale):
  hid, table, bias, labels, weights = _fused_case(bias_scale=bias_scale)
  spread = float(jnp.max(bias) - jnp.min(bias))
  assert (spread <= losses._MAX_BIAS_SPREAD) == (bias_scale < 10), spread
  def reference(hid, table, bias):
    logits = jnp.einsum("bph,vh->bpv", hid, table) + bias
    return _ce(logits, labels, weights)
  def fused(hid, table, bias):
    return _fused(hid, table, bias, labels, weights)
  ref, got = jax.jit(reference)(hid, table, bias), jax.jit(fused)(
      hid, table, bias)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5)
  assert float(ref["correct"]) >= 2
  loss = lambda f: lambda *a: f(*a)["loss"] * 0.7
  g_ref = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(
      hid, table, bias)
  g_got = jax.jit(jax.grad(loss(fused), argnums=(0, 1, 2)))(hid, table, bias)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_head_ignores_weight_zero_slots():
  hid, table, bias, labels, weights = _fused_case(1)
  weights = weights.at[0].set(0.0)
  grad = jax.jit(jax.grad(lambda h: _fused(
      h, table, bias, labels, weights)["loss"]))(hid)
  assert np.all(np.asarray(grad[0]) == 0.0)
  assert np.any(np.asarray(grad[1]) != 0.0)


def test_sigmoid_cross_entropy_matches_numpy():
  rng = np.random.default_rng(5)
  logits = (rng.normal(size=(4, 7)) * 20).astype(np.float32)  # some huge
  labels = (rng.random((4, 7)) < 0.3).astype(np.int32)
  weights = (rng.random((4, 7)) < 0.8).astype(np.float32)
  got = jax.jit(losses.sigmoid_cross_entropy)(logits, labels, weights)
  x = logits.astype(np.float64)
  # -log sigmoid(x) = log(1 + e^-x); -log(1 - sigmoid(x)) = log(1 + e^x).
  nll = np.where(labels == 1, np.logaddexp(0, -x), np.logaddexp(0, x))
  np.testing.assert_allclose(got.loss, (nll * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(got.correct,
                             (((x > 0) == labels) * weights).sum())
  assert float(got.count) == weights.sum()


def test_pair_is_sum_and_count():
  p = losses.pair(jnp.float32(3.0), 4)
  assert p.shape == (2,) and p.dtype == jnp.float32
  np.testing.assert_array_equal(p, [3.0, 4.0])


def test_fused_head_samples_from_the_softmax():
  # Each of n rows of one distribution draws one sample; the count of each
  # outcome is binomial(n, p_v): within Z standard deviations of n p_v.
  n, h, v, z = 20000, 4, 6, 5.0
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(v, h)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(v,)), jnp.float32)
  hid = jnp.broadcast_to(jnp.asarray(rng.normal(size=(h,)), jnp.float32),
                         (n, h))
  labels, weights = jnp.zeros((n,), jnp.int32), jnp.ones((n,))
  u = jax.random.uniform(jax.random.key(1), (n, v), minval=1e-12)
  sums, samples = jax.jit(losses.fused_head)(hid, table, bias, labels,
                                             weights, -jnp.log(u))
  logits = np.asarray(hid[0] @ table.T + bias, np.float64)
  p = np.exp(logits - logits.max())
  p /= p.sum()
  counts = np.bincount(np.asarray(samples), minlength=v)
  np.testing.assert_array_less(np.abs(counts - n * p),
                               z * np.sqrt(n * p * (1 - p)) + 1)
  # Sampling changes neither the loss nor its gradient.
  plain, _ = losses.fused_head(hid, table, bias, labels, weights)
  np.testing.assert_allclose(sums.loss, plain.loss, rtol=1e-6)
  grad = lambda noise: jax.grad(lambda t: losses.fused_head(
      hid, t, bias, labels, weights, noise)[0].loss)(table)
  np.testing.assert_allclose(grad(-jnp.log(u)), grad(None), rtol=1e-6)
