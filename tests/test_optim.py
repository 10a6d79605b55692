"""Optimizer: the schedule's shape, which params decay, AdamW's decoupled
decay on exact values, and global-norm clipping."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mlm_jax import model as model_lib
from mlm_jax import optim
from mlm_jax.objectives import mlm as mlm_lib

LR, WARMUP, STEPS, END_RATIO = 0.1, 10, 50, 0.1


def _optim_config(**kw):
  c = ml_collections.ConfigDict(dict(
      lr=LR, warmup_steps=WARMUP, decay="linear", end_lr_ratio=END_RATIO,
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-6, grad_clip=0.0))
  c.update(kw)
  return c


# ------------------------------------------------------------- schedule ----


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_schedule_warmup_peak_and_decay(decay):
  schedule = optim.learning_rate_schedule(_optim_config(decay=decay), STEPS)
  lrs = np.array([schedule(s) for s in range(STEPS + 1)], np.float64)
  assert lrs[0] == 0.0
  np.testing.assert_allclose(lrs[WARMUP], LR, rtol=1e-6)
  np.testing.assert_allclose(lrs[STEPS], END_RATIO * LR, rtol=1e-5)
  np.testing.assert_allclose(lrs[WARMUP // 2], LR / 2, rtol=1e-6)  # linear
  assert np.all(np.diff(lrs[:WARMUP + 1]) > 0)
  assert np.all(np.diff(lrs[WARMUP:]) < 0)
  assert lrs.max() <= LR * (1 + 1e-6)
  # After the end the schedule holds its final value.
  np.testing.assert_allclose(schedule(STEPS + 20), END_RATIO * LR, rtol=1e-5)
  middle = lrs[(WARMUP + STEPS) // 2]
  if decay == "linear":
    np.testing.assert_allclose(middle, LR * (1 + END_RATIO) / 2, rtol=1e-5)
  else:  # the cosine's midpoint is the same, its quarter points are not
    np.testing.assert_allclose(middle, LR * (1 + END_RATIO) / 2, rtol=1e-5)
    quarter = lrs[WARMUP + (STEPS - WARMUP) // 4]
    expected = LR * (END_RATIO + (1 - END_RATIO) * (1 + np.cos(np.pi / 4)) / 2)
    np.testing.assert_allclose(quarter, expected, rtol=1e-5)


# ------------------------------------------------------------ decay mask ----


def _param_shapes(**kw):
  cfg = model_lib.EncoderConfig(vocab_size=64, num_layers=2, hidden_size=32,
                                num_heads=2, intermediate_size=48,
                                max_positions=16, **kw)
  x = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(functools.partial(
      mlm_lib.BertForMaskedLM(cfg).init, method="logits"),
                        jax.random.key(0), x, x, x,
                        jnp.zeros((1, 2), jnp.int32))["params"]


def _flat(tree):
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


_DECAYED_LAYER = ("attention/qkv/kernel", "attention/output/kernel",
                  "intermediate/kernel", "output/kernel")
_DECAYED_TOP = ("bert/word_embeddings/embedding",
                "bert/position_embeddings/embedding",
                "bert/token_type_embeddings/embedding", "transform/kernel")


@pytest.mark.parametrize("scan,pre_layer_norm", [(True, False), (False, True)])
def test_decay_mask_on_the_model(scan, pre_layer_norm):
  params = _param_shapes(scan_layers=scan, pre_layer_norm=pre_layer_norm)
  mask = _flat(optim.decay_mask(params))
  prefixes = (["bert/encoder/layers/layer/"] if scan
              else ["bert/encoder/layer_0/", "bert/encoder/layer_1/"])
  expected_true = set(_DECAYED_TOP) | {
      p + k for p in prefixes for k in _DECAYED_LAYER}
  assert {k for k, v in mask.items() if v} == expected_true
  # The no-decay side, spelled out: biases (incl. the [3, heads, head_dim]
  # fused QKV bias), LayerNorms (stacked too) and the MLM output bias.
  for k in ("output_bias", "transform/bias", "transform_LayerNorm/scale",
            "bert/embeddings_LayerNorm/bias"):
    assert not mask[k], k
  for k in ("attention/qkv/bias", "attention/output/bias",
            "attention_norm/scale", "output_norm/bias"):
    assert not mask[prefixes[0] + k], k
  assert (("bert/final_LayerNorm/scale" in mask) == pre_layer_norm)


# ------------------------------------------------------------- AdamW ----


def _step(tx):
  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
  return step


def _updates(tx, grads_sequence, params):
  state = tx.init(params)
  step = jax.jit(_step(tx))
  out = []
  for g in grads_sequence:
    params, state, u = step(g, state, params)
    out.append(u)
  return out


@pytest.mark.parametrize("fused", [True, False])
def test_weight_decay_only_on_masked_params_with_scheduled_lr(fused):
  wd = 0.5
  params = {
      "dense": {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.full((4,), 3.0)},
      "LayerNorm": {"scale": jnp.full((4,), 1.5), "bias": jnp.full((4,), -1.)},
      "embed": {"embedding": jnp.full((5, 4), -4.0)},
      "output_bias": jnp.full((5,), 0.7),
  }
  tx = optim.make_optimizer(
      _optim_config(weight_decay=wd, grad_clip=1.0, fused=fused), STEPS)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  step = jax.jit(_step(tx))  # one compile instead of many eager op compiles
  p = params
  for _ in range(3):  # steps 0, 1, 2: lr = 0, LR/10, 2 LR/10
    p, state, _ = step(zeros, state, p)
  factor = (1 - 0.0) * (1 - LR / WARMUP * wd) * (1 - 2 * LR / WARMUP * wd)
  for name in ("dense/kernel", "embed/embedding"):
    np.testing.assert_allclose(_flat(p)[name], _flat(params)[name] * factor,
                               rtol=1e-6)
  for name in ("dense/bias", "LayerNorm/scale", "LayerNorm/bias",
               "output_bias"):
    np.testing.assert_array_equal(_flat(p)[name], _flat(params)[name])




@pytest.mark.parametrize("fused", [True, False])
def test_gradient_clipping_to_global_norm(fused):
  clip = 1.0
  tx = optim.make_optimizer(
      _optim_config(grad_clip=clip, weight_decay=0.01, warmup_steps=0,
                    fused=fused), STEPS)
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  # Leaf norms ~1e3 and ~10: both above the clip, far apart, so per-leaf
  # clipping or no clipping would give a different second step.
  huge = {"a": jnp.asarray(rng.normal(size=(4, 3)) * 300, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)) * 6, jnp.float32)}
  scaled = jax.tree.map(lambda g: g * clip / optax.tree.norm(huge), huge)
  np.testing.assert_allclose(optax.tree.norm(scaled), clip, rtol=1e-6)
  small = {"a": jnp.asarray(rng.normal(size=(4, 3)) * 0.01, jnp.float32),
           "b": jnp.asarray(rng.normal(size=(3,)) * 0.01, jnp.float32)}
  # Adam's first update is nearly scale-free (g / |g|); the second step
  # shows which gradient the moments really saw.
  got = _updates(tx, [huge, small], params)
  want = _updates(tx, [scaled, small], params)
  for u, w in zip(got, want):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                         atol=1e-9), u, w)
  # A gradient below the clip goes through untouched.
  got = _updates(tx, [small, small], params)
  unclipped = _updates(
      optim.make_optimizer(_optim_config(grad_clip=0.0, weight_decay=0.01,
                                         warmup_steps=0, fused=fused), STEPS),
      [small, small], params)
  for u, w in zip(got, unclipped):  # equal up to XLA's fusion choices
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
                 u, w)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_fused_adamw_equals_the_optax_chain(grad_clip):
  """Eight steps on the model's parameters, gradients of varying norm
  (clipped on some steps, not on others), warm-up and decay."""
  shapes = _param_shapes()
  rng = np.random.default_rng(1)
  draw = lambda scale: jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * scale, jnp.float32),
      shapes)
  params = draw(0.1)
  grads = [draw(scale) for scale in (0.001, 0.5, 0.002, 0.3, 1e-4, 0.05,
                                     0.01, 0.2)]
  norms = [float(optax.tree.norm(g)) for g in grads]
  if grad_clip:  # both sides of the clip are exercised
    assert min(norms) < grad_clip < max(norms)
  results = []
  for fused in (True, False):
    tx = optim.make_optimizer(
        _optim_config(grad_clip=grad_clip, weight_decay=0.1, warmup_steps=3,
                      fused=fused), 8)
    step = jax.jit(_step(tx))
    p, state = params, tx.init(params)
    for g in grads:
      p, state, _ = step(g, state, p)
    results.append(p)
  changed = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         results[0], params)
  assert min(jax.tree.leaves(changed)) > 0  # every parameter moved
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-7),
               results[0], results[1])


def test_global_norm_and_the_norm_passed_to_the_fused_update():
  rng = np.random.default_rng(2)
  grads = {"a": jnp.asarray(rng.normal(size=(4, 3)) * 3, jnp.float32),
           "b": jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)}
  norm = optim.global_norm(grads)
  assert norm.dtype == jnp.float32
  np.testing.assert_allclose(
      norm, optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32),
                                         grads)), rtol=1e-6)
  params = jax.tree.map(lambda g: jnp.ones(g.shape, g.dtype), grads)
  tx = optim.make_optimizer(_optim_config(grad_clip=1.0, weight_decay=0.0,
                                          warmup_steps=0), STEPS)
  state = tx.init(params)
  update = jax.jit(lambda g, n: tx.update(g, state, params, grad_norm=n)[0])
  # The step passes the norm it reports; the update uses it as given.
  same = update(grads, norm)
  jax.tree.map(np.testing.assert_array_equal, same,
               jax.jit(lambda g: tx.update(g, state, params)[0])(grads))
  # A norm 4x larger clips 4x harder: Adam's first step is scale-free,
  # so compare the first moments instead.
  moments = lambda n: jax.jit(
      lambda g: tx.update(g, state, params, grad_norm=n)[1].mu)(grads)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, 4 * y, rtol=1e-5),
               moments(norm), moments(4 * norm))
