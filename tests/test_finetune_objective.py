"""Fine-tuning tasks as objectives: their losses, predictions and the same
numbers on 1 device, pmap on 4 and jit over 4."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlm_jax import model as model_lib
from mlm_jax import optim
from mlm_jax import parallel
from mlm_jax import step as step_lib
from mlm_jax import tokenizer as tok
from mlm_jax.finetune import objective as objective_lib
from mlm_jax.objectives import losses

SEQ, BATCH, VOCAB = 16, 8, 64


def _objective(kind, outputs, **encoder):
  cfg = model_lib.EncoderConfig(**{**dict(
      vocab_size=VOCAB, num_layers=1, hidden_size=16, num_heads=2,
      intermediate_size=32, max_positions=SEQ, dropout=0.0,
      attention_dropout=0.0, position_encoding="alibi"), **encoder})
  return objective_lib.FineTune(cfg, kind, outputs)


def _batch(kind, seed=0):
  rng = np.random.default_rng(seed)
  t = rng.integers(tok.NUM_SPECIAL_TOKENS, VOCAB, (BATCH, SEQ)).astype(
      np.int32)
  t[:, 0] = tok.CLS_ID
  lengths = rng.integers(4, SEQ + 1, BATCH)
  for r, n in enumerate(lengths):
    t[r, n - 1], t[r, n:] = tok.SEP_ID, tok.PAD_ID
  t[-1] = tok.PAD_ID  # a padding row, as the last batch of a bucket has
  real = t != tok.PAD_ID
  batch = {"tokens": t, "segment_ids": np.zeros_like(t),
           "positions": np.where(real, np.arange(SEQ), 0).astype(np.int32),
           "example_id": np.arange(BATCH, dtype=np.uint32)}
  weight = np.ones(BATCH, np.float32)
  weight[-1] = 0
  if kind == "tagging":
    batch["tags"] = rng.integers(0, 3, (BATCH, SEQ)).astype(np.int32)
    batch["tag_weight"] = (real & (rng.random((BATCH, SEQ)) < 0.5)
                           & (t > tok.NUM_SPECIAL_TOKENS)).astype(np.float32)
  elif kind == "regression":
    batch["label"], batch["weight"] = rng.normal(size=BATCH).astype(
        np.float32), weight
  else:
    batch["label"], batch["weight"] = rng.integers(0, 3, BATCH).astype(
        np.int32), weight
  return batch


@pytest.mark.parametrize("kind", ["classification", "regression", "tagging"])
def test_loss_is_the_weighted_mean_of_the_heads_outputs(kind):
  objective = _objective(kind, 1 if kind == "regression" else 3)
  params = objective.init(jax.random.key(0), SEQ)
  batch = _batch(kind)
  module = objective.module()
  out = np.asarray(module.apply({"params": params}, batch, method="outputs",
                                deterministic=True))
  metrics = objective.metrics(params, objective.corrupt(batch, None))
  total, count = np.asarray(metrics["task_loss"])
  if kind == "regression":
    w = batch["weight"]
    want = np.sum((out[:, 0] - batch["label"]) ** 2 * w)
  else:
    labels, w = ((batch["tags"], batch["tag_weight"]) if kind == "tagging"
                 else (batch["label"], batch["weight"]))
    logp = out - np.log(np.sum(np.exp(out), -1, keepdims=True))
    want = -np.sum(np.take_along_axis(logp, labels[..., None], -1)[..., 0]
                   * w)
  assert count == w.sum()
  np.testing.assert_allclose(total, want, rtol=1e-5)
  pred = np.asarray(objective.predict(params, batch))
  if kind == "regression":
    np.testing.assert_allclose(pred, out[:, 0], rtol=1e-6)
  else:
    np.testing.assert_array_equal(pred, np.argmax(out, -1))


@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize("scan", [False, True])
def test_sentence_loss_and_grads_are_the_full_encoders(kind, scan):
  # The head's encoder runs its last layer at [CLS] alone (cls_only); the
  # reference runs every position and reads [CLS].
  objective = _objective(kind, 1 if kind == "regression" else 3,
                         num_layers=2, scan_layers=scan)
  params = objective.init(jax.random.key(0), SEQ)
  batch = {k: jnp.asarray(v) for k, v in _batch(kind).items()}
  encoder = model_lib.Encoder(objective.encoder)
  dense = lambda p, x: x @ p["kernel"] + p["bias"]

  def reference(params):
    hidden = encoder.apply({"params": params["bert"]}, batch["tokens"],
                           batch["segment_ids"], batch["positions"],
                           deterministic=True)
    out = dense(params["classifier"],
                jnp.tanh(dense(params["pooler"], hidden[:, 0])))
    if kind == "regression":
      return jnp.sum((out[:, 0] - batch["label"]) ** 2 * batch["weight"])
    return losses.softmax_cross_entropy(out, batch["label"],
                                        batch["weight"]).loss

  def loss(params):
    return objective.metrics(params, objective.corrupt(batch, None))[
        "task_loss"][0]
  # LLVM -O0: these tiny programs cost their compile time, not their run.
  jit = lambda f: jax.jit(jax.value_and_grad(f), compiler_options={
      "xla_backend_optimization_level": 0})
  want, want_grads = jit(reference)(params)
  got, grads = jit(loss)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-6, rtol=1e-4), grads, want_grads)


def test_sentence_heads_count_the_last_layer_at_cls_only():
  flops = lambda objective: sum(
      m.flops for m in objective.matmuls(BATCH, SEQ))
  full = objective_lib.FineTune(
      _objective("tagging", 2).encoder, "classification", 2)
  two = _objective("tagging", 2, num_layers=2, scan_layers=False).encoder
  h, f, n, d = 16, 32, 2, 8
  # Tagging and scanned stacks: every layer at every position.
  tag = objective_lib.FineTune(two, "tagging", 2)
  t = BATCH * SEQ
  layer = 2 * (t * h * 4 * h + 2 * BATCH * n * SEQ * SEQ * d + 2 * t * h * f)
  assert flops(tag) == 2 * layer + 2 * t * h * 2
  cls = objective_lib.FineTune(two, "classification", 2)
  last = 2 * (t * h * 2 * h + BATCH * h * 2 * h + 2 * BATCH * n * SEQ * d
              + 2 * BATCH * h * f)
  head = 2 * (BATCH * h * h + BATCH * h * 2)
  assert flops(cls) == layer + last + head
  assert full.encoder.scan_layers and flops(full) == layer + head


def test_with_pretrained_takes_the_encoder_and_a_trained_pooler():
  objective = _objective("classification", 2)
  mine = objective.init(jax.random.key(0), SEQ)
  theirs = objective.init(jax.random.key(1), SEQ)
  mixed = objective_lib.with_pretrained(mine, theirs)
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(
      lambda x, y: bool(jnp.array_equal(x, y)), a, b)))
  assert same(mixed["bert"], theirs["bert"])
  assert same(mixed["pooler"], theirs["pooler"])
  assert same(mixed["classifier"], mine["classifier"])
  no_pooler = {"bert": theirs["bert"]}  # an MLM-only checkpoint
  assert same(objective_lib.with_pretrained(mine, no_pooler)["pooler"],
              mine["pooler"])


def test_same_losses_and_predictions_on_1_device_pmap_and_jit():
  kind = "classification"
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-2, warmup_steps=1, decay="linear", end_lr_ratio=0.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0))
  objective = _objective(kind, 3)
  task = step_lib.Task(objective, optim.make_optimizer(cfg, 5), seed=0)
  batches = [_batch(kind, seed) for seed in range(3)]
  results = {}
  for name in ("single", "pmap", "jit"):
    par = (parallel.make_parallel("jit", task, SEQ) if name != "pmap"
           else parallel.make_parallel("pmap", task, SEQ))
    if name == "single":
      par = parallel.MeshParallel(task, SEQ)
      par.mesh  # noqa: B018 (all 4 devices; below: the 1-device step)
      state = step_lib.init_state(task, SEQ)
      step = jax.jit(lambda s, b: step_lib.train_step(s, b, task=task))
      losses = []
      for b in batches:
        state, m = step(state, b)
        losses.append(float(m["task_loss"][0] / m["task_loss"][1]))
      pred = np.asarray(objective.predict(state.params, batches[0]))
    else:
      state, losses = par.init_state(), []
      for b in batches:
        state, m = par.train_step(state, par.put_batch(b))
        m = par.fetch(m)
        losses.append(float(m["task_loss"][0] / m["task_loss"][1]))
      pred = np.asarray(par.predict(state, par.put_batch(batches[0])))
    results[name] = (losses, pred)
  for name in ("pmap", "jit"):
    np.testing.assert_allclose(results[name][0], results["single"][0],
                               rtol=2e-5)
    np.testing.assert_array_equal(results[name][1], results["single"][1])
