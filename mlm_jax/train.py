"""The pre-training loop: wiring of data, step, metrics and checkpoints.

`train_and_evaluate(config, workdir)` is what `experiments/pretrain.py`
calls; a notebook or a test can call it the same way. Running it again on
the same workdir resumes from the latest checkpoint: parameters, optimizer
state and step, and (because the data order is a function of the step) the
exact data position.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import time
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging

from mlm_jax import checkpoint as ckpt_lib
from mlm_jax import config as config_lib
from mlm_jax import config_changes
from mlm_jax import console
from mlm_jax import early_stopping
from mlm_jax import event_writer
from mlm_jax import flops
from mlm_jax import interrupts
from mlm_jax import metrics as metrics_lib
from mlm_jax import objectives
from mlm_jax import optim
from mlm_jax import parallel
from mlm_jax import peaks
from mlm_jax import pretrained
from mlm_jax import step as step_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax import workdir as workdir_lib
from mlm_jax.data import loader
from mlm_jax.data import prepare


def build_task(config: ml_collections.ConfigDict,
               word_starts=None) -> step_lib.Task:
  """Objective, optimizer and seed of a run, from its config.

  `word_starts`: the tokenizer's word-start table, for whole-word masking.
  """
  return step_lib.Task(
      objective=objectives.build(config, word_starts),
      tx=optim.make_optimizer(config.optim, config.train.num_steps),
      seed=config.seed, accum_steps=config.train.accum_steps)


def _to_device(batches: Iterator, put, depth: int = 2) -> Iterator:
  """Keeps `depth` batches in flight to the devices ahead of the step."""
  queue = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > depth:
      yield queue.popleft()
  yield from queue


def _keep_tokenizer(data: prepare.PreparedData, workdir: pathlib.Path) -> None:
  """Copies the tokenizer next to the checkpoints; refuses a different one."""
  target = workdir / pretrained.TOKENIZER
  if target.exists():
    if target.read_bytes() != data.tokenizer.path.read_bytes():
      raise config_lib.ConfigError(
          f"{target} differs from the tokenizer of this config "
          f"({data.tokenizer.path}): the checkpoints in {workdir} were trained "
          "with another vocabulary (for the offline corpus: in another "
          "Python environment, whose installed packages' docstrings made "
          "another corpus). Use a new --workdir, or restore the config and "
          "environment of that run.")
    return
  shutil.copyfile(data.tokenizer.path, target)


def evaluate(par, state, data: prepare.PreparedData,
             config: ml_collections.ConfigDict) -> dict[str, float]:
  """The objective's metrics on the held-out split, with fixed masks."""
  outputs = [par.eval_step(state, par.put_batch(b)) for b in loader.eval_batches(
      data.source("eval"), global_batch=config.train.batch_size,
      max_batches=config.train.eval_batches,
      process_index=jax.process_index(), process_count=jax.process_count())]
  return metrics_lib.summarize(
      metrics_lib.sum_metrics(par.fetch(outputs)),
      par.task.objective.loss_weights, prefix="eval_")


def _evaluate_and_log(par, state, data, config, step, writer):
  values = evaluate(par, state, data, config)
  _log(step, config.train.num_steps, values)
  writer.write(step, values)
  return values


def _format(key: str, value: float) -> str:
  if key == "tokens_per_s" or key.endswith("predictions"):
    return f"{key} {value:,.0f}"
  return f"{key} {value:.4g}"


