"""A pre-training checkpoint's held-out metrics, on a split of the run's own
data or on another corpus tokenized with the run's tokenizer.

  model = pretrained.load("/tmp/mlm_smoke", "best")
  data = evaluation.run_data(model)                 # the run's prepared data
  evaluation.evaluate(model, data.source("eval"))   # {'loss': ..., ...}

Masks come from the run seed's evaluation stream and each example's index,
as `train.evaluate` draws them: the same checkpoint on the same data gives
the same figures in every evaluation, and on the run's eval split (over as
many batches of the run's batch size) the `eval_*` figures that
metrics.jsonl logged at that step.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import optax

from mlm_jax import config as config_lib
from mlm_jax import metrics as metrics_lib
from mlm_jax import pretrained
from mlm_jax import step as step_lib
from mlm_jax import tokenizer as tok
from mlm_jax.data import loader
from mlm_jax.data import prepare
from mlm_jax.data import sources

SPLITS = ("eval", "train")
# The loss term whose exponential is reported as a perplexity, per family
# of objectives: MLM (mlm, nsp, sop), ELECTRA's generator, the LMs.
PERPLEXITY_OF = ("mlm_loss", "generator_loss", "lm_loss")
# The `config.data` fields that name another corpus (see `corpus_data`).
CORPUS_FIELDS = ("source", "files", "files_format", "tfds_name", "tfds_split",
                 "tfds_data_dir", "text_feature", "max_documents")


class Concatenated:
  """Random access to several example sources, one after the other: all
  the examples of another corpus (its train and eval splits) as one."""

  def __init__(self, parts: Sequence[Any]):
    self._parts = list(parts)
    self._ends = np.cumsum([len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int):
    part = int(np.searchsorted(self._ends, index, side="right"))
    start = int(self._ends[part - 1]) if part else 0
    return self._parts[part][index - start]


def _config(model: pretrained.Pretrained,
            cache_dir: str | None) -> ml_collections.ConfigDict:
  """A copy of the run's config, with `cache_dir` when one is given."""
  config = ml_collections.ConfigDict(model.config.to_dict())
  if cache_dir:
    config.data.cache_dir = str(cache_dir)
  return config


def _checked(data: prepare.PreparedData,
             model: pretrained.Pretrained) -> prepare.PreparedData:
  if data.tokenizer.fingerprint != model.tokenizer.fingerprint:
    raise pretrained.PretrainedError(
        f"the prepared data in {data.directory} was tokenized with another "
        f"tokenizer than {model.tokenizer.path} (the corpus or the Python "
        "environment changed since the run); evaluate on the same machine "
        "and environment as the run, or evaluate on another corpus, which "
        "is tokenized with the run's tokenizer.")
  return data


def run_data(model: pretrained.Pretrained,
             cache_dir: str | None = None) -> prepare.PreparedData:
  """The run's own prepared data (prepared anew if it left the cache)."""
  config = _config(model, cache_dir)
  if config.tokenizer.path:  # the run was given one: the workdir keeps it
    config.tokenizer.path = str(model.tokenizer.path)
  return _checked(prepare.prepare(config), model)


def corpus_config(model: pretrained.Pretrained, corpus: Mapping[str, Any],
                  cache_dir: str | None = None) -> ml_collections.ConfigDict:
  """The run's config reading another corpus: `corpus` holds `config.data`
  fields (CORPUS_FIELDS; `source` required), tokenized with the run's
  tokenizer, packed as the run packed (seq_len, packing)."""
  unknown = sorted(set(corpus) - set(CORPUS_FIELDS))
  if unknown or not corpus.get("source"):
    raise config_lib.ConfigError(
        f"another corpus needs 'source' and takes only {CORPUS_FIELDS}; got "
        f"{dict(corpus)}.")
  config = _config(model, cache_dir)
  config.data.dir = ""  # the run's own data.dir holds the run's data
  config.data.max_documents = 0
  config.data.update(dict(corpus))
  config.tokenizer.path = str(model.tokenizer.path)
  sources.describe(config.data)  # a one-line error for a bad source
  return config


def corpus_data(model: pretrained.Pretrained, corpus: Mapping[str, Any],
                cache_dir: str | None = None) -> prepare.PreparedData:
  """Another corpus prepared (once, cached) with the run's tokenizer."""
  config = corpus_config(model, corpus, cache_dir)
  try:
    data = prepare.prepare(config)
  except config_lib.ConfigError:
    raise
  except ValueError as e:  # unreadable input, unknown tfds dataset, no text
    raise config_lib.ConfigError(
        f"the corpus {sources.describe(config.data)} cannot be used: {e}"
    ) from None
  return _checked(data, model)


def examples_of(data: prepare.PreparedData, splits: Sequence[str]):
  """Random access to the examples of `splits`, one after the other."""
  parts = [data.source(split) for split in splits]
  if not sum(len(p) for p in parts):
    raise config_lib.ConfigError(
        f"{' and '.join(splits)} of {data.directory} hold no examples; give "
        "a larger corpus, or another split.")
  return parts[0] if len(parts) == 1 else Concatenated(parts)


