"""The benchmark's FLOP count and timing harness."""
import dataclasses
import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from configs_loader import load_config
from mlm_jax import parallel
from mlm_jax import step as step_lib
from mlm_jax import synthetic
from mlm_jax import train
from mlm_jax.bench import timing


def load(arg):
  cfg = load_config(arg)
  cfg.train.batch_size, cfg.data.seq_len, cfg.vocab_size = 4, 32, 512
  return cfg


@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_useful_flops_agree_with_xla_count_of_the_step(size):
  # XLA counts every op of the compiled step (elementwise work, embedding
  # gradients, the optimizer), so it may exceed the matmul count a little;
  # a wrong factor in the formula (say, the head over all positions, or
  # forward-only) would be off by far more. Layers are unrolled because XLA
  # counts a scan body once. One device: the count is per device.
  cfg = load(f"size={size},runlocal")
  cfg.model.scan_layers = False
  task = train.build_task(cfg)
  state = jax.eval_shape(functools.partial(step_lib.init_state, task, 32))
  batch = synthetic.batch(cfg)
  step = jax.jit(functools.partial(step_lib.train_step, task=task))
  cost = step.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ratio = cost["flops"] / timing.flops_per_step(cfg)
  assert 0.95 < ratio < 1.25, ratio


def test_time_train_step_reports_consistent_figures():
  cfg = load("size=tiny,runlocal")
  t = timing.time_train_step(cfg, steps=2, repeats=3, peak_flops=1e11)
  assert len(t.step_times) == 3 and t.step_median in t.step_times
  assert t.tokens_per_s == pytest.approx(4 * 32 / t.step_median)
  assert t.mfu == pytest.approx(t.flops_per_step / t.step_median / 1e11)
  assert t.compile_seconds > 0 and t.peak_host_memory_gb > 0
  assert t.optimizer_seconds > 0
  assert t.mfu_bound == pytest.approx(
      t.flops_per_step / (t.matmul_seconds + t.optimizer_seconds) / 1e11)


@pytest.mark.parametrize("accum", [1, 2])
def test_matmul_seconds_times_each_matmul_of_every_micro_batch(monkeypatch,
                                                               accum):
  # With each matmul's time proportional to its FLOPs, the total is one
  # device's share of the step's useful FLOPs at that rate, whatever the
  # accumulation: 2 micro-batches are twice the matmuls at half the size.
  # Each of the three forms (forward, input and weight gradients) is timed.
  forms = []

  def fake_seconds(fn, *args, repeats):
    if len(args) == 1:
      return 0.0  # the dispatch of a call that does nothing
    a, b = args
    out = jax.eval_shape(fn, a, b)
    forms.append(fn)
    # [batch,] m x k x n from the three operands' sizes.
    batch = out.shape[0] if out.ndim == 3 else 1
    return 2.0 * math.sqrt(a.size * b.size * out.size / batch) * 1e-12
  monkeypatch.setattr(timing, "_best_seconds", fake_seconds)
  cfg = load("size=mini,runlocal")
  cfg.train.batch_size = 4 * jax.device_count()
  cfg.train.accum_steps = accum
  assert timing.matmul_seconds(cfg) == pytest.approx(
      timing.flops_per_step(cfg) / jax.device_count() * 1e-12)
  assert len(set(forms)) == 3 and len(forms) == 3 * len(
      timing.step_matmuls(cfg))


def test_matmul_forms_compute_the_forward_and_both_gradients():
  mm = timing.Matmul("m", batch=2, m=5, k=3, n=4, count=1)
  rng = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(rng[0], (2, 5, 3))
  w = jax.random.normal(rng[1], (2, 3, 4))
  dy = jax.random.normal(rng[2], (2, 5, 4))
  (fwd, *_), (dx, *_), (dw, *_) = timing._matmul_forms(mm, jnp.float32)
  _, vjp = jax.vjp(jnp.matmul, x, w)
  want_dx, want_dw = vjp(dy)
  assert jnp.allclose(fwd(x, w), x @ w, atol=1e-5)
  assert jnp.allclose(dx(dy, w), want_dx, atol=1e-5)
  assert jnp.allclose(dw(x, dy), want_dw, atol=1e-5)
  # Without a batch the operands are 2-D, as in the dense layers.
  flat = timing._matmul_forms(dataclasses.replace(mm, batch=1),
                                 jnp.float32)
  assert [(x.shape, y.shape) for _, x, y in flat] == [
      ((5, 3), (3, 4)), ((5, 4), (3, 4)), ((5, 3), (5, 4))]


