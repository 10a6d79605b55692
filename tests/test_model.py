"""The encoder and BERT's MLM model: shapes, parameter layout, padding, the gathered and tied
MLM head, a numpy BERT reference, scan/remat/dtype equivalences, dropout and
segment ids.

XLA:CPU compiles dominate the run time, so every test uses the same tiny
shapes and shares jitted functions (one per model config, cached), compiled
at LLVM -O0. Parameters mostly come from numpy (via `jax.eval_shape` of
`init`) rather than a jitted `init`: no compile, and non-trivial biases and
LayerNorm scales make the equivalence checks stronger than the zeros/ones of
a fresh init would.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from mlm_jax import dropout as dropout_lib
from mlm_jax import model as model_lib
from mlm_jax.objectives import losses
from mlm_jax.objectives import mlm as mlm_lib
from mlm_jax import tokenizer as tok

V, H, LAYERS, FFN = 64, 32, 2, 48
B, L, P = 2, 8, 3
BASE = model_lib.EncoderConfig(
    vocab_size=V, num_layers=LAYERS, hidden_size=H, num_heads=2,
    intermediate_size=FFN, max_positions=16, dropout=0.1,
    attention_dropout=0.1)
KEY = jax.random.key(0)
# Tiny shapes run in microseconds; what costs is compiling. LLVM -O0 compiles
# these programs ~2.5x faster, and HLO-level semantics are unchanged.
_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _cfg(**kw):
  return dataclasses.replace(BASE, **kw)


def _batch(length=L, real=(8, 5)):
  """tokens, segment_ids, positions [B, length]: row i has real[i] ordinary
  tokens (two segments) then [PAD]; mask positions [B, P] on real tokens."""
  rng = np.random.default_rng(0)
  tokens = np.zeros((B, length), np.int32)
  segments = np.zeros((B, length), np.int32)
  for i, n in enumerate(real):
    tokens[i, :n] = rng.integers(tok.NUM_SPECIAL_TOKENS, V, n)
    segments[i, n // 2:n] = 1
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (B, length))
  mask_positions = np.array([[1, 4, 6], [0, 2, 3]], np.int32)
  return tokens, segments, positions.copy(), mask_positions


def _param_shapes(cfg):
  t, s, p, m = _batch()
  return jax.eval_shape(functools.partial(
      mlm_lib.BertForMaskedLM(cfg).init, method="logits"), KEY, t, s, p,
                        m)["params"]


def _random_params(cfg, seed=0):
  """float32 params of `cfg`'s tree; LayerNorm scales near 1, rest ~0.1."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    x = rng.normal(size=leaf.shape).astype(np.float32)
    return 1.0 + 0.1 * x if path[-1].key == "scale" else 0.1 * x
  return jax.tree_util.tree_map_with_path(fill, _param_shapes(cfg))


def _stack_layers(params):
  """Maps an unscanned tree (encoder/layer_i/...) onto the scanned layout
  (encoder/layers/layer/... with a leading [num_layers] axis)."""
  params = jax.tree.map(lambda x: x, params)  # a copy we may edit
  enc = params["bert"]["encoder"]
  layers = [enc.pop(f"layer_{i}") for i in range(len(enc))]
  enc["layers"] = {"layer": jax.tree.map(lambda *x: np.stack(x), *layers)}
  return params


def _flat(tree):
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _is_encoder_call(module, method_name):
  return isinstance(module, model_lib.Encoder) and method_name == "__call__"


@functools.lru_cache(maxsize=None)
def _forward(cfg, deterministic=True):
  """jitted (params, tokens, segs, pos, mask_pos, rng) -> (logits, hidden)."""
  model = mlm_lib.BertForMaskedLM(cfg)

  def fwd(params, tokens, segments, positions, mask_positions, rng):
    logits, state = model.apply(
        {"params": params}, tokens, segments, positions, mask_positions,
        deterministic=deterministic, rngs={"dropout": rng}, method="logits",
        capture_intermediates=_is_encoder_call, mutable=["intermediates"])
    return logits, state["intermediates"]["bert"]["__call__"][0]
  return _jit(fwd)


def _run(cfg, params, batch, deterministic=True, rng=KEY):
  return jax.tree.map(np.asarray,
                      _forward(cfg, deterministic)(params, *batch, rng))