def _log(step: int, num_steps: int, values: dict[str, float]) -> None:
  logging.info("step %d/%d | %s", step, num_steps,
               " | ".join(_format(k, v) for k, v in values.items()))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Pre-trains (or resumes) the run of `config` in `workdir`.

  Returns the metrics of the last logging interval and evaluation.
  """
  config_lib.validate(config, num_devices=jax.device_count())
  # SIGTERM/SIGINT: only a single process acts on its own signals; several
  # hosts stop together through JAX's preemption sync (`_stop_requested`).
  with interrupts.Watch(enabled=jax.process_count() == 1) as watch, \
       workdir_lib.claim(workdir) as path:
    return _run(config, path, watch)


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path,
         watch: interrupts.Watch) -> dict[str, float]:
  given = pathlib.Path(config.tokenizer.path).expanduser()
  if config.tokenizer.path and given.is_file():  # check before preparing
    objectives.check_word_starts(
        config, tokenizer_lib.Tokenizer.load(given).word_starts(), str(given))
  data = prepare.prepare(config)
  config_lib.validate(config, num_devices=jax.device_count(),
                      tokenizer_vocab_size=data.tokenizer.vocab_size)
  word_starts = data.tokenizer.word_starts()
  objectives.check_word_starts(config, word_starts, str(data.tokenizer.path))
  _keep_tokenizer(data, workdir)
  par = parallel.make_parallel(config.parallel.mode,
                               build_task(config, word_starts),
                               config.data.seq_len, config.parallel.fsdp)
  t = config.train
  with ckpt_lib.Checkpointer(
      workdir / CHECKPOINTS, save_interval_steps=t.checkpoint_every,
      max_to_keep=t.max_to_keep, async_save=t.async_checkpoint
  ) as checkpointer, ckpt_lib.Checkpointer(
      workdir / BEST, save_interval_steps=1, max_to_keep=1,
      async_save=t.async_checkpoint) as best_checkpointer:
    _check_config_unchanged(checkpointer, config)
    restored = checkpointer.restore(par.abstract_state())
    progress = early_stopping.Progress()
    if restored is None:
      state, start, next_index = par.init_state(), 0, 0
    else:
      state, start = par.from_global(restored.state), restored.step
      progress = early_stopping.Progress.from_json(restored.progress)
      # Checkpoints without a data state predate it: position = step * batch.
      next_index = (restored.data or loader.state_after(
          0, start, t.batch_size))[loader.STATE_KEY]
      logging.info("Resumed from the checkpoint of step %d in %s", start,
                   checkpointer.directory)
      if start % t.log_every and start < t.num_steps:
        following = min(t.num_steps, start - start % t.log_every + t.log_every)
        logging.info("The first logged interval (to step %d) averages %d "
                     "steps, not log_every=%d.", following, following - start,
                     t.log_every)
      changes = config_changes.check_resume(
          restored.config, config.to_dict(), str(checkpointer.directory))
      if changes:
        logging.warning("The config differs from the checkpoint's: %s",
                        changes)
    write_config(config, workdir)  # The config accepted: as it now runs.
    speed = _Speed(par, config)
    for line in console.start_summary(
        devices=console.devices_line(),
        parallel=console.layout_line(config.parallel, par.num_devices),
        parameters=console.parameter_count(par.abstract_state().params),
        tokens_per_step=t.batch_size * config.data.seq_len,
        flops_per_step=speed.flops_per_step, peak=speed.describe_peak(),
        data=console.data_line(config.data, data.manifest),
        workdir=str(workdir), resumed_from=None if restored is None else start,
        num_steps=t.num_steps):
      logging.info("%s", line)
    writer = _Writers(workdir, resume_step=start)
    with writer:
      if start >= config.train.num_steps or progress.stopped_at is not None:
        if progress.stopped_at is not None:
          logging.info("%s", early_stopping.reason(
              progress, patience=t.early_stopping_patience,
              min_delta=t.early_stopping_min_delta))
        logging.info("The run in %s is complete (step %d).", workdir, start)
        summary = _evaluate_and_log(par, state, data, config, start, writer)
      else:
        run = _Run(config, par, data, checkpointer, best_checkpointer, writer,
                   speed, watch)
        watch.defer()  # From here a signal stops the loop at a saved step.
        summary = _train_loop(run, state, start, next_index, progress)
    checkpointer.wait()
    best_checkpointer.wait()
    last = checkpointer.latest_step()
    best_step = best_checkpointer.latest_step()
  for line in console.end_summary(
      workdir=str(workdir),
      last_checkpoint=(None if last is None else
                       str(checkpointer.directory / str(last))),
      best=metrics_lib.best_eval(workdir / "metrics.jsonl"),
      best_checkpoint=(None if best_step is None else
                       str(best_checkpointer.directory / str(best_step))),
      metrics_path=str(workdir / "metrics.jsonl"),
      events_dir=str(workdir / _EVENTS)):
    logging.info("%s", line)
  return summary


def _check_config_unchanged(checkpointer: ckpt_lib.Checkpointer,
                            config: ml_collections.ConfigDict) -> None:
  """Refuses (one line) a config whose changes the latest checkpoint cannot
  take, before any array is read (`config_changes`)."""
  latest = checkpointer.latest_step()
  if latest is None:
    return
  try:
    old = checkpointer.restore_config(latest)
  except Exception:  # pylint: disable=broad-except
    return  # A damaged step: `restore` reports it and falls back.
  config_changes.check_resume(old, config.to_dict(),
                              str(checkpointer.directory))


_EVENTS = "tensorboard"
# The workdir's checkpoint folders: the latest ones, and the best one (the
# lowest held-out loss, kept apart so that max_to_keep never deletes it).
CHECKPOINTS, BEST = pretrained.CHECKPOINTS, pretrained.BEST


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the training loop works with, fixed for the run."""
  config: ml_collections.ConfigDict
  par: Any
  data: prepare.PreparedData
  checkpointer: ckpt_lib.Checkpointer
  best_checkpointer: ckpt_lib.Checkpointer
  writer: "_Writers"
  speed: "_Speed"
  watch: interrupts.Watch


