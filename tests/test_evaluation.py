"""experiments/evaluate.py and mlm_jax/evaluation.py on one tiny run: the
figures metrics.jsonl logged, reproduced; repeatable; another corpus read
with the run's tokenizer; bad input in one line.
"""
import json
import math
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train import ROOT, records

from mlm_jax import evaluation
from mlm_jax import objectives
from mlm_jax import pretrained


@pytest.fixture(scope="module")
def run(tmp_path_factory, pretrained_run):
  """A copy of the session's tiny pre-training run (4 devices, checkpoints
  and evaluations at two steps), which the launcher writes its reports
  into; launching a run of its own here cost ~12 s."""
  work = tmp_path_factory.mktemp("evaluation") / "run"
  shutil.copytree(pretrained_run, work)
  return work


def steps(run):
  """The run's checkpoint steps, each with its logged evaluation."""
  return sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                if p.name.isdigit())


def eval_batches(run):
  return json.loads((run / "config.json").read_text())["train"][
      "eval_batches"]


def evaluate(*args):
  return subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "evaluate.py"),
       *map(str, args)], capture_output=True, text=True, timeout=600)


def logged_eval(run, step):
  return next(r for r in records(run) if r["step"] == step
              and "eval_loss" in r)


def test_launcher_reproduces_the_logged_evaluation(run):
  first, batches = steps(run)[0], eval_batches(run)
  proc = evaluate("--workdir", run, "--checkpoint", first,
                  "--max_batches", batches)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  logged, m = logged_eval(run, first), report["metrics"]
  # Same masks (the eval stream, by example index) and batches as the
  # run's own evaluation at its first checkpoint; only the summation order
  # differs (one device here, four in the run).
  np.testing.assert_allclose(m["loss"], logged["eval_loss"], rtol=1e-6)
  np.testing.assert_allclose(m["mlm_accuracy"], logged["eval_mlm_accuracy"],
                             rtol=1e-6)
  np.testing.assert_allclose(m["mlm_accuracy_at_mask"],
                             logged["eval_mlm_accuracy_at_mask"], rtol=1e-6)
  assert m["mlm_perplexity"] == pytest.approx(math.exp(m["loss"]))
  assert report["step"] == first and report["data"]["splits"] == ["eval"]
  assert 0 < m["examples"] <= batches * report["batch_size"]
  assert 0 < m["predicted_tokens"] < m["tokens"]
  written = run / "evaluation" / f"step{first}-eval-{batches}batches.json"
  assert report["output"] == str(written)
  assert json.loads(written.read_text()) == report


def test_same_checkpoint_and_data_give_the_same_figures(run):
  model = pretrained.load(run, "latest")
  data = evaluation.run_data(model)
  examples = data.source("eval")
  first = evaluation.evaluate(model, examples, max_batches=eval_batches(run))
  assert evaluation.evaluate(model, examples,
                             max_batches=eval_batches(run)) == first
  logged = logged_eval(run, steps(run)[-1])
  np.testing.assert_allclose(first["loss"], logged["eval_loss"], rtol=1e-6)
  # A mask depends on the example's index, not on its batch: the whole
  # split in batches of 3 gives the figures of the run's batches, up to the
  # order of the sums.
  whole = evaluation.evaluate(model, examples)
  thirds = evaluation.evaluate(model, examples, batch_size=3)
  assert whole["examples"] == thirds["examples"] == len(examples)
  for key in ("loss", "mlm_accuracy", "predicted_tokens", "tokens"):
    assert thirds[key] == pytest.approx(whole[key], rel=1e-6)


def test_perplexity_names_the_objective_term(run):
  # ELECTRA (random weights of this run's shapes): its generator is the MLM.
  model = pretrained.load(run, "latest")
  config = model.config.copy_and_resolve_references()
  config.objective.name = "electra"
  objective = objectives.build(config, model.tokenizer.word_starts())
  electra = pretrained.Pretrained(
      config=config, objective=objective, tokenizer=model.tokenizer,
      # Jitted: eagerly, each of its ops compiled apart (~6 s).
      params=jax.jit(objective.init, static_argnums=1)(
          jax.random.key(0), config.data.seq_len),
      step=0, path=model.path)
  out = evaluation.evaluate(electra, evaluation.run_data(model).source("eval"),
                            max_batches=1)
  assert "mlm_perplexity" not in out
  assert out["generator_perplexity"] == pytest.approx(
      math.exp(out["generator_loss"]))
  assert out["predicted_tokens"] > 0


def test_another_corpus_with_the_runs_tokenizer(run, tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  # A few documents of docstring-like prose, in several files.
  words = ("return the array of values along the given axis and keep the "
           "shape of the input unless the output is given").split()
  rng = np.random.default_rng(0)
  for f in range(3):
    (corpus / f"part{f}.txt").write_text("\n\n".join(
        " ".join(rng.choice(words, 40)).capitalize() + "."
        for _ in range(6)))
  proc = evaluate("--workdir", run, "--data_source", "files",
                  "--data_files", corpus / "*.txt",
                  "--cache_dir", tmp_path / "cache",
                  "--output", tmp_path / "out.json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  prepared = (tmp_path / "cache" / "prepared" / report["data"]["name"])
  manifest = json.loads((prepared / "manifest.json").read_text())
  # Tokenized with the run's tokenizer, and every example evaluated.
  assert (prepared / "tokenizer.model").read_bytes() == (
      run / "tokenizer.model").read_bytes()
  assert report["data"]["splits"] == ["train", "eval"]
  assert report["metrics"]["examples"] == sum(manifest["examples"].values())
  assert manifest["documents"] == 18
  assert json.loads((tmp_path / "out.json").read_text()) == report
  assert report["metrics"]["loss"] > 0


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
  before = sorted(p for p in run.rglob("*"))
  (tmp_path / "empty").mkdir()
  cases = {
      (): "--workdir is required",
      ("--workdir", tmp_path / "nowhere"): "does not exist",
      ("--workdir", run, "--checkpoint", 5): "no checkpoint at step 5; it "
          "has steps " + ", ".join(map(str, steps(run))),
      ("--workdir", run, "--data_source", "files"): "needs --data_files",
      ("--workdir", run, "--data_files", "x.txt"): "add --data_source=files",
      ("--workdir", run, "--split", "train", "--data_source", "files",
       "--data_files", "x.txt"): "drop one of them",
      ("--workdir", run, "--data_source", "files", "--data_files",
       tmp_path / "empty" / "*.txt"): "matches no files",
      ("--workdir", run, "--output", tmp_path): "is a directory",
  }
  for args, message in cases.items():
    proc = evaluate(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], (message, lines[0])
  assert sorted(p for p in run.rglob("*")) == before