@functools.lru_cache(maxsize=None)
def _loss_and_grad(cfg):
  """jitted MLM loss (dropout on) and its gradient wrt the params."""
  model = mlm_lib.BertForMaskedLM(cfg)

  def loss(params, tokens, segments, positions, mask_positions, labels, rng):
    logits = model.apply({"params": params}, tokens, segments, positions,
                         mask_positions, deterministic=False,
                         rngs={"dropout": rng}, method="logits")
    return losses.softmax_cross_entropy(logits, labels,
                                        jnp.ones(labels.shape)).loss
  return _jit(jax.value_and_grad(loss))


@functools.lru_cache(maxsize=None)
def _base_params():
  return _random_params(BASE)


# --------------------------------------------------------------- layout ----


@pytest.mark.parametrize("features,in_axes", [((3, 2, 4), 1), ((5,), 2)])
def test_flat_dense_is_dense_general(features, in_axes):
  """Same parameter shapes and initial values, same outputs and gradients."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 6)),
                  jnp.float32)
  axis = tuple(range(-in_axes, 0))
  flat = model_lib.FlatDense(BASE, features, in_axes=in_axes)
  general = nn.DenseGeneral(
      features, axis=axis, param_dtype=jnp.float32,
      kernel_init=nn.initializers.truncated_normal(BASE.init_std))
  params = flat.init(KEY, x)
  reference = general.init(KEY, x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference)
  np.testing.assert_array_equal(params["params"]["kernel"],
                                reference["params"]["kernel"])
  params = jax.tree.map(  # a non-zero bias, so that it is checked too
      lambda a: a + 0.5, params)
  np.testing.assert_allclose(flat.apply(params, x),
                             general.apply(params, x), rtol=1e-5, atol=1e-6)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               jax.grad(loss(flat))(params), jax.grad(loss(general))(params))


def test_logits_shape_and_dtype():
  logits, hidden = _run(BASE, _base_params(), _batch())
  assert logits.shape == (B, P, V) and logits.dtype == np.float32
  assert hidden.shape == (B, L, H)
  assert np.all(np.isfinite(logits))


def test_parameter_names_and_tied_vocab_projection():
  flat = {k: v.shape for k, v in _flat(_param_shapes(BASE)).items()}
  assert flat["bert/word_embeddings/embedding"] == (V, H)
  assert flat["bert/position_embeddings/embedding"] == (16, H)
  assert flat["bert/token_type_embeddings/embedding"] == (2, H)
  assert flat["output_bias"] == (V,)
  # Tied: the word embedding is the only [V, H]-sized parameter, so the
  # vocabulary projection has no separate [H, V] kernel.
  with_vocab = sorted(k for k, s in flat.items() if V in s)
  assert with_vocab == ["bert/word_embeddings/embedding", "output_bias"]
  # Scanned layers: one 'layers/layer' subtree, every leaf stacked [LAYERS].
  layer_keys = [k for k in flat if k.startswith("bert/encoder/")]
  assert layer_keys and all(
      k.startswith("bert/encoder/layers/layer/") for k in layer_keys)
  assert all(flat[k][0] == LAYERS for k in layer_keys)
  assert flat["bert/encoder/layers/layer/attention/qkv/kernel"] == (
      LAYERS, H, 3, 2, H // 2)
  assert flat["bert/encoder/layers/layer/intermediate/kernel"] == (
      LAYERS, H, FFN)
  # Unscanned: the same layer subtree once per layer, without the axis.
  unscanned = _flat(_param_shapes(_cfg(scan_layers=False)))
  for i in range(LAYERS):
    assert unscanned[f"bert/encoder/layer_{i}/output/kernel"].shape == (FFN, H)
  assert not any("layers" in k for k in unscanned)


def test_init_is_bert_like_and_distinct_per_layer():
  params = jax.tree.map(np.asarray, _jit(functools.partial(
      mlm_lib.BertForMaskedLM(BASE).init, method="logits"))(
          KEY, *_batch())["params"])
  flat = _flat(params)
  for name, x in flat.items():
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("kernel", "embedding"):
      # truncated_normal(0.02) cut at 2 stddevs has std 0.02 * 0.88.
      assert 0.013 < x.std() < 0.022 and np.abs(x).max() <= 0.04 + 1e-6, name
    else:
      expected = 1.0 if leaf == "scale" else 0.0
      np.testing.assert_array_equal(x, expected, err_msg=name)
  # Scan must split the init rng: two layers that start equal stay equal.
  qkv = flat["bert/encoder/layers/layer/attention/qkv/kernel"]
  assert not np.allclose(qkv[0], qkv[1])


def test_params_are_float32_under_bfloat16():
  shapes = _param_shapes(_cfg(dtype="bfloat16"))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}


# -------------------------------------------------------------- padding ----


def test_longer_padding_tail_does_not_change_logits():
  params = _base_params()
  short = _batch(L)
  long_ = _batch(2 * L)  # same real tokens and positions, 8 more [PAD]
  np.testing.assert_array_equal(long_[0][:, :L], short[0])
  logits_short, hidden_short = _run(BASE, params, short)
  logits_long, hidden_long = _run(BASE, params, long_)
  np.testing.assert_allclose(logits_long, logits_short, atol=2e-5, rtol=0)
  real = short[0] != tok.PAD_ID
  np.testing.assert_allclose(hidden_long[:, :L][real], hidden_short[real],
                             atol=2e-5, rtol=0)


def test_padding_keys_are_ignored():
  # Same shapes: whatever the embeddings of [PAD] positions (segment and
  # position ids there changed), real tokens' states and logits are the same.
  params = _base_params()
  tokens, segments, positions, mask_positions = _batch()
  pad = tokens == tok.PAD_ID
  assert pad.any()
  logits, hidden = _run(BASE, params, (tokens, segments, positions,
                                       mask_positions))
  logits2, hidden2 = _run(BASE, params, (
      tokens, np.where(pad, 1 - segments, segments),
      np.where(pad, 15 - positions, positions), mask_positions))
  np.testing.assert_allclose(logits2, logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(hidden2[~pad], hidden[~pad], atol=1e-5, rtol=0)
  assert not np.allclose(hidden2[pad], hidden[pad])  # the change was seen


def test_all_padding_row_is_finite():
  # Eval fills its last batch with rows of [PAD]: every key is masked there,
  # and a NaN would poison the weighted sums (NaN * 0 = NaN).
  tokens, segments, positions, mask_positions = _batch()
  tokens[1] = tok.PAD_ID
  logits, hidden = _run(BASE, _base_params(),
                        (tokens, segments, positions, mask_positions))
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(hidden))


# ------------------------------------------------------------- MLM head ----


def test_head_is_applied_per_gathered_position():
  params = _base_params()
  tokens, segments, positions, mask_positions = _batch()
  logits, _ = _run(BASE, params, _batch())
  perm = np.array([2, 0, 1])
  logits_perm, _ = _run(BASE, params, (tokens, segments, positions,
                                       mask_positions[:, perm]))
  np.testing.assert_allclose(logits_perm, logits[:, perm], atol=1e-6, rtol=0)
  # A slot's logits depend on its own position only, not on the others.
  other = mask_positions.copy()
  other[:, 1:] = [[7, 7], [4, 4]]
  logits_other, _ = _run(BASE, params, (tokens, segments, positions, other))
  np.testing.assert_allclose(logits_other[:, 0], logits[:, 0], atol=1e-6,
                             rtol=0)
  np.testing.assert_allclose(logits_other[:, 1], logits_other[:, 2],
                             atol=1e-6, rtol=0)
  assert not np.allclose(logits_other[:, 1], logits[:, 1])


def _gelu(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _np_layer_norm(x, p, eps=BASE.layer_norm_eps):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_logits_are_transform_then_tied_embedding_projection():
  # logits = LN(gelu(h W + b)) E^T + output_bias, rebuilt in float64 numpy
  # from the encoder states at the gathered positions and the params.
  params = _base_params()
  batch = _batch()
  logits, hidden = _run(BASE, params, batch)
  h = np.take_along_axis(hidden, batch[3][..., None], axis=1).astype(
      np.float64)
  t = params["transform"]
  x = _gelu(h @ t["kernel"] + t["bias"])
  x = _np_layer_norm(x, params["transform_LayerNorm"])
  expected = (x @ params["bert"]["word_embeddings"]["embedding"].T
              + params["output_bias"])
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def _np_encoder(params, cfg, tokens, segments, positions):
  """BERT's encoder written out in float64 numpy (Hugging Face's order of
  operations), on the scanned parameter layout."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["bert"])
  x = (p["word_embeddings"]["embedding"][tokens]
       + p["token_type_embeddings"]["embedding"][segments])
  hide = np.where(tokens == tok.PAD_ID, -np.inf, 0.0)[:, None, None, :]
  if cfg.position_encoding == "learned":
    x = x + p["position_embeddings"]["embedding"][positions]
  else:  # ALiBi: head n (1-based) of N adds -2^(-8n/N) |q - k|
    slopes = 2.0 ** (-8.0 * np.arange(1, cfg.num_heads + 1) / cfg.num_heads)
    distance = np.abs(positions[:, :, None] - positions[:, None, :])
    hide = hide - slopes[None, :, None, None] * distance[:, None]
  x = _np_layer_norm(x, p["embeddings_LayerNorm"])
  head_dim = cfg.hidden_size // cfg.num_heads
  for i in range(cfg.num_layers):
    lp = jax.tree.map(lambda a, i=i: a[i], p["encoder"]["layers"]["layer"])

    def attention(h, lp=lp):
      a = lp["attention"]
      qkv = np.einsum("blh,hcnd->blcnd", h, a["qkv"]["kernel"]) + a["qkv"][
          "bias"]
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(head_dim) + hide
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      out = np.einsum("bnqk,bknd->bqnd", probs, v)
      return np.einsum("bqnd,ndh->bqh", out, a["output"]["kernel"]) + a[
          "output"]["bias"]

    def feed_forward(h, lp=lp):
      h = _gelu(h @ lp["intermediate"]["kernel"] + lp["intermediate"]["bias"])
      return h @ lp["output"]["kernel"] + lp["output"]["bias"]

    if cfg.pre_layer_norm:
      x = x + attention(_np_layer_norm(x, lp["attention_norm"]))
      x = x + feed_forward(_np_layer_norm(x, lp["output_norm"]))
    else:
      x = _np_layer_norm(x + attention(x), lp["attention_norm"])
      x = _np_layer_norm(x + feed_forward(x), lp["output_norm"])
  if cfg.pre_layer_norm:
    x = _np_layer_norm(x, p["final_LayerNorm"])
  return x