class _Writers:
  """metrics.jsonl and the TensorBoard events (`<workdir>/tensorboard`),
  written together: a record metrics.jsonl already has is skipped in both."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self._jsonl = metrics_lib.JsonlWriter(workdir / "metrics.jsonl",
                                          resume_step=resume_step)
    self._events = event_writer.EventWriter(
        workdir / _EVENTS, enabled=jax.process_index() == 0,
        resume_step=resume_step or None)

  def write(self, step: int, values: dict[str, float]) -> None:
    if self._jsonl.write(step, values):
      self._events.write_scalars(step, values)

  def __enter__(self) -> "_Writers":
    return self

  def __exit__(self, *exc) -> None:
    self._events.close()


class _Speed:
  """Useful FLOPs per step (the objective's matmuls, forward and backward)
  and the devices' peak, for the MFU of each logging interval."""

  def __init__(self, par, config: ml_collections.ConfigDict):
    self.flops_per_step = flops.train_flops_per_step(
        par.task.objective, config.train.batch_size, config.data.seq_len)
    self._devices = par.num_devices
    self.peak, self._source = peaks.peak_flops_per_device()

  def describe_peak(self) -> str:
    return (f"{self.peak / 1e12:,.3g} TFLOP/s per device "
            f"({self._source})")

  def mfu(self, steps_per_s: float) -> float:
    return peaks.mfu(self.flops_per_step, steps_per_s, self._devices,
                     self.peak)


def write_config(config: ml_collections.ConfigDict,
                 workdir: pathlib.Path) -> None:
  """The config as run, readable, as `config.json` in the workdir."""
  path = workdir / "config.json"
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
  os.replace(tmp, path)


def _train_loop(run: _Run, state, start: int, next_index: int,
                progress: early_stopping.Progress) -> dict[str, float]:
  """Steps from `start` to the end (or an early stop), logging, evaluating
  and checkpointing.

  `next_index` is the data stream position of step `start`'s batch.
  """
  config, par = run.config, run.par
  t, num_steps = config.train, config.train.num_steps
  schedule = optim.learning_rate_schedule(config.optim, num_steps)
  batches = _to_device(loader.train_iterator(
      run.data.source("train"), global_batch=t.batch_size, seed=config.seed,
      next_index=next_index, process_index=jax.process_index(),
      process_count=jax.process_count(), threads=config.data.loader_threads),
      par.put_batch)
  summary: dict[str, float] = {}
  meter = metrics_lib.IntervalMeter(par.fetch,
                                    par.task.objective.loss_weights)
  with console.Progress(start, num_steps) as bar:
    for step in range(start, num_steps):
      state, step_metrics = par.train_step(state, next(batches))
      meter.add(step_metrics)
      done = step + 1
      if step == start:  # Report compilation apart from the step time.
        seconds = meter.first_step_seconds()
        run.writer.write(done, {"first_step_seconds": seconds})
        logging.info("First step (with compilation) took %.1fs", seconds)
      if meter.has_pending and (done % t.log_every == 0 or done == num_steps):
        summary = _interval_summary(meter, schedule, done, num_steps)
        if "steps_per_s" in summary:
          summary["mfu"] = run.speed.mfu(summary["steps_per_s"])
        _log(done, num_steps, summary)
        run.writer.write(done, summary)
        bar.report(summary)
      bar.update(done)
      paused_at = time.monotonic()
      with meter.paused():
        run.checkpointer.check_saves()  # A failed save stops the run here.
        run.best_checkpointer.check_saves()
        signalled = _stop_requested(run, done)
        outcome = None
        if done % t.eval_every == 0 or done == num_steps:
          values = _evaluate_and_log(par, state, run.data, config, done,
                                     run.writer)
          summary.update(values)
          outcome = early_stopping.update(
              progress, done, values["eval_loss"],
              patience=t.early_stopping_patience,
              min_delta=t.early_stopping_min_delta)
          progress = outcome.progress
        saved = dict(config=config.to_dict(), progress=progress.to_json(),
                     data=loader.state_after(next_index, done - start,
                                             t.batch_size))
        if outcome is not None and outcome.is_best:
          _save_best(run, state, done, progress, saved)
        stop = outcome is not None and outcome.stop
        if (run.checkpointer.should_save(done) or done == num_steps or stop
            or signalled):
          run.checkpointer.save(done, par.to_global(state), force=True,
                                **saved)
        if signalled and done < num_steps:
          _stop_signalled(run, signalled, done)
      bar.pause_clock(time.monotonic() - paused_at)
      if stop:
        logging.info("%s", early_stopping.reason(
            progress, patience=t.early_stopping_patience,
            min_delta=t.early_stopping_min_delta))
        break
  return summary


def _stop_requested(run: _Run, step: int) -> int | None:
  """The signal to stop at `step` for: SIGINT/SIGTERM received, or JAX's
  preemption sync point (every host reaches it at the same step)."""
  if run.watch.requested:
    return run.watch.requested
  if run.checkpointer.reached_preemption(step):
    run.watch.preempted = True
    return signal.SIGTERM
  return None


def _stop_signalled(run: _Run, signum: int, step: int) -> None:
  """Waits for the checkpoint of `step` to be written; raises Interrupted."""
  run.checkpointer.wait()
  run.best_checkpointer.wait()
  why = ("JAX's preemption notice" if run.watch.preempted
         else interrupts.name(signum))
  raise interrupts.Interrupted(signum, (
      f"Stopped by {why} at step {step} of {run.config.train.num_steps}: "
      f"saved {run.checkpointer.directory / str(step)}; run the same command "
      "to resume from it."))


def _save_best(run: _Run, state, step: int,
               progress: early_stopping.Progress, saved: dict) -> None:
  """Keeps `state` as the best checkpoint and says so in the log and in
  metrics.jsonl (`best_step`)."""
  run.best_checkpointer.save(step, run.par.to_global(state), force=True,
                             **saved)
  run.writer.write(step, {"best_step": step})
  logging.info("Best held-out loss so far (%.4g) at step %d: kept in %s",
               progress.best_loss, step,
               run.best_checkpointer.directory / str(step))


def _interval_summary(meter, schedule, done: int,
                      num_steps: int) -> dict[str, float]:
  """The logging interval's metrics, learning rate and ETA; stops the run
  on a non-finite value (before any checkpoint of that state)."""
  summary = meter.report()
  if not metrics_lib.is_finite(summary):
    raise FloatingPointError(
        f"Non-finite training metrics at step {done}: {summary}. No "
        "checkpoint was written from this state; lower optim.lr or raise "
        "optim.warmup_steps and resume from the last checkpoint.")
  summary["lr"] = float(schedule(done - 1))
  if "steps_per_s" in summary:
    summary["eta_minutes"] = (num_steps - done) / summary["steps_per_s"] / 60
  return summary
