"""Fine-tuning: a pre-trained encoder (or random weights of its config) on a
downstream task, for several seeds, reported with the median and spread.

`finetune(config, workdir)` is what `experiments/finetune.py` calls. Per
seed: the task's head on the checkpoint's encoder, trained with the same
step, parallel wrapper and optimizer as pre-training; the dev metric after
every epoch (or every `train.eval_every` steps), the best dev state kept in
`<workdir>/seed_<s>/best`, optional early stopping on it; then the test
split scored with the best state. `<workdir>/results.json` holds every
seed's dev and test scores and their median, min and max.

Sequences are batched into a few fixed lengths (`features.bucket_lengths`),
so the step compiles once per length at most; the log says how many.
Everything that can be wrong with the input (checkpoint, data, labels) is
checked before anything is written to the workdir.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mlm_jax import checkpoint as ckpt_lib
from mlm_jax import early_stopping
from mlm_jax import interrupts
from mlm_jax import metrics as metrics_lib
from mlm_jax import optim
from mlm_jax import parallel
from mlm_jax import pretrained as pretrained_lib
from mlm_jax import step as step_lib
from mlm_jax import train as train_lib
from mlm_jax import workdir as workdir_lib
from mlm_jax.errors import ConfigError
from mlm_jax.finetune import examples as examples_lib
from mlm_jax.finetune import features
from mlm_jax.finetune import objective as objective_lib
from mlm_jax.finetune import offline_task
from mlm_jax.finetune import scores
from mlm_jax.finetune import tasks

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A task's examples, labels and encoded splits (checked)."""
  spec: Any
  labels: tuple[str, ...]
  examples: dict[str, list]
  encoded: dict[str, Any]
  buckets: tuple[int, ...]


def seeds_of(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in str(text).split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds:
    raise ConfigError(f"config.train.seeds: {text!r} is not a list of "
                      "integers; use e.g. '0,1,2'.")
  return seeds


def task_spec(task: ml_collections.ConfigDict) -> tasks.TaskSpec:
  """The spec of `config.task`; source 'offline' builds (or reuses) the
  offline task (`offline_task.py`) and reads its JSON Lines files."""
  if task.source != "offline":
    return tasks.TaskSpec.from_config(task)
  paths = offline_task.offline_task(
      pathlib.Path(task.cache_dir).expanduser(),
      num_classes=task.offline_classes)
  block = ml_collections.ConfigDict(tasks.task_config().to_dict())
  block.path_or_name = str(paths["train"].parent / "{split}.jsonl")
  block.source, block.kind, block.test = "jsonl", "classification", "test"
  block.text_columns = offline_task.TEXT_FIELD
  block.label_column = offline_task.LABEL_FIELD
  return tasks.TaskSpec.from_config(block)


def load_task(config: ml_collections.ConfigDict, tokenizer) -> TaskData:
  """Reads and encodes every split; one-line errors for bad input."""
  spec = task_spec(config.task)
  found = {name: examples_lib.read_split(spec, name) for name in SPLITS
           if spec.splits.get(name)}
  if config.task.max_train_examples > 0 and "train" in found:
    found["train"] = found["train"][:config.task.max_train_examples]
  for name in ("train", "dev"):
    if name not in found:
      raise ConfigError(f"config.task.{name}: the task has no {name} split; "
                        f"name its file or tfds split.")
  labels = examples_lib.label_vocabulary(found["train"], spec.kind)
  for name in ("dev", "test"):
    if name in found:
      examples_lib.check_labels(labels, found[name], name)
  max_len = config.task.max_len
  encoded = {name: features.encode(ex, tokenizer, kind=spec.kind,
                                   labels=labels, max_len=max_len)
             for name, ex in found.items()}
  return TaskData(spec, labels, found, encoded,
                  tuple(features.bucket_lengths(max_len,
                                                config.task.num_buckets)))


def finetune(config: ml_collections.ConfigDict,
             workdir: str) -> dict[str, Any]:
  """Fine-tunes for every seed of `config.train.seeds`; returns results."""
  seeds = seeds_of(config.train.seeds)
  _validate(config)
  model = pretrained_lib.load(config.init.checkpoint, config.init.which)
  task = load_task(config, model.tokenizer)
  _check_fits(config, model)
  # A signal stops fine-tuning at once (`Interrupted`, one line): its seeds
  # are minutes long and start afresh.
  with interrupts.Watch(), workdir_lib.claim(workdir, "seed_*") as path:
    return _finetune(config, path, model, task, seeds)


def _finetune(config: ml_collections.ConfigDict, workdir: pathlib.Path,
              model, task: TaskData, seeds: list[int]) -> dict[str, Any]:
  train_lib.write_config(config, workdir)
  init = ("random weights of the checkpoint's config"
          if config.init.random_weights else "the pre-trained encoder")
  logging.info("Fine-tuning %s (step %d of %s) on %s: %s; %s", init,
               model.step, config.init.checkpoint, task.spec.path_or_name,
               task.spec.kind, ", ".join(
                   f"{n} {len(e):,}" for n, e in task.examples.items()))
  per_seed = {seed: _one_seed(config, model, task, seed,
                              workdir / f"seed_{seed}") for seed in seeds}
  results = {"task": task.spec.path_or_name, "kind": task.spec.kind,
             "init": "random" if config.init.random_weights else "pretrained",
             "checkpoint": str(model.path), "seeds": per_seed,
             "summary": summarize(per_seed)}
  path = workdir / "results.json"
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(results, indent=1) + "\n")
  tmp.replace(path)
  for name, s in results["summary"].items():
    logging.info("%s: median %.4f (min %.4f, max %.4f) over %d seeds", name,
                 s["median"], s["min"], s["max"], len(s["values"]))
  logging.info("Results: %s", path)
  return results


