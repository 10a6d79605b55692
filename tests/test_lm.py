"""Prefix and causal language models as masking special cases: the loss is
next-token cross-entropy, and no prediction sees its own token or later."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import config as config_lib
from mlm_jax import masking
from mlm_jax import model as model_lib
from mlm_jax import synthetic
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import causal_lm
from mlm_jax.objectives import prefix_lm

V, L, B = 97, 16, 4
CFG = model_lib.EncoderConfig(vocab_size=V, num_layers=2, hidden_size=32,
                              num_heads=2, intermediate_size=48,
                              max_positions=L, dropout=0.0,
                              attention_dropout=0.0)
_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(tok.NUM_SPECIAL_TOKENS, V, (B, L)).astype(np.int32)
  tokens[:, 0] = tok.CLS_ID
  tokens[1, 10], tokens[1, 11:] = tok.SEP_ID, tok.PAD_ID  # a padded row
  return synthetic.batch_of(tokens)


@functools.lru_cache(maxsize=None)
def _params():
  # Jitted: eagerly, each of its ops compiled apart (~3 s).
  return jax.jit(causal_lm.CausalLM(CFG).init, static_argnums=1)(
      jax.random.key(1), L)


@functools.lru_cache(maxsize=None)
def _all_logits_fn():
  """[B, L-1, V] logits at slots 0..L-2 under a causal mask."""
  model = causal_lm.CausalLM(CFG).module()
  slots = jnp.arange(L - 1)[None, :].repeat(B, 0)
  return _jit(lambda params, t, s, p: model.apply(
      {"params": params}, t, s, p, slots, prefix_lengths=jnp.zeros(
          B, jnp.int32), method="logits"))


def _logits(tokens, batch):
  return np.asarray(_all_logits_fn()(_params(), tokens, batch["segment_ids"],
                                     batch["positions"]))


def test_causal_loss_is_next_token_cross_entropy():
  batch = _batch()
  objective = causal_lm.CausalLM(CFG)
  corrupted = objective.corrupt(batch, masking.stream_key(0, 0))
  m = jax.jit(objective.metrics)(_params(), corrupted)
  loss = float(m["lm_loss"][0] / m["lm_loss"][1])
  # Explicitly: logits of every position but the last, against the token
  # after it, over the real next tokens.
  logits = _logits(batch["tokens"], batch)
  targets = batch["tokens"][:, 1:]
  real = targets != tok.PAD_ID
  x = logits.astype(np.float64)
  log_p = x - x.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  assert float(m["lm_loss"][1]) == real.sum() == 3 * 15 + 10
  np.testing.assert_allclose(loss, nll[real].mean(), rtol=1e-5)
  assert abs(loss - math.log(V)) < 0.5  # near chance at init


def test_no_prediction_sees_its_token_or_later_ones():
  batch = _batch(1)
  base = _logits(batch["tokens"], batch)
  rng = np.random.default_rng(2)
  for i in range(1, L):
    changed = batch["tokens"].copy()
    changed[:, i:] = rng.integers(tok.NUM_SPECIAL_TOKENS, V, (B, L - i))
    logits = _logits(changed, batch)
    # The prediction of token j (slot j - 1) is unchanged for every j <= i.
    np.testing.assert_allclose(logits[:, :i], base[:, :i], atol=1e-5,
                               err_msg=f"position {i}")
    if i < L - 1:  # and the one after does see the change
      assert not np.allclose(logits[0, i], base[0, i], atol=1e-4)


def test_prefix_attends_both_ways_and_the_rest_causally():
  bias = np.asarray(model_lib.attention_bias(
      jnp.full((2, 6), 7), prefix_lengths=jnp.array([0, 3])))[:, 0]
  visible = bias == 0
  causal = np.tril(np.ones((6, 6), bool))
  np.testing.assert_array_equal(visible[0], causal)
  expected = causal.copy()
  expected[:, :3] = True  # everyone sees the prefix, the prefix itself
  np.testing.assert_array_equal(visible[1], expected)


def test_prefix_targets_start_after_the_prefix():
  tokens = jnp.asarray(_batch()["tokens"])
  prefix = jnp.array([0, 5, 15, 1])
  t = jax.tree.map(np.asarray, prefix_lm.prefix_targets(tokens, prefix))
  np.testing.assert_array_equal(t["labels"], np.asarray(tokens)[:, 1:])
  # Row 0 predicts tokens 1..15; row 1 tokens 5..10 (then padding); row 2
  # token 15 only; row 3 (prefix 1) the same as a causal row.
  np.testing.assert_array_equal(t["weights"].sum(1), [15, 6, 1, 15])
  assert t["weights"][1, 3] == 0 and t["weights"][1, 4] == 1


def test_random_prefixes_are_uniform_over_the_split_points():
  rows, n = 20000, L
  tokens = np.full((rows, n), 9, np.int32)
  objective = prefix_lm.PrefixLM(CFG, "random")
  prefix = np.asarray(jax.jit(objective.prefix_lengths)(
      {"tokens": tokens, "example_id": np.arange(rows, dtype=np.uint32)},
      masking.stream_key(0, 0)))
  counts = np.bincount(prefix, minlength=n)
  assert counts[0] == 0 and counts[n:].sum() == 0  # 1..n-1
  p = 1 / (n - 1)
  np.testing.assert_array_less(
      np.abs(counts[1:n] - rows * p), 5 * math.sqrt(rows * p * (1 - p)))


def test_prefix_lm_loss_counts_only_tokens_after_the_prefix():
  batch = _batch(3)
  objective = prefix_lm.PrefixLM(CFG, "random")
  corrupted = objective.corrupt(batch, masking.stream_key(0, 0))
  n = (batch["tokens"] != tok.PAD_ID).sum(1)
  prefix = np.asarray(corrupted["prefix_lengths"])
  assert np.all((prefix >= 1) & (prefix <= n - 1))
  np.testing.assert_array_equal(np.asarray(corrupted["weights"]).sum(1),
                                n - prefix)
  m = jax.jit(objective.metrics)(_params(), corrupted)
  assert float(m["lm_loss"][1]) == (n - prefix).sum()


def test_lm_objectives_refuse_masking_settings():
  cfg = load_config("size=tiny,runlocal,objective=causal_lm")
  config_lib.validate(cfg, num_devices=1)
  cfg.masking.rate = 0.3
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.masking.rate: set to 0.3 but objective "
                           r"'causal_lm' masks nothing"):
    config_lib.validate(cfg, num_devices=1)
  cfg = load_config("size=tiny,runlocal,objective=prefix_lm")
  cfg.objective.prefix_lm.prefix = "segment"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.objective.prefix_lm.prefix: 'segment' "
                           r"makes segment A the prefix.*packing=pairs"):
    config_lib.validate(cfg, num_devices=1)
