"""Best checkpoint and early stopping: the pure rule, and a run stopping
where an uninterrupted one would after a resume."""
import logging

import pytest

from configs_loader import load_config
from configs_loader import override
from mlm_jax import early_stopping as es
from test_train import TINY, records


def _run(losses, patience, min_delta=0.0):
  progress, outcomes = es.Progress(), []
  for i, loss in enumerate(losses):
    outcome = es.update(progress, (i + 1) * 10, loss, patience=patience,
                        min_delta=min_delta)
    progress = outcome.progress
    outcomes.append(outcome)
    if outcome.stop:
      break
  return progress, outcomes


def test_stops_after_patience_evaluations_without_progress():
  progress, outcomes = _run([5.0, 4.0, 4.5, 4.2, 4.1, 3.0], patience=3)
  assert [o.is_best for o in outcomes] == [True, True, False, False, False]
  assert progress.stopped_at == 50 and progress.best_step == 20
  assert progress.best_loss == 4.0 and progress.stale_evals == 3


def test_min_delta_counts_small_gains_as_stale_but_best_is_the_lowest():
  progress, outcomes = _run([5.0, 4.95, 4.9, 4.85], patience=3,
                            min_delta=0.1)
  assert all(o.is_best for o in outcomes)
  assert progress.stopped_at == 40 and progress.best_step == 40


def test_higher_is_better_for_scores():
  progress, outcomes = es.Progress(), []
  for i, score in enumerate([0.5, 0.7, 0.69, 0.75, 0.7, 0.7]):
    outcome = es.update(progress, i, score, patience=2, min_delta=0.0,
                        higher_is_better=True)
    progress = outcome.progress
    outcomes.append(outcome.is_best)
  assert outcomes == [True, True, False, True, False, False]
  assert progress.best_loss == 0.75 and progress.stopped_at == 5


def test_patience_zero_never_stops():
  progress, _ = _run([1.0] + [2.0] * 50, patience=0)
  assert progress.stopped_at is None and progress.stale_evals == 50


def test_progress_round_trips_through_json_and_old_checkpoints():
  progress, _ = _run([3.0, 2.0, 2.5], patience=5)
  assert es.Progress.from_json(progress.to_json()) == progress
  assert es.Progress.from_json(None) == es.Progress()


@pytest.mark.parametrize("bad", ["early_stopping_patience=-1",
                                 "early_stopping_min_delta=-0.5",
                                 "eval_every=0", "log_every=0"])
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, bad):
  from configs_loader import load_config
  from mlm_jax import config as config_lib
  from mlm_jax import train
  cfg = load_config("size=tiny,runlocal")
  field, value = bad.split("=")
  cfg.train[field] = type(cfg.train[field])(value)
  with pytest.raises(config_lib.ConfigError,
                     match=rf"^config\.train\.{field}: .*\.$"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# A learning rate that makes the held-out loss rise after step 2, so the
# best checkpoint is older than the latest, and a min_delta no evaluation
# can beat, so the stop does not depend on loss values.
STOP = ["--config.optim.lr=0.3", "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2", "--config.train.max_to_keep=1",
        "--config.train.early_stopping_patience=3",
        "--config.train.early_stopping_min_delta=100"]


def _train(work, cache_dir, caplog, *flags):
  """What test_train's `launch` runs (the launcher and its resume there),
  called in this process: a new process a launch would not tell this test
  more (2 launches' start-up, ~6 s). Returns the run's log."""
  from mlm_jax import train
  cfg = override(load_config("size=tiny,runlocal"), [
      f"--config.data.cache_dir={cache_dir}", *TINY, *flags])
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(cfg, str(work))
  return caplog.text


# The second and third runs compile the programs of the first (evaluation)
# and second (all): load them.
@pytest.mark.usefixtures("compilation_cache")
def test_resumed_run_stops_where_an_uninterrupted_one_would(tmp_path,
                                                            cache_dir, caplog):
  work = tmp_path / "run"
  # Interrupted after 4 steps (1 stale evaluation), then resumed.
  _train(work, cache_dir, caplog, *STOP, "--config.train.num_steps=4")
  log = _train(work, cache_dir, caplog, *STOP, "--config.train.num_steps=20")
  evals = {r["step"]: r["eval_loss"] for r in records(work)
           if "eval_loss" in r}
  # Evaluations 2 (best), 4, 6, 8 (3 stale): stop at 8, not at 12 as a run
  # that forgot its counters would.
  assert sorted(evals) == [2, 4, 6, 8]
  assert "Resumed from the checkpoint of step 4" in log
  assert "Stopped early at step 8" in log
  best = min(evals, key=evals.get)
  assert [p.name for p in (work / "best").iterdir()] == [str(best)]
  assert [p.name for p in (work / "checkpoints").iterdir()
          if p.name.isdigit()] == ["8"]
  assert [r["step"] for r in records(work) if "best_step" in r] == [best]
  assert f"best checkpoint: {work / 'best' / str(best)}" in log
  # A stopped run started again says so and trains no further.
  log = _train(work, cache_dir, caplog, *STOP, "--config.train.num_steps=20")
  assert "Stopped early at step 8" in log
  assert max(r["step"] for r in records(work)) == 8