def summarize(per_seed: dict[int, dict]) -> dict[str, dict]:
  """Median, min and max over seeds of every dev_* and test_* score."""
  names = sorted({k for r in per_seed.values() for k in r
                  if k.startswith(("dev_", "test_"))})
  out = {}
  for name in names:
    values = [r[name] for r in per_seed.values() if name in r]
    out[name] = {"median": statistics.median(values), "min": min(values),
                 "max": max(values), "values": values}
  return out


def _validate(config) -> None:
  t = config.train
  for field in ("batch_size", "num_epochs"):
    if t[field] < 1:
      raise ConfigError(f"config.train.{field}: {t[field]} is not positive; "
                        "use at least 1.")
  if t.batch_size % jax.device_count():
    raise ConfigError(f"config.train.batch_size: {t.batch_size} is not "
                      f"divisible by the {jax.device_count()} devices; use a "
                      f"multiple of {jax.device_count()}.")
  if not config.init.checkpoint:
    raise ConfigError(
        "config.init.checkpoint: no pre-training workdir given; set "
        "--config.init.checkpoint=<workdir of experiments/pretrain.py> "
        "(with init.random_weights=True its config and tokenizer are used "
        "without its weights).")


def _check_fits(config, model) -> None:
  positions = model.config.model.max_positions
  if config.task.max_len > positions and (
      model.config.model.position_encoding == "learned"):
    raise ConfigError(
        f"config.task.max_len: {config.task.max_len} exceeds the "
        f"checkpoint's model.max_positions={positions}; use at most "
        f"{positions}.")


def _objective(config, model, task: TaskData) -> objective_lib.FineTune:
  encoder = dataclasses.replace(
      model.objective.encoder_config, dropout=config.model.dropout,
      attention_dropout=config.model.attention_dropout)
  outputs = 1 if task.spec.kind == "regression" else len(task.labels)
  return objective_lib.FineTune(encoder, task.spec.kind, outputs)


