"""End to end: the launcher on a tiny config, resume, and learning.

The launcher runs in a subprocess exactly as a user runs it (4 forced CPU
devices, pmap), on the real offline corpus.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).parents[1]

TINY = [
    "--config.vocab_size=400", "--config.tokenizer.model_type=bpe",
    "--config.data.max_documents=300", "--config.data.seq_len=32",
    "--config.train.batch_size=8", "--config.train.num_steps=8",
    "--config.train.log_every=2", "--config.train.eval_every=4",
    "--config.train.checkpoint_every=4", "--config.train.eval_batches=2",
    "--config.optim.warmup_steps=2",
]


def launch(workdir, cache_dir, *extra, check=True):
  cmd = [sys.executable, str(ROOT / "experiments" / "pretrain.py"),
         "--config", f"{ROOT / 'configs' / 'bert.py'}:size=tiny,runlocal",
         "--workdir", str(workdir), f"--config.data.cache_dir={cache_dir}",
         *TINY, *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "XLA_FLAGS":
                             "--xla_force_host_platform_device_count=4"})
  if check and proc.returncode != 0:
    raise AssertionError(f"launcher failed:\n{proc.stderr[-4000:]}")
  return proc


def records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text()
          .splitlines()]


def train_losses(workdir):
  return {r["step"]: r["loss"] for r in records(workdir) if "loss" in r}


def test_launcher_trains_evaluates_checkpoints_and_resumes_exactly(
    tmp_path, cache_dir):
  work = tmp_path / "run"
  launch(work, cache_dir)
  assert sorted(train_losses(work)) == [2, 4, 6, 8]
  evals = [r for r in records(work) if "eval_loss" in r]
  assert [r["step"] for r in evals] == [4, 8]
  assert all(0 <= r["eval_mlm_accuracy"] <= 1 for r in evals)
  assert all(r["tokens_per_s"] > 0 for r in records(work) if "loss" in r)
  ckpts = work / "checkpoints"
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == [
      "4", "8"]
  assert (work / "tokenizer.model").exists()
  assert (ckpts / "4" / "data").is_dir()  # the loader's position
  full = train_losses(work)
  # The same metrics as TensorBoard events, read back by TensorBoard.
  from tensorboard.backend.event_processing import event_accumulator
  runs = {}
  for run in ("train", "eval"):
    acc = event_accumulator.EventAccumulator(str(work / "tensorboard" / run))
    acc.Reload()
    runs[run] = {t: [(e.step, e.value) for e in acc.Scalars(t)]
                 for t in acc.Tags()["scalars"]}
  np.testing.assert_allclose([v for _, v in runs["train"]["loss"]],
                             [full[s] for s in sorted(full)], rtol=1e-6)
  assert {"mfu", "lr", "grad_norm", "param_norm", "tokens_per_s",
          "mlm_accuracy"} <= set(runs["train"])
  assert [s for s, _ in runs["eval"]["loss"]] == [4, 8]
  assert "mlm_accuracy_at_mask" in runs["eval"]

  # Lose the last checkpoint, as after a crash: the rerun resumes at step 4
  # and reproduces steps 5..8 exactly (same data, same masks, same state).
  shutil.rmtree(ckpts / "8")
  proc = launch(work, cache_dir)
  assert "Resumed from the checkpoint of step 4" in proc.stderr
  assert train_losses(work) == full
  assert [r["step"] for r in records(work) if "eval_loss" in r] == [4, 8]

  # A finished run only re-evaluates, and records nothing twice.
  before = (work / "metrics.jsonl").read_text()
  proc = launch(work, cache_dir)
  assert "is complete (step 8)" in proc.stderr
  assert (work / "metrics.jsonl").read_text() == before
  # The log opens with what runs where, ends with where the results are,
  # and the config as run is in the workdir, readable.
  assert "Devices: 4 x cpu (cpu), mimalloc allocator; jit over a mesh of " \
      "4 data devices" in proc.stderr
  assert "Resuming at step 8 of 8" in proc.stderr
  assert f"last checkpoint: {ckpts / '8'}" in proc.stderr
  assert "best held-out loss:" in proc.stderr
  assert json.loads((work / "config.json").read_text())["train"][
      "num_steps"] == 8
  assert "\x1b" not in proc.stderr and "\r" not in proc.stderr

  # Checkpoints of another vocabulary are refused in one line.
  (work / "tokenizer.model").write_bytes(b"another tokenizer")
  proc = launch(work, cache_dir, check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "differs from the tokenizer" in last


def test_prepare_data_then_pretrain_reuses_it(tmp_path, cache_dir):
  prepared = tmp_path / "prepared"
  cmd = [sys.executable, str(ROOT / "experiments" / "prepare_data.py"),
         "--config", f"{ROOT / 'configs' / 'bert.py'}:size=tiny,runlocal",
         f"--config.data.cache_dir={cache_dir}", f"--config.data.dir={prepared}",
         "--config.data.packing=pairs", *TINY]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert str(prepared) in proc.stdout and '"examples"' in proc.stdout
  proc = launch(tmp_path / "run", cache_dir, f"--config.data.dir={prepared}",
                "--config.data.packing=pairs", "--config.train.num_steps=2",
                "--config.train.checkpoint_every=2")
  assert "Preparing" not in proc.stderr
  assert sorted(train_losses(tmp_path / "run")) == [2]
  # The same directory with another config is refused, not reused.
  proc = launch(tmp_path / "run2", cache_dir, f"--config.data.dir={prepared}",
                check=False)
  assert proc.returncode == 2
  assert "holds data prepared with another config (packing: 'pairs' -> " \
      "'stream')" in proc.stderr.splitlines()[-1]


def test_in_process_jit_run_learns(tmp_path, cache_dir):
  # The library entry point, as a notebook would call it: jit over the
  # 4-device mesh with parameters sharded over 2 of them.
  from configs_loader import load_config
  from mlm_jax import train
  cfg = load_config("size=tiny,runlocal")
  cfg.data.cache_dir = str(cache_dir)
  cfg.vocab_size, cfg.tokenizer.model_type = 400, "bpe"
  cfg.data.max_documents, cfg.data.seq_len = 300, 32
  cfg.train.batch_size, cfg.train.num_steps = 16, 60
  cfg.train.log_every, cfg.train.eval_every = 10, 60
  cfg.train.checkpoint_every, cfg.train.eval_batches = 60, 4
  cfg.optim.lr, cfg.optim.warmup_steps = 5e-3, 5
  cfg.parallel.mode, cfg.parallel.fsdp = "jit", 2
  summary = train.train_and_evaluate(cfg, str(tmp_path / "jit"))
  losses = train_losses(tmp_path / "jit")
  # Reference points from the data: the uniform guess ln(V), where training
  # starts, and the entropy of the unigram distribution of maskable tokens,
  # which a model reaches by learning token frequencies alone.
  from mlm_jax.data import prepare
  train_split = prepare.prepare(cfg).source("train")
  tokens = np.stack([train_split[i]["tokens"] for i in range(len(train_split))])
  counts = np.bincount(tokens[tokens >= 5])
  p = counts[counts > 0] / counts.sum()
  uniform, unigram = np.log(400), float(-np.sum(p * np.log(p)))
  assert unigram < uniform - 0.3
  assert abs(losses[10] - uniform) < 0.5 * (uniform - unigram) + 0.3
  midpoint = (uniform + unigram) / 2
  assert losses[60] < midpoint, (losses, uniform, unigram)
  assert summary["eval_loss"] < midpoint