@pytest.mark.parametrize("pre_layer_norm,position_encoding", [
    (False, "learned"), (True, "learned"), (True, "alibi")])
def test_encoder_matches_a_numpy_bert(pre_layer_norm, position_encoding):
  # Pins the architecture (scaling, exact GELU, where the LayerNorms and
  # residuals sit) that a Hugging Face import relies on; and ALiBi's
  # distance penalty in place of position embeddings (MosaicBERT).
  cfg = _cfg(pre_layer_norm=pre_layer_norm,
             position_encoding=position_encoding)
  params = _random_params(cfg, seed=3)
  batch = _batch()
  _, hidden = _run(cfg, params, batch)
  expected = _np_encoder(params, cfg, *batch[:3])
  np.testing.assert_allclose(hidden, expected, atol=2e-5, rtol=1e-5)


# ------------------------------------------------------ scan, remat, dtype ----


@pytest.mark.parametrize("pre_layer_norm", [False, True])
def test_scan_and_loop_agree(pre_layer_norm):
  loop_cfg = _cfg(scan_layers=False, pre_layer_norm=pre_layer_norm)
  scan_cfg = _cfg(scan_layers=True, pre_layer_norm=pre_layer_norm)
  loop_params = _random_params(loop_cfg, seed=1)
  scan_params = _stack_layers(loop_params)
  assert (jax.tree.structure(scan_params)
          == jax.tree.structure(_param_shapes(scan_cfg)))
  assert (("final_LayerNorm" in loop_params["bert"]) == pre_layer_norm)
  logits_loop, hidden_loop = _run(loop_cfg, loop_params, _batch())
  logits_scan, hidden_scan = _run(scan_cfg, scan_params, _batch())
  np.testing.assert_allclose(hidden_scan, hidden_loop, atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits_scan, logits_loop, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan,remat", [(False, "none"), (False, "full"),
                                         (True, "none")])