def _one_seed(config, model, task: TaskData, seed: int,
              seed_dir: pathlib.Path) -> dict[str, Any]:
  t = config.train
  objective = _objective(config, model, task)
  steps_per_epoch = features.num_batches(
      task.encoded["train"], batch_size=t.batch_size, buckets=task.buckets)
  num_steps = t.num_epochs * steps_per_epoch
  optim_cfg = ml_collections.ConfigDict(config.optim.to_dict())
  optim_cfg.warmup_steps = int(config.optim.warmup_ratio * num_steps)
  del optim_cfg.warmup_ratio
  tx = optim.make_optimizer(optim_cfg, num_steps)
  step_task = step_lib.Task(objective=objective, tx=tx, seed=seed)
  par = parallel.make_parallel(config.parallel.mode, step_task,
                               config.task.max_len, config.parallel.fsdp)
  params = objective.init(jax.random.key(seed), config.task.max_len)
  if not config.init.random_weights:
    # Host copies: the step donates its state, which must not delete the
    # checkpoint's arrays that the next seed starts from again.
    params = objective_lib.with_pretrained(params,
                                           jax.device_get(model.params))
  state = par.from_global(step_lib.TrainState(
      step=np.zeros((), np.int32), params=params, opt_state=tx.init(params)))
  seed_dir.mkdir(parents=True, exist_ok=True)
  writer = metrics_lib.JsonlWriter(seed_dir / "metrics.jsonl")
  metric = config.train.metric or _default_metric(task.spec.kind)
  eval_every = t.eval_every or steps_per_epoch
  progress, shapes, done = early_stopping.Progress(), set(), 0
  serialize = (jax.devices()[0].platform == "cpu"
               and par.num_devices > 1)
  meter = metrics_lib.IntervalMeter(par.fetch, objective.loss_weights)
  with ckpt_lib.Checkpointer(seed_dir / "best", save_interval_steps=1,
                             max_to_keep=1, async_save=False) as best:
    for epoch in range(t.num_epochs):
      for batch in _train_batches(config, task, seed, epoch):
        shapes.add(batch["tokens"].shape)
        state, m = par.train_step(state, par.put_batch(batch))
        if serialize:
          # On forced host devices, programs of different bucket lengths in
          # flight together deadlocked XLA:CPU's collective rendezvous
          # (measured: 1 run in 2 within 500 steps); one at a time.
          jax.block_until_ready(state)
        meter.add(m)
        done += 1
        if done % t.log_every == 0 or done == num_steps:
          values = meter.report()
          writer.write(done, values)
          logging.info("seed %d step %d/%d | %s", seed, done, num_steps,
                       " | ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if done % eval_every == 0 or done == num_steps:
          with meter.paused():
            dev = evaluate(par, state, task, "dev", config)
            writer.write(done, dev)
            logging.info("seed %d step %d dev | %s", seed, done, " | ".join(
                f"{k} {v:.4f}" for k, v in dev.items()))
            outcome = early_stopping.update(
                progress, done, dev[f"dev_{metric}"],
                patience=t.early_stopping_patience,
                min_delta=t.early_stopping_min_delta,
                higher_is_better=True)
            progress = outcome.progress
            if outcome.is_best:
              best.save(done, par.to_global(state), config=config.to_dict(),
                        force=True)
          if outcome.stop:
            break
      else:
        continue
      logging.info("seed %d: %s", seed, early_stopping.reason(
          progress, patience=t.early_stopping_patience,
          min_delta=t.early_stopping_min_delta, metric=f"dev {metric}"))
      break
    best.wait()
    restored = best.restore(par.abstract_state(), step=progress.best_step)
  state = par.from_global(restored.state)
  logging.info("seed %d: %d steps, the step compiled for %d batch shapes "
               "(%s)", seed, done, len(shapes),
               ", ".join(f"{b}x{n}" for b, n in sorted(shapes)))
  out = {"best_step": progress.best_step, "steps": done,
         "stopped_at": progress.stopped_at, "compiled_shapes": len(shapes),
         **evaluate(par, state, task, "dev", config)}
  if "test" in task.encoded and task.encoded["test"].labelled.any():
    out.update(evaluate(par, state, task, "test", config))
  writer.write(done, {"final_" + k: v for k, v in out.items()
                      if isinstance(v, float)})
  return out


def _default_metric(kind: str) -> str:
  return {"classification": "accuracy", "regression": "pearson",
          "tagging": "entity_f1"}[kind]


def _train_batches(config, task: TaskData, seed: int, epoch: int):
  return features.batches(task.encoded["train"],
                          batch_size=config.train.batch_size,
                          buckets=task.buckets, shuffle=True, seed=seed,
                          epoch=epoch)


def predictions(par, state, task: TaskData, split: str, config) -> list:
  """Per example of `split`, in order: its predicted class index or value,
  or for tagging the predicted tag index of each word (None for a word
  cut off by max_len)."""
  encoded = task.encoded[split]
  out: list = [None] * len(encoded)
  for batch in features.batches(encoded, batch_size=config.train.batch_size,
                                buckets=task.buckets, shuffle=False):
    pred = np.asarray(par.predict(state, par.put_batch(batch)))
    for row, i in enumerate(batch["example_id"]):
      if i == features.PAD_EXAMPLE_ID:
        continue
      if encoded.kind == "tagging":
        out[i] = [int(pred[row, p]) if p >= 0 else None
                  for p in encoded.word_positions[i]]
      else:
        out[i] = pred[row].item()
  return out


def evaluate(par, state, task: TaskData, split: str,
             config) -> dict[str, float]:
  """The task's scores on the labelled examples of `split`, named
  `<split>_<score>`."""
  pred = predictions(par, state, task, split, config)
  encoded, kind = task.encoded[split], task.spec.kind
  keep = np.flatnonzero(encoded.labelled)
  if kind == "tagging":
    gold = [list(task.examples[split][i].tags) for i in keep]
    # A word cut off by max_len is predicted outside any entity.
    guess = [["O" if t is None else task.labels[t] for t in pred[i]]
             for i in keep]
  else:
    gold = encoded.labels[keep]
    guess = np.asarray([pred[i] for i in keep], gold.dtype)
  names = config.train.scores or _default_scores(kind, len(task.labels))
  values = scores.score(kind, guess, gold, names)
  return {f"{split}_{k}": float(v) for k, v in values.items()}


def _default_scores(kind: str, num_labels: int) -> list[str]:
  if kind == "regression":
    return ["pearson", "spearman"]
  if kind == "tagging":
    return ["entity_f1", "entity_precision", "entity_recall"]
  return ["accuracy", "f1"] if num_labels == 2 else ["accuracy", "macro_f1"]
