"""Loading a pre-training checkpoint for use: which step, and clear errors."""
import json
import shutil

import jax
import numpy as np
import pytest

from mlm_jax import pretrained


def test_latest_best_and_a_step(pretrained_run):
  steps = sorted(int(p.name) for p in (pretrained_run / "checkpoints")
                 .iterdir() if p.name.isdigit())
  best = [json.loads(l)["step"] for l in (pretrained_run / "metrics.jsonl")
          .read_text().splitlines() if "best_step" in l][-1]
  latest = pretrained.load(pretrained_run, "latest")
  assert latest.step == steps[-1]
  assert latest.path == pretrained_run / "checkpoints" / str(steps[-1])
  assert pretrained.load(pretrained_run, "best").step == best
  model = pretrained.load(pretrained_run, str(steps[0]))
  assert model.step == steps[0] and model.objective.name == "mlm"
  assert model.tokenizer.vocab_size == model.config.vocab_size
  emb = model.encoder_params["word_embeddings"]["embedding"]
  assert emb.shape == (model.config.vocab_size, model.config.model.hidden_size)
  assert np.isfinite(np.asarray(jax.device_get(emb))).all()


@pytest.mark.parametrize("which,phrase", [
    ("nope", "unknown checkpoint 'nope'"),
    ("7", "has no checkpoint at step 7; it has steps"),
])
def test_bad_choice(pretrained_run, which, phrase):
  with pytest.raises(pretrained.PretrainedError, match=phrase):
    pretrained.load(pretrained_run, which)


def test_bad_workdirs(tmp_path, pretrained_run):
  with pytest.raises(pretrained.PretrainedError, match="does not exist"):
    pretrained.load(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(pretrained.PretrainedError, match="holds no checkpoint"):
    pretrained.load(tmp_path / "empty")
  (tmp_path / "empty" / "results.json").write_text("{}")
  with pytest.raises(pretrained.PretrainedError, match="fine-tuning workdir"):
    pretrained.load(tmp_path / "empty")
  copy = tmp_path / "copy"
  shutil.copytree(pretrained_run, copy)
  (copy / "tokenizer.model").unlink()
  with pytest.raises(pretrained.PretrainedError, match="no tokenizer.model"):
    pretrained.load(copy)


def test_a_config_that_does_not_match_the_arrays(tmp_path, pretrained_run):
  copy = tmp_path / "copy"
  shutil.copytree(pretrained_run, copy)
  step = pretrained.load(copy, "latest").step
  meta = copy / "checkpoints" / str(step) / "config" / "metadata"
  config = json.loads(meta.read_text())
  config["model"]["intermediate_size"] //= 2
  meta.write_text(json.dumps(config))
  with pytest.raises(pretrained.PretrainedError,
                     match="does not hold the model its config describes"):
    pretrained.load(copy, "latest")