def test_optimizer_seconds_times_the_configured_update(monkeypatch):
  # The update runs on every parameter of the model, with the gradient
  # norm the step passes, and is timed (repeats + a warm-up call).
  cfg = load("size=tiny,runlocal")
  seen = {"calls": 0}
  real_build = train.build_task

  def build_task(config, word_starts=None):
    task = real_build(config, word_starts)
    inner = optax.with_extra_args_support(task.tx)

    def update(grads, state, params=None, **extra):
      seen["calls"] += 1
      seen["leaves"] = [g.shape for g in jax.tree.leaves(grads)]
      seen["extra"] = sorted(extra)
      return inner.update(grads, state, params, **extra)
    return dataclasses.replace(task, tx=optax.GradientTransformationExtraArgs(
        task.tx.init, update))
  monkeypatch.setattr(train, "build_task", build_task)
  assert timing.optimizer_seconds(cfg, repeats=2) > 0
  params = jax.eval_shape(functools.partial(step_lib.init_state,
                                            real_build(cfg), 32)).params
  assert seen["leaves"] == [p.shape for p in jax.tree.leaves(params)]
  assert seen["extra"] == ["grad_norm"]
  assert seen["calls"] == 1  # traced once, run 3 times


def test_the_matmuls_alone_take_less_than_the_step():
  # The step does its matmuls and more (elementwise work, the optimizer).
  # At BERT-tiny's benchmark shape, not at the toy shapes above, whose
  # 0.1 ms matmuls are mostly fixed cost.
  cfg = load_config("size=tiny,bench")
  t = timing.time_train_step(cfg, steps=2, repeats=3, peak_flops=1e11)
  assert 0 < t.matmul_seconds < t.step_median
  assert t.mfu_bound > t.mfu


def test_step_matmuls_name_every_useful_flop():
  # 2 * batch * m * k * n per matmul. BERT-base, batch 4 x 128, 20
  # predictions per example, 30522 pieces, per layer: QKV 1.812e9, scores
  # and values 2 x 0.101e9, output 0.604e9, feed-forward 2 x 2.416e9, so
  # 7.449e9 x 12 layers; head 0.094e9 + 3.751e9 at the 80 predictions.
  # Forward 93.23e9, training step 3x: 279.7 GFLOP.
  cfg = load_config("size=base,bench")
  cfg.vocab_size, cfg.train.batch_size = 30522, 4
  mms = {mm.name: mm for mm in timing.step_matmuls(cfg)}
  assert (mms["qkv"].m, mms["qkv"].k, mms["qkv"].n) == (512, 768, 2304)
  assert (mms["attention scores"].batch, mms["attention scores"].k) == (48, 64)
  assert mms["vocabulary projection"].m == 4 * 20
  assert timing.flops_per_step(cfg) == pytest.approx(279.7e9,
                                                              rel=1e-3)


def test_time_train_step_compiles_the_step_once():
  # Beyond the set-up's compiles (state init, as in training), the timing
  # compiles once: the step it times is the one whose compile it reports.
  cfg = load("size=tiny,runlocal")
  compiles = []
  listener = lambda event, *a, **k: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    par = parallel.make_parallel(cfg.parallel.mode, train.build_task(cfg),
                                 cfg.data.seq_len, cfg.parallel.fsdp)
    par.put_batch(synthetic.batch(cfg))
    jax.block_until_ready(par.init_state())
    setup = len(compiles)
    timing.time_train_step(cfg, steps=1, repeats=1, peak_flops=1e11,
                              matmul_bound=False)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiles) - setup == setup + 1


