"""One step, three layouts: 1 device, pmap on 4, jit over a 4-device mesh.

For the same global batches they must give the same loss curve (up to float
reduction order), because masks follow example ids and the loss is a global
sum over a global count.
"""
import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from mlm_jax import masking
from mlm_jax import model as model_lib
from mlm_jax import optim
from mlm_jax import parallel
from mlm_jax import step as step_lib
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import mlm

import ml_collections

SEQ, BATCH, VOCAB, STEPS = 32, 8, 128, 4

# A pmap step compiles twice (its second call takes the state on the
# sharding its first call returned): load the second from the cache.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def _task(dropout=0.0):
  cfg = model_lib.EncoderConfig(
      vocab_size=VOCAB, num_layers=2, hidden_size=32, num_heads=2,
      intermediate_size=64, max_positions=SEQ, dropout=dropout,
      attention_dropout=dropout)
  optim_cfg = ml_collections.ConfigDict(dict(
      lr=1e-2, warmup_steps=1, decay="linear", end_lr_ratio=0.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0))
  objective = mlm.MaskedLM(
      cfg, masking.Masking(max_predictions=6, vocab_size=VOCAB))
  return step_lib.Task(objective=objective,
                       tx=optim.make_optimizer(optim_cfg, 10), seed=3)


def _batches():
  rng = np.random.default_rng(0)
  out = []
  for i in range(STEPS):
    t = rng.integers(tok.NUM_SPECIAL_TOKENS, VOCAB, (BATCH, SEQ)).astype(
        np.int32)
    t[:, 0], t[:, -1] = tok.CLS_ID, tok.SEP_ID
    ends = rng.integers(4, SEQ, BATCH)  # ragged padding, uneven per device
    for r, e in enumerate(ends):
      t[r, e] = tok.SEP_ID
      t[r, e + 1:] = tok.PAD_ID
    out.append(dict(
        tokens=t, segment_ids=np.zeros_like(t),
        positions=np.tile(np.arange(SEQ, dtype=np.int32), (BATCH, 1)),
        example_id=np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.uint32)))
  return out


def _single_device_curve(task):
  step = jax.jit(functools.partial(step_lib.train_step, task=task))
  state = jax.jit(functools.partial(step_lib.init_state, task, SEQ))()
  losses = []
  for b in _batches():
    state, m = step(state, b)
    losses.append(float(m["mlm_loss"][0] / m["mlm_loss"][1]))
  return np.array(losses), state


def _curve(par):
  state, losses = par.init_state(), []
  for b in _batches():
    state, m = par.train_step(state, par.put_batch(b))
    m = par.fetch(m)
    losses.append(m["mlm_loss"][0] / m["mlm_loss"][1])
  return np.array(losses), par.to_global(state)


@pytest.fixture(scope="module")
def reference():
  return _single_device_curve(_task())


@pytest.mark.parametrize("make", [
    lambda t: parallel.PmapParallel(t, SEQ),
    lambda t: parallel.MeshParallel(t, SEQ),
    lambda t: parallel.MeshParallel(t, SEQ, fsdp=2, min_sharded_size=0),
], ids=["pmap4", "jit4", "jit2x2_fsdp"])
def test_same_loss_curve_and_params_as_one_device(reference, make):
  assert jax.device_count() == 4
  ref_losses, ref_state = reference
  assert ref_losses[-1] < ref_losses[0]  # it is learning, not a constant
  losses, state = _curve(make(_task()))
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(state.params),
                  jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  assert int(state.step) == STEPS


def test_fsdp_shards_large_params_and_keeps_layer_axis_whole():
  par = parallel.MeshParallel(_task(), SEQ, fsdp=2, min_sharded_size=0)
  specs = {jax.tree_util.keystr(p): s.spec for p, s in
           jax.tree_util.tree_leaves_with_path(par.state_sharding.params)}
  emb = specs["['bert']['word_embeddings']['embedding']"]
  assert "fsdp" in tuple(emb)
  stacked = [s for n, s in specs.items() if "['layers']" in n]
  assert any("fsdp" in tuple(s) for s in stacked)
  for spec in stacked:  # never shard the scanned [layers] axis
    assert not len(spec) or spec[0] is None
  small = parallel.MeshParallel(_task(), SEQ, fsdp=2)  # default threshold
  assert all(s.spec == jax.sharding.PartitionSpec() for s in
             jax.tree.leaves(small.state_sharding.params))


def test_dropout_under_jit_matches_one_device():
  # With dropout on, jit over the mesh still computes the global program
  # (partitionable threefry), so it matches one device exactly.
  ref, _ = _single_device_curve(_task(dropout=0.2))
  losses, _ = _curve(parallel.MeshParallel(_task(dropout=0.2), SEQ))
  np.testing.assert_allclose(losses, ref, rtol=2e-5)


def test_no_recompilation_after_first_step():
  compiles = []
  listener = lambda event, *a, **k: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  # Under the module's persistent cache a recompilation may be a load:
  # count every request to the cache too.
  cached = lambda event, **k: compiles.append(event) if (
      event == "/jax/compilation_cache/compile_requests_use_cache") else None
  par = parallel.MeshParallel(_task(), SEQ)
  state = par.init_state()
  batches = _batches()
  state, _ = par.train_step(state, par.put_batch(batches[0]))
  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(cached)
  try:
    for b in batches[1:]:  # other contents, other padding, same shapes
      state, m = par.train_step(state, par.put_batch(b))
    jax.block_until_ready(m)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(cached)
  assert compiles == []


