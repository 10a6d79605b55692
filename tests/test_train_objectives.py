"""Every objective end to end, in process: the real offline corpus through
preparation, training, held-out evaluation, a checkpoint and its resume.

Tiny and short (the learning itself is measured by the smoke runs the
README reports); what this pins down is that each objective's corruption,
model and metrics go through the loop, the writers and the checkpoints.
"""
import json

import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import train

# Each resume compiles its run's programs again: load them instead.
pytestmark = pytest.mark.usefixtures("compilation_cache")

VARIANTS = ["objective=nsp", "objective=sop", "objective=electra",
            "objective=prefix_lm", "objective=causal_lm",
            "masking=whole_word", "masking=span"]
# What each logs besides `loss` (and what every run logs).
LOGGED = {
    "nsp": {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"},
    "sop": {"mlm_loss", "mlm_accuracy", "sop_loss", "sop_accuracy"},
    "electra": {"generator_loss", "generator_accuracy",
                "discriminator_loss", "discriminator_accuracy",
                "replaced_accuracy", "original_accuracy", "original_share"},
    "prefix_lm": {"lm_accuracy"}, "causal_lm": {"lm_accuracy"},
    "whole_word": {"mlm_accuracy"}, "span": {"mlm_accuracy"},
}


def _config(variant, cache_dir):
  cfg = load_config(f"size=tiny,runlocal,{variant}")
  cfg.data.cache_dir = str(cache_dir)
  cfg.vocab_size, cfg.tokenizer.model_type = 400, "bpe"
  cfg.data.max_documents, cfg.data.seq_len = 300, 32
  cfg.model.update(num_layers=1, hidden_size=32, num_heads=2,
                   intermediate_size=64)
  cfg.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4,
                   checkpoint_every=2, eval_batches=2)
  cfg.optim.warmup_steps = 1
  return cfg


@pytest.mark.parametrize("variant", VARIANTS)
def test_objective_trains_evaluates_and_resumes(variant, tmp_path, cache_dir):
  name = variant.split("=")[1]
  cfg = _config(variant, cache_dir)
  work = tmp_path / "run"
  summary = train.train_and_evaluate(cfg, str(work))
  records = [json.loads(l) for l in (work / "metrics.jsonl").read_text()
             .splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [2, 4]
  expected = {"loss", "grad_norm", "param_norm", "tokens_per_s",
              "steps_per_s", "mfu", "lr", "eta_minutes"} | LOGGED[name]
  assert set(logged[-1]) - {"step"} == expected
  assert {f"eval_{k}" for k in LOGGED[name] | {"loss"}} <= set(summary)
  assert all(np.isfinite(v) for r in records for k, v in r.items()
             if k != "step")
  # Resume from the step-2 checkpoint: the same last two steps.
  import shutil
  shutil.rmtree(work / "checkpoints" / "4")
  train.train_and_evaluate(cfg, str(work))
  again = [json.loads(l) for l in (work / "metrics.jsonl").read_text()
           .splitlines() if '"loss"' in l and '"eval_loss"' not in l]
  assert again[-1]["loss"] == logged[-1]["loss"]