def test_lowering_is_timed_after_the_initial_state_is_ready(monkeypatch):
  # Initialisation is dispatched asynchronously. Here it is made slow (a
  # chain of matmuls the state depends on), so a lowering timed without
  # waiting for it would see its state still being computed.
  cfg = load("size=tiny,runlocal")
  real_make = parallel.make_parallel
  seen = []

  def make_parallel(*args, **kwargs):
    par = real_make(*args, **kwargs)
    init, lower = par.init_state, par.lower_train_step

    @jax.jit
    def slow(state):
      x = jax.lax.fori_loop(0, 400, lambda _, x: jnp.tanh(x @ x),
                            jnp.eye(384) * 0.5)
      return jax.tree.map(lambda l: l + (x[0, 0] * 0).astype(l.dtype), state)

    def lower_train_step(state, batch):
      seen.append(all(x.is_ready() for x in jax.tree.leaves(state)))
      return lower(state, batch)

    monkeypatch.setattr(par, "init_state", lambda: slow(init()))
    monkeypatch.setattr(par, "lower_train_step", lower_train_step)
    return par

  monkeypatch.setattr(parallel, "make_parallel", make_parallel)
  timing.time_train_step(cfg, steps=1, repeats=1, peak_flops=1e11,
                            matmul_bound=False)
  assert seen == [True]


def test_the_peak_is_sampled_between_repeats_and_the_best_kept(monkeypatch):
  # Each sample returns the next of a drifting series; the peak must be the
  # best of the samples taken around every repeat and one after the
  # matmul timings, not the first value measured.
  samples = iter([3e11, 5e11, 2e11, 4e11, 1e11])
  calls = []
  monkeypatch.setattr(timing, "matmul_peak_flops",
                      lambda n=2048, repeats=5: next(samples))
  times, peaks = timing.time_repeats(calls.append, steps=7, repeats=3,
                                        sample_peak=True)
  assert calls == [7, 7, 7] and len(times) == 3
  assert peaks == [3e11, 5e11, 2e11, 4e11]
  cfg = load("size=tiny,runlocal")
  t = timing.step_timing(cfg, [0.5, 0.4, 0.6], 1.0, 2.0, None,
                            peak_samples=peaks)
  assert t.peak_flops == 5e11 and t.step_median == 0.5
  assert t.mfu == pytest.approx(t.flops_per_step / 0.5 / 5e11)
  # Given a peak, nothing is sampled or measured.
  _, none = timing.time_repeats(calls.append, steps=1, repeats=2,
                                   sample_peak=False)
  assert none == [] and timing.step_timing(
      cfg, [0.5], 1.0, 2.0, 1e11).peak_flops == 1e11


def test_the_kernel_bound_keeps_the_best_round_and_its_peaks(monkeypatch):
  # The VM slows down and recovers between rounds: each piece of work keeps
  # its fastest round, and the peaks sampled around the rounds count in the
  # one peak that MFU and the bound are both measured against.
  peaks = iter([2e11, 1e11, 2.5e11, 1.5e11, 3e11])
  monkeypatch.setattr(timing, "matmul_peak_flops",
                      lambda n=2048, repeats=5: next(peaks))
  matmuls, updates = iter([1.5, 1.0, 1.2]), iter([0.4, 0.6, 0.5])
  monkeypatch.setattr(timing, "matmul_seconds",
                      lambda config, task=None: next(matmuls))
  monkeypatch.setattr(timing, "optimizer_seconds",
                      lambda config, task=None: next(updates))
  cfg = load("size=tiny,runlocal")
  bound = timing.kernel_bound(cfg, rounds=3)
  assert bound == timing.KernelBound(1.0, 0.4, (2e11, 1e11, 2.5e11, 1.5e11))
  t = timing.step_timing(cfg, [4.0], 1.0, 2.0, None, bound,
                            peak_samples=[2e11])
  assert t.peak_flops == 3e11  # the best of all samples, one taken last
  assert t.mfu == pytest.approx(t.flops_per_step / 4.0 / 3e11)
  assert t.mfu_bound == pytest.approx(t.flops_per_step / 1.4 / 3e11)
  assert (t.matmul_seconds, t.optimizer_seconds) == (1.0, 0.4)
  # With a given peak, nothing is sampled.
  monkeypatch.setattr(timing, "matmul_seconds",
                      lambda config, task=None: 1.0)
  monkeypatch.setattr(timing, "optimizer_seconds",
                      lambda config, task=None: 0.5)
  assert timing.kernel_bound(cfg, rounds=2, sample_peak=False) == (
      timing.KernelBound(1.0, 0.5, ()))


def test_the_core_never_imports_the_benchmark():
  package = pathlib.Path(timing.__file__).parents[1]
  core = [p for p in package.rglob("*.py")
          if p.relative_to(package).parts[0] != "bench"]
  importers = [str(p.relative_to(package)) for p in core if re.search(
      r"mlm_jax\.bench|from mlm_jax import .*\bbench\b", p.read_text())]
  assert core and not importers
