"""Our fine-tuning step timed: sequence classification on the config's
encoder, as `experiments/finetune.py` trains it.

The step is the one fine-tuning runs (`finetune.run`): the `FineTune`
objective (encoder, BERT's pooler, dropout, a classifier of `NUM_LABELS`
classes, cross-entropy over the weighted examples) through the same
`step.train_step`, parallel wrapper and optimizer as pre-training. The
encoder is the config's model (its dropout included); the batch is
`synthetic.batch` of the config's shape plus a label and a weight per
example, so every position is work, as in pre-training's timing.
Useful FLOPs are the objective's: the encoder at every position, the
pooler and classifier once per example.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from mlm_jax import optim
from mlm_jax import step as step_lib
from mlm_jax import synthetic
from mlm_jax.bench import timing
from mlm_jax.finetune import objective as objective_lib

# Classes of the timed task: a GLUE pair task's (MRPC, QQP, RTE, ...).
NUM_LABELS = 2
# The name of the timed step in records and tables (`objective` field).
NAME = "finetune"


def task(config: ml_collections.ConfigDict) -> step_lib.Task:
  """The fine-tuning task of the config's encoder, optimizer and seed."""
  encoder = timing.build_objective(config).encoder_config
  return step_lib.Task(
      objective=objective_lib.FineTune(encoder, "classification",
                                       NUM_LABELS),
      tx=optim.make_optimizer(config.optim, config.train.num_steps),
      seed=config.seed, accum_steps=config.train.accum_steps)


def host_batch(config: ml_collections.ConfigDict,
               seed: int = 0) -> dict[str, np.ndarray]:
  """`synthetic.batch` plus [B] int32 `label` (uniform over the classes)
  and [B] float32 `weight` (1: no padding rows)."""
  batch = synthetic.batch(config, seed)
  rows = config.train.batch_size
  batch["label"] = np.random.default_rng(seed).integers(
      0, NUM_LABELS, rows).astype(np.int32)
  batch["weight"] = np.ones(rows, np.float32)
  return batch


def time_train_step(config: ml_collections.ConfigDict, *, steps: int = 10,
                    repeats: int = 5, peak_flops: float | None = None,
                    matmul_bound: bool = True) -> timing.StepTiming:
  """`timing.time_train_step` of the fine-tuning step of `config`."""
  return timing.time_train_step(
      config, steps=steps, repeats=repeats, peak_flops=peak_flops,
      matmul_bound=matmul_bound, task=task(config),
      host_batch=host_batch(config))