@pytest.mark.parametrize("pre_layer_norm", [False, True])
@pytest.mark.parametrize("position_encoding", ["learned", "alibi"])
def test_cls_only_is_position_0_of_the_full_encoder(
    scan, remat, pre_layer_norm, position_encoding):
  # Same parameter tree (a pre-trained checkpoint loads unchanged) and the
  # same [CLS] state, with a padded row and ALiBi's per-query bias rows.
  cfg = _cfg(scan_layers=scan, remat=remat, pre_layer_norm=pre_layer_norm,
             position_encoding=position_encoding)
  encoder = model_lib.Encoder(cfg)
  tokens, segments, positions, _ = _batch()
  init = lambda cls_only: jax.eval_shape(functools.partial(
      encoder.init, deterministic=True, cls_only=cls_only), KEY, tokens,
      segments, positions)["params"]
  assert init(True) == init(False)
  params = _random_params(cfg, seed=3)["bert"]
  run = _jit(lambda p, cls_only: encoder.apply(
      {"params": p}, tokens, segments, positions, deterministic=True,
      cls_only=cls_only), static_argnums=1)
  full, cls = np.asarray(run(params, False)), np.asarray(run(params, True))
  assert cls.shape == (B, 1, H)
  np.testing.assert_allclose(cls, full[:, :1], atol=1e-5, rtol=1e-5)


