"""Timing of the real training step: step time, tokens/s, compile, MFU.

The step timed is the one training runs (masking, forward, loss at masked
positions, backward, optimizer update, all on device), built from a config
by `build_task` and wrapped by the configured parallel mode, on
synthetic full-length batches (no padding, so every position is work).

Useful FLOPs per step count what the model must compute, as the objective
declares them: for BERT's MLM the matmuls of the Transformer layers (QKV,
attention scores and values, output projection, feed-forward), the MLM head
at the masked positions only, and 3x for the forward plus backward pass.
Embedding lookups and elementwise work are not counted. On CPU, MFU is
against a matmul peak measured in the same process.
The same matmuls, each timed alone at its shape in the three forms a step
computes (forward, input and weight gradients), and the optimizer update
timed alone (best of rounds), give the MFU bound: the MFU of a step that
did only that work, at the speed the kernels reach on it.

Every function times the config's pre-training step unless given a `task`
(a `step.Task`: objective, optimizer, seed), e.g. a fine-tuning task on the
config's encoder (`bench.finetune`); its FLOPs, matmuls and optimizer are
then the task's.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mlm_jax import config as config_lib
from mlm_jax import flops
from mlm_jax import objectives
from mlm_jax import optim
from mlm_jax import parallel
from mlm_jax import peaks as peaks_lib
from mlm_jax import step as step_lib
from mlm_jax import synthetic
from mlm_jax import train


Matmul = flops.Matmul


def build_task(config: ml_collections.ConfigDict) -> step_lib.Task:
  """`train.build_task` with a synthetic word-start table."""
  return train.build_task(config, synthetic.word_starts(config.vocab_size))


def build_objective(config: ml_collections.ConfigDict) -> objectives.Objective:
  """`objectives.build` with a synthetic word-start table."""
  return objectives.build(config, synthetic.word_starts(config.vocab_size))


def step_matmuls(config: ml_collections.ConfigDict,
                 batch_size: int | None = None,
                 task: step_lib.Task | None = None) -> list[Matmul]:
  """The useful matmuls of the forward pass, for `batch_size` examples.

  What the objective declares (`Objective.matmuls`): for BERT's MLM the
  Transformer layers at every position (fused QKV, attention scores and
  weighted values per head, output projection, feed-forward) and the MLM
  head at the masked positions only. Embedding lookups are not matmuls.
  """
  objective = task.objective if task else build_objective(config)
  return objective.matmuls(batch_size or config.train.batch_size,
                           config.data.seq_len)


def flops_per_step(config: ml_collections.ConfigDict,
                   task: step_lib.Task | None = None) -> float:
  """`flops.train_flops_per_step` of the config's objective (or `task`'s)
  and batch."""
  objective = task.objective if task else build_objective(config)
  return flops.train_flops_per_step(objective, config.train.batch_size,
                                    config.data.seq_len)


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _matmul_forms(mm: Matmul, dtype) -> list[tuple[Callable, Any, Any]]:
  """The three products a training step computes for `mm`, as (fn, x, y).

  Forward [b, m, k] @ [b, k, n]; the input gradient [b, m, n] @ [b, k, n]^T
  (contracting the last axes); the weight gradient [b, m, k]^T @ [b, m, n]
  (contracting the token axis, the form XLA:CPU leaves to Eigen, slower
  than the forward at BERT's shapes). Each has
  the forward's FLOPs. Without a batch (`mm.batch` 1) they are 2-D, as the
  step's dense layers compute them.
  """
  lead = (mm.batch,) if mm.batch > 1 else ()
  x = jnp.ones(lead + (mm.m, mm.k), dtype)
  w = jnp.ones(lead + (mm.k, mm.n), dtype)
  dy = jnp.ones(lead + (mm.m, mm.n), dtype)
  return [(_forward, x, w), (_input_gradient, dy, w),
          (_weight_gradient, x, dy)]


@jax.jit
def _forward(x, w):
  return jnp.einsum("...mk,...kn->...mn", x, w)


@jax.jit
def _input_gradient(dy, w):
  return jnp.einsum("...mn,...kn->...mk", dy, w)


@jax.jit
def _weight_gradient(x, dy):
  return jnp.einsum("...mk,...mn->...kn", x, dy)


def matmul_seconds(config: ml_collections.ConfigDict, repeats: int = 5,
                   task: step_lib.Task | None = None) -> float:
  """Seconds a step's matmuls take on their own, on one device.

  Each matmul of one micro-batch of the device's share of the batch is
  timed alone at its shape and dtype (best of `repeats`) in the three
  forms of a training step (`_matmul_forms`), for each of the
  `train.accum_steps` micro-batches. This is what the step's matmuls
  would take at the speed the matmul kernels reach at these shapes. The
  cost of dispatching a call, timed on a call that does nothing, is taken
  off each matmul's time: the step dispatches once.
  """
  dtype = jnp.dtype(config.model.dtype)
  accum = config.train.accum_steps
  micro = max(config.train.batch_size // (jax.device_count() * accum), 1)
  dispatch = _best_seconds(jax.jit(lambda x: x), jnp.zeros([], dtype),
                           repeats=repeats)
  total = 0.0
  for mm in step_matmuls(config, micro, task):
    for fn, x, y in _matmul_forms(mm, dtype):
      seconds = _best_seconds(fn, x, y, repeats=repeats) - dispatch
      total += accum * mm.count * max(seconds, 0.0)
  return total


def optimizer_seconds(config: ml_collections.ConfigDict, repeats: int = 5,
                      task: step_lib.Task | None = None) -> float:
  """Seconds the step's optimizer update takes alone, on one device.

  The gradient's global norm (which the step reports and clips by), the
  configured optimizer's update and its application, jitted alone on
  parameters, moments and a gradient of the model's shapes, with the
  parameters and moments donated as in the step (best of `repeats`).
  It is memory-bound: a few passes over every parameter-sized array. With
  `parallel.fsdp`, each device updates its 1/fsdp share.
  """
  task = task or build_task(config)
  shapes = jax.eval_shape(functools.partial(step_lib.init_state, task,
                                            config.data.seq_len))
  fill = lambda s: jnp.full(s.shape, 1e-3, s.dtype)
  params = jax.tree.map(fill, shapes.params)
  grads = jax.tree.map(fill, shapes.params)
  opt_state = task.tx.init(params)
  tx = optax.with_extra_args_support(task.tx)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params,
                                   grad_norm=optim.global_norm(grads))
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.block_until_ready(update(params, opt_state, grads))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    params, opt_state = jax.block_until_ready(
        update(params, opt_state, grads))
    times.append(time.perf_counter() - start)
  return min(times) / config.parallel.fsdp


def time_repeats(run: Callable[[int], Any], *, steps: int, repeats: int,
                 sample_peak: bool) -> tuple[list[float], list[float]]:
  """Seconds per step of `repeats` timed calls of `run(steps)`.

  `run` returns once its steps are done. With `sample_peak`, the matmul
  peak is also sampled (best of 2) before each call and after the last:
  a VM's speed drifts over minutes, so a peak measured once, at another
  moment than the steps, moves MFU and its bound by as much; the best of
  samples spread over the run is its peak.
  Returns (seconds per step of each call, the peak samples in FLOP/s).
  """
  times, peaks = [], []
  for _ in range(repeats):
    if sample_peak:
      peaks.append(matmul_peak_flops(repeats=2))
    start = time.perf_counter()
    run(steps)
    times.append((time.perf_counter() - start) / steps)
  if sample_peak:
    peaks.append(matmul_peak_flops(repeats=2))
  return times, peaks


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 matmul throughput of the host's devices, FLOP/s: the
  training loop's measurement (`peaks`), larger and `repeats` times."""
  return peaks_lib.measure_matmul_flops(
      n=n, budget_seconds=math.inf,
      max_repeats=repeats) * jax.local_device_count()


@dataclasses.dataclass
class StepTiming:
  """What `time_train_step` measured (times in seconds)."""
  step_median: float
  step_times: list[float]
  tokens_per_s: float
  lower_seconds: float
  compile_seconds: float
  flops_per_step: float
  peak_flops: float
  mfu: float
  peak_host_memory_gb: float
  # The step's matmuls (`matmul_seconds`) and optimizer update
  # (`optimizer_seconds`) timed alone (`kernel_bound`), and the MFU of a
  # step that took only as long as both: the bound set by the kernels.
  # None where not measured (the peers).
  matmul_seconds: float | None = None
  optimizer_seconds: float | None = None
  mfu_bound: float | None = None


@dataclasses.dataclass(frozen=True)
class KernelBound:
  """The work a step cannot skip, timed alone (seconds, best of rounds)."""
  matmul_seconds: float
  optimizer_seconds: float
  # Matmul peaks sampled around the rounds, in FLOP/s (none if not sampled).
  peak_samples: tuple[float, ...] = ()


def kernel_bound(config: ml_collections.ConfigDict, *, rounds: int = 3,
                 sample_peak: bool = True,
                 task: step_lib.Task | None = None) -> KernelBound:
  """`matmul_seconds` and `optimizer_seconds` of `config`, best of `rounds`.

  The rounds are spread out, with a sample of the matmul peak (best of 2)
  before each and after the last (with `sample_peak`). A VM's drift (over
  minutes, and seconds-long dips) only ever slows a
  kernel down, so the best of rounds apart is the kernels' speed; against
  the best peak sample it sets the bound on the same footing as the peak.
  """
  matmul_s, optimizer_s, peaks = [], [], []
  for _ in range(rounds):
    if sample_peak:
      peaks.append(matmul_peak_flops(repeats=2))
    matmul_s.append(matmul_seconds(config, task=task))
    optimizer_s.append(optimizer_seconds(config, task=task))
  if sample_peak:
    peaks.append(matmul_peak_flops(repeats=2))
  return KernelBound(min(matmul_s), min(optimizer_s), tuple(peaks))


def compile_step(config: ml_collections.ConfigDict,
                 task: step_lib.Task | None = None,
                 host_batch: dict[str, Any] | None = None):
  """Our training step of `config` (or `task`) on a batch, compiled.

  `host_batch` defaults to `synthetic.batch(config)`; a task whose
  objective needs more fields (labels) brings its own.
  Returns (compiled step, initial state, device batch, lowering seconds,
  XLA compile seconds); the step is the one whose compile time is reported.
  """
  config_lib.validate(config, num_devices=jax.device_count())
  par = parallel.make_parallel(config.parallel.mode,
                               task or build_task(config),
                               config.data.seq_len, config.parallel.fsdp)
  state = par.init_state()
  batch = par.put_batch(synthetic.batch(config) if host_batch is None
                        else host_batch)
  # Initialisation runs asynchronously: at base it would still be running
  # on both cores while the step traces, and its time would count as ours.
  jax.block_until_ready((state, batch))
  start = time.perf_counter()
  lowered = par.lower_train_step(state, batch)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return (compiled, state, batch, lower_seconds,
          time.perf_counter() - start)


def time_train_step(config: ml_collections.ConfigDict, *, steps: int = 10,
                    repeats: int = 5, peak_flops: float | None = None,
                    matmul_bound: bool = True,
                    task: step_lib.Task | None = None,
                    host_batch: dict[str, Any] | None = None) -> StepTiming:
  """Times `repeats` runs of `steps` steps after compilation; medians.

  `matmul_bound` also times the step's matmuls and its optimizer update
  alone (`kernel_bound`), after the step's peak memory is read and its
  state freed. `task` and `host_batch`: as `compile_step`.
  """
  compiled, state, batch, lower_seconds, compile_seconds = compile_step(
      config, task, host_batch)
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)

  def run(steps):
    nonlocal state, metrics
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

  times, peaks = time_repeats(run, steps=steps, repeats=repeats,
                              sample_peak=peak_flops is None)
  memory_gb = peak_host_memory_gb()
  state = batch = metrics = None  # the bound's work is timed without them
  bound = (kernel_bound(config, sample_peak=peak_flops is None, task=task)
           if matmul_bound else None)
  return step_timing(config, times, lower_seconds, compile_seconds,
                     peak_flops, bound, peak_samples=peaks,
                     peak_memory_gb=memory_gb, task=task)