def test_eval_padding_rows_add_nothing():
  task = _task()
  par = parallel.PmapParallel(task, SEQ)
  state = par.init_state()
  b = _batches()[0]
  full = par.fetch(par.eval_step(state, par.put_batch(b)))
  padded = {k: v.copy() for k, v in b.items()}
  padded["tokens"][4:] = tok.PAD_ID
  half = par.fetch(par.eval_step(state, par.put_batch(padded)))
  first4 = {k: v[:4] for k, v in b.items()}
  ref = jax.jit(functools.partial(step_lib.eval_step, task=task))(
      par.to_global(state).params, first4)
  assert half["mlm_loss"][1] < full["mlm_loss"][1]
  for k in ("mlm_loss", "mlm_accuracy"):
    np.testing.assert_allclose(half[k], np.asarray(ref[k]), rtol=1e-5)


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_the_large_batch(reference, accum):
  # Same global batch, split into micro-batches inside the jitted step: the
  # same loss curve and parameters as one pass (dropout off), on one device,
  # and under pmap where accum divides the per-device batch.
  ref_losses, ref_state = reference
  task = dataclasses.replace(_task(), accum_steps=accum)
  losses, state = _single_device_curve(task)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(state.params),
                  jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  if BATCH // jax.device_count() % accum == 0:
    losses, _ = _curve(parallel.PmapParallel(task, SEQ))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)


def test_step_takes_any_optax_transform():
  # The step hands its gradient norm to the update as an optax extra
  # argument; a plain GradientTransformation (no extra-args support) must
  # still work: one SGD step moves each parameter by -lr * its gradient.
  sgd = optax.sgd(0.5)
  plain = optax.GradientTransformation(  # an update with no **extra_args
      sgd.init, lambda g, state, params=None: sgd.update(g, state, params))
  task = dataclasses.replace(_task(), tx=plain)
  # Jitted: run eagerly, the init compiled each of its ~200 ops apart (8 s).
  state = jax.jit(functools.partial(step_lib.init_state, task, SEQ))()
  batch = _batches()[0]
  new, metrics = jax.jit(functools.partial(step_lib.train_step, task=task))(
      state, batch)
  moved = jax.tree.map(lambda a, b: a - b, new.params, state.params)
  norm = optim.global_norm(moved) / 0.5
  np.testing.assert_allclose(metrics["grad_norm"][0], norm, rtol=1e-4)
  assert float(metrics["grad_norm"][0]) > 0


# Every objective (and masking strategy) through the three layouts (BERT's
# token masking: above). Pair objectives gather the global batch under pmap
# to choose partners.
OBJECTIVES = {
    "whole_word": {"masking.strategy": "whole_word"},
    "span": {"masking.strategy": "span"},
    "nsp": {"objective.name": "nsp", "data.packing": "pairs"},
    "sop": {"objective.name": "sop", "data.packing": "pairs"},
    "electra": {"objective.name": "electra"},
    "prefix_lm": {"objective.name": "prefix_lm"},
    "causal_lm": {"objective.name": "causal_lm"},
}


def objective_task(overrides, **model):
  """A task from configs/bert.py with a toy encoder and `overrides`."""
  from configs_loader import load_config
  from mlm_jax import synthetic
  from mlm_jax import train
  cfg = load_config("size=tiny,runlocal")
  cfg.vocab_size, cfg.data.seq_len, cfg.train.batch_size = VOCAB, SEQ, BATCH
  cfg.model.update(dict(num_layers=1, hidden_size=32, num_heads=2,
                        intermediate_size=64, **model))
  for field, value in overrides.items():
    section, name = field.rsplit(".", 1)
    cfg[section.split(".")[0]][name] = value
  cfg.optim.warmup_steps = 1
  return cfg, train.build_task(cfg, synthetic.word_starts(VOCAB))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_is_the_same_on_1_device_pmap_and_jit(name):
  from mlm_jax import synthetic
  cfg, task = objective_task(OBJECTIVES[name])
  batches = []
  for i in range(3):
    b = synthetic.batch(cfg, seed=i)
    b["example_id"] = b["example_id"] + BATCH * i
    batches.append(b)
  terms = list(task.objective.loss_weights)

  def curve(init, step, put, fetch):
    state, out = init(), []
    for b in batches:
      state, m = step(state, put(b))
      m = fetch(m)
      out.append([float(m[t][0] / m[t][1]) for t in terms])
    return np.array(out)

  one = curve(jax.jit(functools.partial(step_lib.init_state, task, SEQ)),
              jax.jit(functools.partial(step_lib.train_step, task=task)),
              lambda b: b, lambda m: m)
  assert np.all(np.isfinite(one))
  for par in (parallel.PmapParallel(task, SEQ),
              parallel.MeshParallel(task, SEQ)):
    np.testing.assert_allclose(
        curve(par.init_state, par.train_step, par.put_batch, par.fetch), one,
        rtol=2e-5, err_msg=type(par).__name__)
