"""Timing of the real training step: step time, tokens/s, compile, MFU.

The step timed is the one training runs (masking, forward, loss at masked
positions, backward, optimizer update, all on device), built from a config
by `train.build_task` and wrapped by the configured parallel mode, on
synthetic full-length batches (no padding, so every position is work).

Useful FLOPs per step count what the model must compute: matmuls of the
Transformer layers (QKV, attention scores and values, output projection,
feed-forward), the MLM head at the masked positions only, and 3x for the
forward plus backward pass. Embedding lookups and elementwise work are not
counted. On CPU, MFU is against a matmul peak measured in the same process.
"""
from __future__ import annotations

import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlm_jax import config as config_lib
from mlm_jax import parallel
from mlm_jax import tokenizer as tok
from mlm_jax import train


def train_flops_per_step(config: ml_collections.ConfigDict) -> float:
  """Useful FLOPs of one training step (forward + backward = 3x forward)."""
  m = config.model
  b, l = config.train.batch_size, config.data.seq_len
  h, f, layers = m.hidden_size, m.intermediate_size, m.num_layers
  p = config_lib.max_predictions(config)
  per_layer = (2 * b * l * h * 3 * h      # fused QKV projection
               + 2 * 2 * b * l * l * h    # scores and weighted values
               + 2 * b * l * h * h        # attention output projection
               + 2 * 2 * b * l * h * f)   # feed-forward in and out
  head = 2 * b * p * h * h + 2 * b * p * h * config.vocab_size
  return 3.0 * (layers * per_layer + head)


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 matmul throughput of the default device, FLOP/s."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * n ** 3 / min(times) * jax.local_device_count()


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


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0):
  """A full-length host batch of random ordinary tokens."""
  b, l = config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(seed)
  tokens = rng.integers(tok.NUM_SPECIAL_TOKENS, config.vocab_size,
                        (b, l)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = tok.CLS_ID, tok.SEP_ID
  return {"tokens": tokens, "segment_ids": np.zeros_like(tokens),
          "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)),
          "example_id": np.arange(b, dtype=np.uint32)}


def time_train_step(config: ml_collections.ConfigDict, *, steps: int = 10,
                    repeats: int = 5, peak_flops: float | None = None
                    ) -> StepTiming:
  """Times `repeats` runs of `steps` steps after compilation; medians."""
  config_lib.validate(config, num_devices=jax.device_count())
  par = parallel.make_parallel(config.parallel.mode, train.build_task(config),
                               config.data.seq_len, config.parallel.fsdp)
  state = par.init_state()
  batch = par.put_batch(synthetic_batch(config))
  start = time.perf_counter()
  lowered = par.lower_train_step(state, batch)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  # The executable timed is the one whose compile time is reported.
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps)
  return step_timing(config, times, lower_seconds, compile_seconds,
                     peak_flops)


def step_timing(config: ml_collections.ConfigDict, times: list[float],
                lower_seconds: float, compile_seconds: float,
                peak_flops: float | None) -> StepTiming:
  """The figures of timed steps of `config` (any contender's, same rules).

  `times` are seconds per step of each repeat; the step time is their
  median; MFU counts this config's useful FLOPs; `peak_flops` None measures
  the matmul peak now.
  """
  median = statistics.median(times)
  flops = train_flops_per_step(config)
  peak = peak_flops or matmul_peak_flops()
  tokens = config.train.batch_size * config.data.seq_len
  return StepTiming(
      step_median=median, step_times=times, tokens_per_s=tokens / median,
      lower_seconds=lower_seconds, compile_seconds=compile_seconds,
      flops_per_step=flops, peak_flops=peak, mfu=flops / median / peak,
      peak_host_memory_gb=peak_host_memory_gb())


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