def step_timing(config: ml_collections.ConfigDict, times: list[float],
                lower_seconds: float, compile_seconds: float,
                peak_flops: float | None,
                bound: KernelBound | None = None,
                peak_samples: Sequence[float] = (),
                peak_memory_gb: float | None = None,
                task: step_lib.Task | None = None) -> StepTiming:
  """The figures of timed steps of `config` (any contender's, same rules).

  `times` are seconds per step of each repeat; the step time is their
  median; MFU counts this config's useful FLOPs (or `task`'s: a peer of
  a fine-tuning step is measured against that step's). The peak is `peak_flops`
  if given, else the best of `peak_samples` (from `time_repeats`), the
  bound's (`bound`, from `kernel_bound`, if given) and one more measured
  now; the bound is against the same peak. Peak memory is
  `peak_memory_gb` if given, else this process's peak so far.
  """
  median = statistics.median(times)
  useful = flops_per_step(config, task)
  bound_peaks = bound.peak_samples if bound else ()
  peak = peak_flops or max([*peak_samples, *bound_peaks, matmul_peak_flops()])
  tokens = config.train.batch_size * config.data.seq_len
  if peak_memory_gb is None:
    peak_memory_gb = peak_host_memory_gb()
  return StepTiming(
      step_median=median, step_times=times, tokens_per_s=tokens / median,
      lower_seconds=lower_seconds, compile_seconds=compile_seconds,
      flops_per_step=useful, peak_flops=peak, mfu=useful / median / peak,
      peak_host_memory_gb=peak_memory_gb,
      matmul_seconds=bound.matmul_seconds if bound else None,
      optimizer_seconds=bound.optimizer_seconds if bound else None,
      mfu_bound=(useful / (bound.matmul_seconds + bound.optimizer_seconds)
                 / peak if bound else None))


def peak_host_memory_gb() -> float:
  """Peak RSS of this process since its exec, in GiB.

  Linux's VmHWM; ru_maxrss (the fallback elsewhere) also counts the parent's
  RSS at fork, which for a child of a large process is the parent's.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2 ** 20  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def time_loader(examples, *, global_batch: int, threads: int,
                batches: int = 50, repeats: int = 3) -> float:
  """Median examples/s of the training loader over `repeats` runs."""
  from mlm_jax.data import loader  # only the data benchmark needs grain
  rates = []
  for r in range(repeats):
    it = loader.train_iterator(examples, global_batch=global_batch, seed=r,
                               threads=threads)
    next(it)  # start-up (thread pool, first reads) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    rates.append(batches * global_batch / (time.perf_counter() - start))
    it.close()
  return statistics.median(rates)
