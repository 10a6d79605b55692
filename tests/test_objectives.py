"""The objective seam: registry, config blocks, and BERT's MLM through it."""
import functools

import jax
import numpy as np
import pytest

from configs_loader import load_config
from mlm_jax import config as config_lib
from mlm_jax import flops
from mlm_jax import objectives
from mlm_jax import step as step_lib
from mlm_jax import synthetic
from mlm_jax import train


def _small(arg="size=tiny,runlocal"):
  cfg = load_config(arg)
  cfg.vocab_size, cfg.data.seq_len, cfg.train.batch_size = 512, 32, 8
  return cfg


# Produced by the step before the objectives seam (commit 81a03d5, where
# BERT's MLM was wired through step.MLMTask and the model's apply), on this
# test's config and synthetic batches: the training loss of 6 steps, and
# the evaluation loss after each. The seam must reproduce them.
PRE_SEAM_LOSS = [6.258036136627197, 6.238929748535156, 6.3250250816345215,
                 6.232776641845703, 6.3111677169799805, 6.276068210601807]
PRE_SEAM_EVAL_LOSS = [6.263983726501465, 6.2569756507873535,
                      6.276864051818848, 6.267607688903809,
                      6.267411708831787, 6.27669620513916]


def test_bert_mlm_through_the_seam_reproduces_the_pre_seam_step():
  cfg = _small()
  # The smoke config as it was when the golden values were recorded.
  cfg.model.pre_layer_norm = False
  cfg.model.position_encoding = "learned"
  cfg.optim.lr, cfg.optim.b2 = 3e-3, 0.999
  cfg.train.num_steps = 400
  cfg.model.dropout = cfg.model.attention_dropout = 0.1
  cfg.optim.warmup_steps = 2
  task = train.build_task(cfg)
  state = jax.jit(functools.partial(step_lib.init_state, task, 32))()
  step = jax.jit(functools.partial(step_lib.train_step, task=task))
  evaluate = jax.jit(functools.partial(step_lib.eval_step, task=task))
  mean = lambda m: float(m["mlm_loss"][0] / m["mlm_loss"][1])
  held_out = synthetic.batch(cfg, seed=99)
  losses, eval_losses = [], []
  for i in range(6):
    batch = synthetic.batch(cfg, seed=i)
    batch["example_id"] = batch["example_id"] + 8 * i
    state, m = step(state, batch)
    losses.append(mean(m))
    eval_losses.append(mean(evaluate(state.params, held_out)))
  # 6 significant digits: what the logs print, with room for the last bits
  # of another CPU's float reduction order.
  np.testing.assert_allclose(losses, PRE_SEAM_LOSS, rtol=1e-6)
  np.testing.assert_allclose(eval_losses, PRE_SEAM_EVAL_LOSS, rtol=1e-6)


def test_default_config_has_a_block_per_objective():
  c = objectives.default_config()
  assert c.name == "mlm"
  assert set(c.keys()) == {"name", *objectives.REGISTRY}
  for name, module in objectives.REGISTRY.items():
    assert isinstance(module.USES_MASKING, bool), name


def test_unknown_objective_is_one_line_naming_the_choices():
  cfg = _small()
  cfg.objective.name = "bart"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.objective.name: unknown objective 'bart'; "
                           r"use one of mlm"):
    config_lib.validate(cfg, num_devices=1)


def test_a_setting_of_an_unselected_strategy_is_an_error():
  cfg = _small()
  cfg.masking.span.max_length = 5
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.masking.span.max_length: set to 5 but "
                           r"config.masking.strategy is 'token'; set "
                           r"--config.masking.strategy=span"):
    config_lib.validate(cfg, num_devices=1)
  cfg.masking.strategy = "span"
  config_lib.validate(cfg, num_devices=1)


@pytest.mark.parametrize("field,value,match", [
    ("strategy", "ngram", r"config.masking.strategy: unknown strategy "
                          r"'ngram'; use one of token, whole_word, span"),
    ("span.max_length", 40, r"config.masking.span.max_length: 40 does not "
                            r"fit a sequence of 32"),
    ("span.p", 1.0, r"config.masking.span.p: 1.0 is outside \(0, 1\)"),
])
def test_bad_masking_values_name_the_field(field, value, match):
  cfg = _small()
  cfg.masking.strategy = "span"
  section, _, name = field.rpartition(".")
  (cfg.masking[section] if section else cfg.masking)[name] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(cfg, num_devices=1)


def test_whole_words_need_a_tokenizer_with_word_boundaries():
  cfg = _small()
  cfg.masking.strategy = "whole_word"
  starts = np.zeros(512, bool)
  starts[:5] = True  # special pieces only: no ordinary piece starts a word
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.masking.strategy: whole words need "
                           r"word-boundary markers.*tok.model"):
    objectives.check_word_starts(cfg, starts, "tok.model")
  starts[7] = True
  objectives.check_word_starts(cfg, starts, "tok.model")
  cfg.masking.strategy = "token"  # any tokenizer will do
  objectives.check_word_starts(cfg, np.zeros(512, bool), "tok.model")


def test_flops_come_from_the_objective():
  cfg = _small()
  objective = objectives.build(cfg)
  assert flops.train_flops_per_step(objective, 8, 32) == 3 * sum(
      mm.flops for mm in objective.matmuls(8, 32))
  names = [mm.name for mm in objective.matmuls(8, 32)]
  assert names[-2:] == ["head transform", "vocabulary projection"]


def test_evaluation_counts_accuracy_at_the_mask_slots_apart():
  cfg = _small()
  task = train.build_task(cfg)
  obj = task.objective
  params = jax.jit(functools.partial(step_lib.init_state, task, 32))().params
  batch = synthetic.batch(cfg, seed=3)
  # Jitted: eagerly, each op is compiled apart (~150 of them, 4 s).
  corrupted = jax.jit(obj.corrupt)(batch, jax.random.key(7))
  module = obj.module()
  apply = jax.jit(module.apply, static_argnames=("deterministic", "method"))
  evaluated = apply({"params": params}, corrupted, deterministic=True)
  trained = jax.eval_shape(functools.partial(
      module.apply, deterministic=False), {"params": params}, corrupted,
      rngs={"dropout": jax.random.key(0)})
  assert "mlm_accuracy_at_mask" not in trained  # evaluation only
  logits = apply(
      {"params": params}, corrupted["tokens"], corrupted["segment_ids"],
      corrupted["positions"], corrupted["mask_positions"],
      method="logits")
  slots = np.asarray(corrupted["mask_positions"])
  inputs = np.take_along_axis(np.asarray(corrupted["tokens"]), slots, 1)
  at_mask = (np.asarray(corrupted["weights"]) > 0) & (inputs == 4)  # [MASK]
  correct = np.asarray(logits).argmax(-1) == np.asarray(corrupted["labels"])
  got = np.asarray(evaluated["mlm_accuracy_at_mask"])
  assert got[1] == at_mask.sum() > 0
  assert got[0] == (correct & at_mask).sum()