def _eval_fn(objective, seed: int):
  """`step.eval_step` under jit on one device (the optimizer is unused)."""
  task = step_lib.Task(objective=objective, tx=optax.identity(), seed=seed)
  return jax.jit(functools.partial(step_lib.eval_step, task=task))


def evaluate(model: pretrained.Pretrained, examples, *, batch_size: int = 0,
             max_batches: int = 0) -> dict[str, float]:
  """The objective's metrics on `examples`, with fixed masks, on one device.

  Args:
    model: a loaded checkpoint.
    examples: random access to examples (`PreparedData.source(split)`, or
      `examples_of`); the i-th example's masks depend on i and the run seed.
    batch_size: examples per batch (0: the run's `train.batch_size`, so
      that `max_batches` means what `train.eval_batches` means). MLM-style
      masks depend on the example's index alone; NSP pairs negatives
      within a batch, so its figures also depend on the batch size.
    max_batches: evaluate the first this many batches (0: all).
  Returns:
    `loss` and the objective's other metrics (as logged, without `eval_`),
    `<term>_perplexity` = exp(<term>) for the first of PERPLEXITY_OF the
    objective has, `examples` (evaluated), `predicted_tokens` (the count
    of that loss term) and `tokens` (non-padding input tokens).
  """
  batch_size = batch_size or model.config.train.batch_size
  fn = _eval_fn(model.objective, model.config.seed)
  outputs, examples_seen, tokens = [], 0, 0
  for batch in loader.eval_batches(examples, global_batch=batch_size,
                                   max_batches=max_batches):
    real = batch["tokens"] != tok.PAD_ID
    examples_seen += int(real.any(axis=1).sum())
    tokens += int(real.sum())
    outputs.append(fn(model.params, batch))
  sums = metrics_lib.sum_metrics(jax.device_get(outputs))
  out = metrics_lib.summarize(sums, model.objective.loss_weights)
  term = next((t for t in PERPLEXITY_OF if t in sums), None)
  if term is not None:
    loss, count = sums[term]
    out[term.replace("_loss", "_perplexity")] = (
        math.exp(loss / count) if count else float("nan"))
    out["predicted_tokens"] = int(count)
  out["examples"], out["tokens"] = examples_seen, tokens
  return out


def default_output(workdir: str, step: int, data_name: str,
                   max_batches: int = 0) -> pathlib.Path:
  """<workdir>/evaluation/step<step>-<data>[-<n>batches].json"""
  batches = f"-{max_batches}batches" if max_batches else ""
  return (pathlib.Path(workdir).expanduser() / "evaluation"
          / f"step{step}-{data_name}{batches}.json")


def evaluate_checkpoint(workdir: str, which: str | int = "latest", *,
                        split: str = "eval",
                        corpus: Mapping[str, Any] | None = None,
                        cache_dir: str | None = None,
                        max_batches: int = 0) -> dict[str, Any]:
  """Evaluates checkpoint `which` of `workdir` on a split of the run's data
  or, given `corpus` (`config.data` fields), on all of another corpus's
  examples (both splits of its preparation: none of it was trained on).

  Returns a JSON-ready report: what was evaluated, and `metrics`.
  """
  if split not in SPLITS:
    raise config_lib.ConfigError(
        f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
  model = pretrained.load(workdir, which)
  if corpus:
    data = corpus_data(model, corpus, cache_dir)
    splits, name = ["train", "eval"], data.directory.name
  else:
    data = run_data(model, cache_dir)
    splits, name = [split], split
  metrics = evaluate(model, examples_of(data, splits),
                     max_batches=max_batches)
  return {
      "workdir": str(pathlib.Path(workdir).expanduser()),
      "checkpoint": str(model.path), "step": model.step,
      "objective": model.objective.name,
      "data": {"name": name, "source": data.manifest["spec"]["source"],
               "directory": str(data.directory), "splits": splits,
               "seq_len": data.seq_len},
      "batch_size": model.config.train.batch_size, "max_batches": max_batches,
      "mask_seed": model.config.seed,
      "metrics": metrics,
  }


def check_writable(path: str | pathlib.Path) -> None:
  """Raises ConfigError unless a file can be written at `path`."""
  path = pathlib.Path(path).expanduser()
  parent = next(p for p in path.absolute().parents if p.exists())
  if path.is_dir() or not (parent.is_dir() and os.access(parent, os.W_OK)):
    raise config_lib.ConfigError(
        f"cannot write the report to {path}: " + ("it is a directory" if path.is_dir() else
                               f"{parent} is not a "
                               "writable directory")
        + "; name a JSON file in a directory you can write to.")


def write_report(report: Mapping[str, Any], path: str | pathlib.Path
                 ) -> pathlib.Path:
  """Writes the report as JSON (whole or not at all); returns the path."""
  check_writable(path)
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps({**report, "output": str(path)}, indent=1)
                 + "\n")
  tmp.replace(path)
  return path
