"""Configs: variants from the arg string, and one-line validation errors."""
import pytest

from configs_loader import config_module, load_config
from mlm_jax import config as config_lib

load = load_config


def test_parse_arg_types_and_flags():
  v = config_lib.parse_arg("size=large,runlocal", size="base", runlocal=False,
                           steps=1)
  assert (v.size, v.runlocal, v.steps) == ("large", True, 1)
  assert config_lib.parse_arg("steps=7", steps=1).steps == 7
  assert config_lib.parse_arg(None, runlocal=False).runlocal is False
  with pytest.raises(config_lib.ConfigError, match="Unknown config variant 'sise'"):
    config_lib.parse_arg("sise=tiny", size="base")
  with pytest.raises(config_lib.ConfigError, match="not a int"):
    config_lib.parse_arg("steps=x", steps=1)
  with pytest.raises(config_lib.ConfigError, match="needs a value"):
    config_lib.parse_arg("steps", steps=1)


@pytest.mark.parametrize("size", list(config_lib.MODEL_SIZES))
def test_every_size_is_valid(size):
  cfg = load(f"size={size}")
  layers, hidden, heads = config_lib.MODEL_SIZES[size]
  assert (cfg.model.num_layers, cfg.model.hidden_size,
          cfg.model.num_heads) == (layers, hidden, heads)
  assert cfg.model.intermediate_size == 4 * hidden
  config_lib.validate(cfg, num_devices=8)


def test_runlocal_shrinks_the_run():
  big, small = load("size=tiny"), load("size=tiny,runlocal")
  assert small.train.num_steps < big.train.num_steps
  assert small.vocab_size < big.vocab_size
  config_lib.validate(small, num_devices=1)
  with pytest.raises(config_lib.ConfigError, match="Unknown model size 'tny'"):
    load("size=tny")


def test_max_predictions_from_rate():
  cfg = load("size=tiny")
  assert config_lib.max_predictions(cfg) == 20  # ceil(0.15 * 128), as BERT
  cfg.masking.max_predictions = 7
  assert config_lib.max_predictions(cfg) == 7


@pytest.mark.parametrize("field,value,devices,match", [
    ("train.batch_size", 30, 4, r"config.train.batch_size: 30 is not divisible "
     r"by the 4 devices; use a multiple of 4"),
    ("masking.rate", 0.0, 1, r"config.masking.rate: 0.0 is outside \(0, 1\)"),
    ("masking.rate", 1.0, 1, r"config.masking.rate: 1.0 is outside \(0, 1\)"),
    ("data.seq_len", 4, 1, r"config.data.seq_len: 4 is too short"),
    ("data.seq_len", 1024, 1, r"exceeds model.max_positions=512"),
    ("model.num_heads", 3, 1, r"config.model.hidden_size: 128 is not divisible"),
    ("masking.mask_prob", 0.95, 1, r"config.masking.mask_prob"),
    ("masking.max_predictions", 200, 1, r"config.masking.max_predictions"),
    ("optim.decay", "step", 1, r"config.optim.decay: unknown schedule 'step'"),
    ("optim.warmup_steps", 10**9, 1, r"config.optim.warmup_steps"),
    ("parallel.mode", "pjit", 1, r"config.parallel.mode"),
    ("parallel.fsdp", 3, 4, r"config.parallel.fsdp: 3 does not divide"),
    ("model.dtype", "float16", 1, r"config.model.dtype"),
    ("model.remat", "some", 1, r"config.model.remat"),
    ("model.dropout_rng", "philox", 1,
     r"config.model.dropout_rng: unknown generator 'philox'; use 'hash'"),
    ("model.attention_dropout", 1.0, 1,
     r"config.model.attention_dropout: 1.0 is outside \[0, 1\)"),
    ("tokenizer.model_type", "wordpiece", 1, r"config.tokenizer.model_type"),
    ("data.eval_fraction", 0.0, 1, r"config.data.eval_fraction"),
])
def test_bad_values_name_the_field_and_fix(field, value, devices, match):
  cfg = load("size=tiny")
  section, key = field.split(".")
  cfg[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    config_lib.validate(cfg, num_devices=devices)
  assert "\n" not in str(info.value)


def test_fsdp_needs_jit():
  cfg = load("size=tiny")
  cfg.parallel.mode, cfg.parallel.fsdp = "pmap", 2
  with pytest.raises(config_lib.ConfigError, match="parallel.mode='jit'"):
    config_lib.validate(cfg, num_devices=4)
  cfg.parallel.mode = "jit"
  config_lib.validate(cfg, num_devices=4)


def test_vocab_must_match_tokenizer():
  cfg = load("size=tiny,runlocal")
  config_lib.validate(cfg, num_devices=1, tokenizer_vocab_size=cfg.vocab_size)
  with pytest.raises(config_lib.ConfigError,
                     match=r"set --config.vocab_size=5000"):
    config_lib.validate(cfg, num_devices=1, tokenizer_vocab_size=5000)


def test_sweep_is_declared():
  module = config_module()

  class H:  # the minimal big_vision-style sweep builder
    def sweep(self, key, values):
      return [{key: v} for v in values]

    def product(self, sweeps):
      out = [{}]
      for s in sweeps:
        out = [{**a, **b} for a in out for b in s]
      return out

  runs = module.get_hyper(H())
  assert len(runs) == 6
  cfg = load("size=tiny")
  for run in runs:  # every swept key exists in the config
    for key in run:
      section, field = key.split(".")[1:]
      assert field in cfg[section]
