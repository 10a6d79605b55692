"""Fine-tuning end to end: the offline task over seeds, each task kind from
local files, and every bad input as one line with nothing written."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs_loader import load_config
from configs_loader import override
from mlm_jax.errors import ConfigError
from mlm_jax.finetune import run
from test_train import ROOT

# Runs of one task share programs (prediction for every seed; the same
# seed again with early stopping): load them instead of compiling again.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def _config(pretrained_run, cache_dir, arg="runlocal", **task):
  cfg = load_config(arg, name="finetune")
  cfg.init.checkpoint = str(pretrained_run)
  cfg.task.cache_dir = str(cache_dir)
  cfg.task.max_len = 64
  cfg.train.seeds, cfg.train.num_epochs = "0", 1
  cfg.train.batch_size, cfg.train.log_every = 16, 1000
  for key, value in task.items():
    cfg.task[key] = value
  return cfg


def test_offline_task_beats_chance(tmp_path, pretrained_run, cache_dir):
  cfg = _config(pretrained_run, cache_dir)
  cfg.train.seeds, cfg.train.batch_size = "0", 32
  cfg.train.num_epochs, cfg.task.max_train_examples = 3, 2000
  results = run.finetune(cfg, str(tmp_path / "ft"))
  assert set(results["seeds"]) == {0}
  for seed, r in results["seeds"].items():
    assert r["compiled_shapes"] <= cfg.task.num_buckets
    assert (tmp_path / "ft" / f"seed_{seed}" / "best" / str(
        r["best_step"])).is_dir()
  # 8 balanced classes: chance is 1/8; 4 standard errors of a chance-level
  # accuracy over the test split's examples above it.
  n = len([1 for _ in open(pathlib.Path(results["task"].format(
      split="test")))])
  chance = 1 / 8
  summary = results["summary"]
  assert summary["test_accuracy"]["median"] > chance + 4 * np.sqrt(
      chance * (1 - chance) / n), (summary, n)
  assert summary["test_accuracy"]["values"] == [
      results["seeds"][0]["test_accuracy"]]
  saved = json.loads((tmp_path / "ft" / "results.json").read_text())
  assert saved["summary"]["dev_accuracy"]["median"] == pytest.approx(
      summary["dev_accuracy"]["median"])


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_each_kind_from_local_files(tmp_path, pretrained_run, cache_dir):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "array", "value", "file"]
  pos, neg = ["good", "fine", "great"], ["bad", "poor", "awful"]

  def sentence(cue):
    return " ".join(list(rng.choice(words, 5)) + [cue])

  # Pairs: label 1 when both sentences carry a positive cue.
  rows = ["a,b,label"]
  for _ in range(200):
    x, y = rng.integers(2, size=2)
    rows.append(f"{sentence(rng.choice(pos if x else neg))},"
                f"{sentence(rng.choice(pos if y else neg))},{int(x and y)}")
  for split in ("train", "dev"):
    _write(tmp_path / f"pairs_{split}.csv", "\n".join(rows) + "\n")
  # One batch length for pairs and regression: each seed compiles its step
  # once, not once per bucket (bucketing: the offline task and tagging).
  cfg = _config(pretrained_run, cache_dir, source="csv",
                path_or_name=str(tmp_path / "pairs_{split}.csv"),
                text_columns="a,b", kind="classification", num_buckets=1)
  cfg.train.num_epochs = 3
  r = run.finetune(cfg, str(tmp_path / "pairs"))["seeds"][0]
  assert {"dev_accuracy", "dev_f1"} <= set(r)

  # Regression from JSON Lines: the count of positive words.
  lines = []
  for _ in range(200):
    k = int(rng.integers(4))
    text = " ".join(list(rng.choice(words, 4)) + list(rng.choice(pos, k)))
    lines.append(json.dumps({"text": text, "score": float(k)}))
  _write(tmp_path / "reg_train.jsonl", "\n".join(lines) + "\n")
  _write(tmp_path / "reg_dev.jsonl", "\n".join(lines[:60]) + "\n")
  cfg = _config(pretrained_run, cache_dir, source="jsonl",
                path_or_name=str(tmp_path / "reg_{split}.jsonl"),
                label_column="score", kind="regression", num_buckets=1)
  cfg.train.num_epochs, cfg.train.scores = 3, "pearson,spearman"
  cfg.train.seeds = "0,1"
  results = run.finetune(cfg, str(tmp_path / "reg"))
  for r in results["seeds"].values():
    assert r["dev_pearson"] > 0.3, r
  # Seeds differ (head, order, dropout), and the summary is their median.
  values = [results["seeds"][s]["dev_pearson"] for s in (0, 1)]
  assert values[0] != values[1]
  assert results["summary"]["dev_pearson"]["median"] == pytest.approx(
      sum(values) / 2)
  cfg.train.seeds = "0"
  # Early stopping on the dev score: no gain can beat min_delta, so the run
  # stops after `patience` evaluations past the first, at a known step.
  cfg.train.eval_every, cfg.train.early_stopping_patience = 5, 2
  cfg.train.early_stopping_min_delta, cfg.train.metric = 100.0, "spearman"
  r = run.finetune(cfg, str(tmp_path / "reg_stop"))["seeds"][0]
  assert (r["stopped_at"], r["steps"]) == (15, 15), r

  # Tagging from CoNLL: capitalised words are entities.
  blocks = []
  for _ in range(150):
    sent = []
    for w in rng.choice(words + ["Paris", "Rome", "Oslo"], 6):
      sent.append(f"{w} {'B-LOC' if w[0].isupper() else 'O'}")
    blocks.append("\n".join(sent))
  _write(tmp_path / "ner_train.conll", "\n\n".join(blocks) + "\n")
  _write(tmp_path / "ner_dev.conll", "\n\n".join(blocks[:40]) + "\n")
  cfg = _config(pretrained_run, cache_dir, source="",
                path_or_name=str(tmp_path / "ner_{split}.conll"), kind="")
  cfg.train.num_epochs = 3
  r = run.finetune(cfg, str(tmp_path / "ner"))["seeds"][0]
  assert r["dev_entity_f1"] > 0.5, r


def _launch(workdir, *flags):
  cmd = [sys.executable, str(ROOT / "experiments" / "finetune.py"),
         "--config", f"{ROOT / 'configs' / 'finetune.py'}:runlocal",
         "--workdir", str(workdir), "--config.train.seeds=0", *flags]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _in_process(workdir, *flags):
  """What `_launch` runs, called here: the error the launcher would print
  as its one line (it does so for ConfigError and FileNotFoundError)."""
  cfg = override(load_config("runlocal", name="finetune"),
                 ["--config.train.seeds=0", *flags])
  with pytest.raises((ConfigError, FileNotFoundError)) as raised:
    run.finetune(cfg, str(workdir))
  return str(raised.value)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, pretrained_run,
                                                  cache_dir):
  ok = f"--config.init.checkpoint={pretrained_run}"
  cache = f"--config.task.cache_dir={cache_dir}"
  train = _write(tmp_path / "train.csv", "text,label\na b,x\nc d,y\n")
  unseen = _write(tmp_path / "dev.csv", "text,label\na b,z\nc d,x\n")
  bad_conll = _write(tmp_path / "bad.conll", "Paris B-LOC\nlonely\n")
  empty = _write(tmp_path / "empty.csv", "text,label\n")
  no_tokenizer = tmp_path / "no_tokenizer"
  (no_tokenizer / "checkpoints").mkdir(parents=True)
  for p in (pretrained_run / "checkpoints").iterdir():
    os.symlink(p, no_tokenizer / "checkpoints" / p.name)
  files = lambda train_, dev: ["--config.task.source=csv",
                               "--config.task.kind=classification",
                               f"--config.task.train={train_}",
                               f"--config.task.dev={dev}", ok, cache]
  cases = {
      "does not exist": [f"--config.init.checkpoint={tmp_path / 'nope'}"],
      "has no tokenizer.model": [
          f"--config.init.checkpoint={no_tokenizer}",
          "--config.init.which=latest"],
      "no column 'lbl'": files(train, train) + [
          "--config.task.label_column=lbl"],
      "the training split never had": files(train, unseen),
      str(bad_conll): ["--config.task.source=conll",
                       f"--config.task.train={bad_conll}",
                       f"--config.task.dev={bad_conll}", ok, cache],
      "empty": files(train, empty),
  }
  # The launcher, as a user runs it, on one of them (3 s a launch) ...
  work = tmp_path / "work"
  proc = _launch(work, *cases["the training split never had"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert lines[-1].startswith("error: ") and (
      "the training split never had" in lines[-1]), lines[-3:]
  assert not work.exists()
  # ... and what it calls on every one: an error it prints as one line.
  for phrase, flags in cases.items():
    message = _in_process(work, *flags)
    assert phrase in message and "\n" not in message, (phrase, message)
    assert not work.exists(), phrase