REMAT_POLICIES = {
    "full": None,  # save nothing
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _forward_equations(cfg, params):
  """All equations of the forward pass, nested ones (scan, remat) included;
  tracing only, no compile."""
  model = mlm_lib.BertForMaskedLM(cfg)
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, *_batch(),
                                               method="logits"))(params)

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from walk(sub)
  return list(walk(jaxpr.jaxpr))


def _checkpoint_policies(cfg, params):
  """Policies of the remat (jax.checkpoint) equations in the forward pass."""
  return [e.params["policy"] for e in _forward_equations(cfg, params)
          if e.primitive.name in ("checkpoint", "remat2")]  # name varies


@pytest.mark.parametrize("scan", [True, False])
def test_remat_changes_nothing_but_memory(scan):
  # Dropout on, same rng: the recomputed forward must redraw the same masks.
  ref_cfg = _cfg(scan_layers=scan)
  params = _random_params(ref_cfg, seed=2)
  tokens, segments, positions, mask_positions = _batch()
  labels = np.take_along_axis(tokens, mask_positions, axis=1)
  args = (tokens, segments, positions, mask_positions, labels, KEY)
  ref_loss, ref_grads = _loss_and_grad(ref_cfg)(params, *args)
  assert _checkpoint_policies(ref_cfg, params) == []
  for remat in ("full", "dots_saveable"):
    cfg = _cfg(scan_layers=scan, remat=remat)
    policies = _checkpoint_policies(cfg, params)
    expected = REMAT_POLICIES[remat]
    assert policies and all(p is expected for p in policies), policies
    loss, grads = _loss_and_grad(cfg)(params, *args)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-6, rtol=1e-5), grads, ref_grads)


def test_bfloat16_compute_close_to_float32():
  params = _base_params()
  logits32, _ = _run(BASE, params, _batch())
  logits16, hidden16 = _run(_cfg(dtype="bfloat16"), params, _batch())
  assert hidden16.dtype == jnp.bfloat16
  # Every matmul (dense layers, attention, vocabulary projection) runs on
  # bf16 operands, not only the LayerNorms and embeddings.
  dots = [e for e in _forward_equations(_cfg(dtype="bfloat16"), params)
          if e.primitive.name == "dot_general"]
  assert len(dots) == 6 + 2  # the scanned layer's body once, then the head
  for e in dots:
    assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
  assert logits16.dtype == np.float32
  # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); after a
  # few dozen roundings through 2 layers and the head, errors of a few
  # percent of the logits' spread are expected, while a wrong computation
  # (dtype-dependent bug) is off by order 100%.
  scale = logits32.std()
  err = np.abs(logits16 - logits32).max()
  assert err < 0.1 * scale, (err, scale)


# -------------------------------------------------- dropout and segments ----


def test_dropout_only_when_not_deterministic():
  params = _base_params()
  batch = _batch()
  other_key = jax.random.key(1)
  det_a, _ = _run(BASE, params, batch, True, KEY)
  det_b, _ = _run(BASE, params, batch, True, other_key)
  np.testing.assert_array_equal(det_a, det_b)
  drop_a, _ = _run(BASE, params, batch, False, KEY)
  drop_a2, _ = _run(BASE, params, batch, False, KEY)
  drop_b, _ = _run(BASE, params, batch, False, other_key)
  np.testing.assert_array_equal(drop_a, drop_a2)
  assert not np.allclose(drop_a, drop_b)
  assert not np.allclose(drop_a, det_a)


