"""ELECTRA: generator shape and shared embeddings, the discriminator's
labels, no gradient through the samples, and the config's checks."""
import functools

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
from mlm_jax.objectives import electra

V, L, B = 64, 16, 4
DISC = model_lib.EncoderConfig(vocab_size=V, num_layers=2, hidden_size=32,
                               num_heads=2, intermediate_size=64,
                               max_positions=L, dropout=0.0,
                               attention_dropout=0.0)


def _objective(weight=50.0):
  return electra.Electra(
      DISC, electra.generator_config(DISC, 0.5),
      masking.Masking(max_predictions=4, vocab_size=V, mask_prob=0.85,
                      random_prob=0.0), weight)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(tok.NUM_SPECIAL_TOKENS, V, (B, L)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = tok.CLS_ID, tok.SEP_ID
  tokens[2, 9], tokens[2, 10:] = tok.SEP_ID, tok.PAD_ID
  return synthetic.batch_of(tokens)


@functools.lru_cache(maxsize=None)
def _params():
  # Jitted: eagerly, each of its ~250 ops compiled apart (~8 s).
  return jax.jit(_objective().init, static_argnums=1)(jax.random.key(0), L)


def _metrics(params, objective=None, seed=0):
  objective = objective or _objective()
  corrupted = jax.jit(objective.corrupt)(_batch(seed),
                                         masking.stream_key(0, 0))
  return jax.jit(objective.metrics)(params, corrupted)


@pytest.mark.parametrize("size,hidden,heads,ffn", [
    ("base", 256, 4, 1024), ("small", 192, 3, 768), ("tiny", 64, 1, 256)])
def test_generator_is_a_third_in_whole_heads(size, hidden, heads, ffn):
  cfg = load_config(f"size={size},objective=electra")
  g = electra.build(cfg).generator
  assert (g.hidden_size, g.num_heads, g.intermediate_size) == (hidden, heads,
                                                               ffn)
  assert g.num_layers == cfg.model.num_layers


def test_one_set_of_embeddings_serves_both_models():
  params = _params()
  assert set(params) == {"bert", "discriminator", "generator"}
  tables = [jax.tree_util.keystr(p) for p, x in
            jax.tree_util.tree_leaves_with_path(params) if x.shape == (V, 32)]
  assert tables == ["['bert']['word_embeddings']['embedding']"]
  # The generator (width 16) reads them through its own projection.
  assert params["generator"]["embeddings_project"]["kernel"].shape == (32, 16)
  # And its loss trains them: a gradient reaches the shared table.
  grad = jax.grad(lambda p: _metrics(p)["generator_loss"][0])(params)
  assert float(jnp.abs(grad["bert"]["word_embeddings"]["embedding"]).sum()) > 0


def test_no_gradient_flows_through_the_samples():
  grad = jax.grad(lambda p: _metrics(p)["discriminator_loss"][0])(_params())
  assert all(float(jnp.abs(g).max()) == 0.0
             for g in jax.tree.leaves(grad["generator"]))
  assert float(jnp.abs(grad["discriminator"]["prediction"]["kernel"]).sum()) > 0


def test_replaced_means_different_from_the_original():
  # A generator whose every sample is the original token: nothing counts as
  # replaced, though every masked slot was filled by a sample.
  params = jax.tree.map(lambda x: x, _params())
  objective = _objective()
  batch = _batch(1)
  corrupted = objective.corrupt(batch, masking.stream_key(0, 0))
  labels = np.asarray(corrupted["labels"])
  weights = np.asarray(corrupted["weights"])
  assert weights.sum() > 0
  one = int(labels[weights > 0][0])
  batch["tokens"] = np.where(batch["tokens"] >= tok.NUM_SPECIAL_TOKENS, one,
                             batch["tokens"])
  bias = np.full(V, -1e4, np.float32)
  bias[one] = 0.0
  params["generator"]["output_bias"] = jnp.asarray(bias)
  m = jax.jit(objective.metrics)(params, objective.corrupt(
      batch, masking.stream_key(0, 0)))
  assert float(m["generator_accuracy"][0]) == float(m["generator_accuracy"][1])
  np.testing.assert_array_equal(m["original_share"], [B * L - 6, B * L - 6])
  assert float(m["replaced_accuracy"][1]) == 0


def test_discriminator_counts_every_real_token_and_weights_the_loss():
  m = _metrics(_params())
  real = (_batch()["tokens"] != tok.PAD_ID).sum()
  for k in ("discriminator_loss", "discriminator_accuracy"):
    assert float(m[k][1]) == real
  n_replaced = float(m["replaced_accuracy"][1])
  assert float(m["original_accuracy"][1]) == real - n_replaced
  assert 0 < n_replaced <= float(m["generator_loss"][1])
  assert _objective(7.0).loss_weights == {"generator_loss": 1.0,
                                          "discriminator_loss": 7.0}


def test_exp_noise_is_exponential_and_per_example():
  keys = jax.random.key_data(masking.keys_for(jax.random.key(0),
                                              jnp.arange(2, dtype=jnp.uint32)))
  e = np.asarray(electra.exp_noise(keys, (50, 400)))
  assert np.all(e > 0)
  n = e[0].size
  # Exp(1): mean 1 and variance 1, so the mean is within 5 / sqrt(n).
  assert abs(e[0].mean() - 1) < 5 / np.sqrt(n)
  assert abs(np.mean(e[0] > 1) - np.exp(-1)) < 5 * np.sqrt(0.23 / n)
  assert not np.allclose(e[0], e[1])


@pytest.mark.parametrize("field,value,match", [
    ("generator_size", 1.5, r"generator_size: 1.5 makes a generator wider "
                            r"than the discriminator; use a fraction in "
                            r"\(0, 1\]"),
    ("generator_layers", 5, r"generator_layers: 5 is outside"),
    ("discriminator_weight", 0.0, r"discriminator_weight: 0.0 is not"),
])
def test_bad_electra_settings_are_one_line(field, value, match):
  cfg = load_config("size=tiny,runlocal,objective=electra")
  config_lib.validate(cfg, num_devices=1)
  cfg.objective.electra[field] = value
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.objective.electra." + match):
    config_lib.validate(cfg, num_devices=1)


def test_electra_settings_are_refused_for_another_objective():
  cfg = load_config("size=tiny,runlocal")
  cfg.objective.electra.generator_size = 0.25
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.objective.electra.generator_size: set to "
                           r"0.25 but config.objective.name is 'mlm'; "
                           r"select it with --config.objective.name=electra"):
    config_lib.validate(cfg, num_devices=1)