@pytest.mark.parametrize("rng", ["hash", "threefry"])
def test_dropout_masks_differ_between_scanned_layers(rng):
  # Under nn.scan the layers share one body: unless the dropout rng is split
  # per layer, every layer drops the same units.
  masks = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Dropout, dropout_lib.HashDropout)):
      jax.debug.callback(lambda d: masks.append(np.asarray(d)), out == 0)
    return out

  model = mlm_lib.BertForMaskedLM(_cfg(dropout=0.5, attention_dropout=0.5,
                                       dropout_rng=rng))

  def fwd(params, batch, rng):
    with nn.intercept_methods(record):
      return model.apply({"params": params}, *batch, deterministic=False,
                         rngs={"dropout": rng}, method="logits")
  jax.block_until_ready(_jit(fwd)(_base_params(), _batch(), KEY))
  by_shape = {}
  for m in masks:
    by_shape.setdefault(m.shape, []).append(m)
  # Attention probabilities: one per layer; residual branches (and the
  # embeddings): 1 + 2 per layer.
  assert sorted(len(v) for v in by_shape.values()) == [LAYERS, 1 + 2 * LAYERS]
  for same_shape in by_shape.values():
    for i, a in enumerate(same_shape):
      assert 0.3 < a.mean() < 0.7
      for b in same_shape[:i]:
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("dropout,attention_dropout", [(0.1, 0.0),
                                                       (0.0, 0.1)])
def test_each_dropout_rate_is_used(dropout, attention_dropout):
  cfg = _cfg(dropout=dropout, attention_dropout=attention_dropout)
  params = _base_params()
  det, _ = _run(cfg, params, _batch(), True)
  drop, _ = _run(cfg, params, _batch(), False)
  assert not np.allclose(det, drop)


def test_alibi_has_no_position_embeddings_and_sees_only_distances():
  cfg = _cfg(position_encoding="alibi")
  params = _random_params(cfg, seed=5)
  assert "position_embeddings" not in params["bert"]
  tokens, segments, positions, slots = _batch(real=(8, 8))
  _, hidden = _run(cfg, params, (tokens, segments, positions, slots))
  # Shifting every position by the same amount changes no distance.
  _, shifted = _run(cfg, params, (tokens, segments, positions + 3, slots))
  np.testing.assert_allclose(shifted, hidden, atol=1e-5)


def test_segment_ids_and_positions_change_the_output():
  params = _base_params()
  tokens, segments, positions, mask_positions = _batch()
  logits, _ = _run(BASE, params, (tokens, segments, positions,
                                   mask_positions))
  no_segments, _ = _run(BASE, params, (tokens, np.zeros_like(segments),
                                       positions, mask_positions))
  shifted, _ = _run(BASE, params, (tokens, segments, positions + 1,
                                   mask_positions))
  assert not np.allclose(no_segments, logits, atol=1e-3)
  assert not np.allclose(shifted, logits, atol=1e-3)


@pytest.mark.parametrize("across", [True, False])
def test_document_attention_option(across):
  # Row 0 packs two documents: positions 0..3 (doc 1) and 4..7 (doc 2).
  cfg = _cfg(dropout=0.0, attention_dropout=0.0,
             attend_across_documents=across)
  params = _random_params(cfg)
  tokens, segments, positions, _ = _batch()
  docs = np.zeros_like(tokens)
  docs[0] = [1, 1, 1, 1, 2, 2, 2, 2]
  docs[1, :5] = 1
  mask_positions = np.array([[1, 2, 3], [0, 2, 3]], np.int32)  # doc 1 only
  apply = _jit(functools.partial(mlm_lib.BertForMaskedLM(cfg).apply,
                                 deterministic=True, method="logits"))
  run = lambda t: np.asarray(apply({"params": params}, t, segments, positions,
                                   mask_positions, document_ids=docs))
  changed = tokens.copy()
  changed[0, 4:] = (changed[0, 4:] + 1 - tok.NUM_SPECIAL_TOKENS) % (
      V - tok.NUM_SPECIAL_TOKENS) + tok.NUM_SPECIAL_TOKENS  # doc 2 edited
  a, b = run(tokens), run(changed)
  if across:
    assert not np.allclose(a[0], b[0], atol=1e-4)  # doc 1 sees doc 2
  else:
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)  # isolated
  np.testing.assert_allclose(a[1], b[1], atol=1e-5)  # row 1 unchanged


def test_document_bias_shapes():
  tokens = np.array([[5, 6, 7, 0]], np.int32)
  plain = model_lib.attention_bias(tokens)
  assert plain.shape == (1, 1, 1, 4)
  docs = np.array([[1, 1, 2, 0]], np.int32)
  bias = np.asarray(model_lib.attention_bias(tokens, docs))
  assert bias.shape == (1, 1, 4, 4)
  allowed = bias[0, 0] == 0
  np.testing.assert_array_equal(allowed[:3, :3], [[1, 1, 0], [1, 1, 0],
                                                  [0, 0, 1]])
  assert not allowed[:, 3].any()  # padding key hidden from everyone
