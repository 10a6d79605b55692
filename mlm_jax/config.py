"""Config helpers: arg-string variants, model sizes, and validation.

Configs are code (`configs/*.py`); this module holds what every config file
and the training entry point share: parsing `get_config(arg)` strings such as
`size=base,runlocal`, the BERT size table, and `validate`, which turns every
bad value into one line that names the field and the fix before anything
expensive starts.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from mlm_jax import masking
from mlm_jax import objectives
from mlm_jax.errors import ConfigError
from mlm_jax.errors import check as _check

# (num_layers, hidden_size, num_heads); intermediate size is 4 * hidden.
# tiny..medium from Turc et al. 2019 ("Well-Read Students Learn Better"),
# base and large from Devlin et al. 2019.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}

# Memory allocators a launcher's process can run on (see hostenv.py).
ALLOCATORS = ("mimalloc", "jemalloc", "tcmalloc", "system")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'size=base,runlocal' into a ConfigDict of variant options.

  A bare word is a boolean flag set to True. Values are converted to the
  type of their default; every key must have a default, so a typo in the
  arg string is an error rather than a silently ignored option.
  """
  options = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ConfigError(
          f"Unknown config variant {key!r} in {arg!r}; known variants: "
          f"{', '.join(sorted(defaults))}.")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f"Config variant {key!r} needs a value: {key}=...")
      options[key] = True
    elif isinstance(default, bool):
      options[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      try:
        options[key] = type(default)(value)
      except ValueError:
        raise ConfigError(f"Config variant {key}={value!r} is not a "
                          f"{type(default).__name__}") from None
  return options


def model_size(name: str) -> tuple[int, int, int]:
  """(num_layers, hidden_size, num_heads) of a named size; clear error."""
  if name not in MODEL_SIZES:
    raise ConfigError(f"Unknown model size {name!r}; use one of "
                      f"{', '.join(MODEL_SIZES)}.")
  return MODEL_SIZES[name]


max_predictions = masking.max_predictions


def validate(config: ml_collections.ConfigDict, *, num_devices: int,
             tokenizer_vocab_size: int | None = None) -> None:
  """Raises ConfigError naming the field and the fix for any bad value.

  Args:
    config: the full run config.
    num_devices: devices the global batch is split over.
    tokenizer_vocab_size: size of the tokenizer in use, when known.
  """
  m, d, t, o = config.model, config.data, config.train, config.optim
  _check(m.hidden_size % m.num_heads == 0, "model.hidden_size",
         f"{m.hidden_size} is not divisible by model.num_heads={m.num_heads}",
         "choose sizes with hidden_size % num_heads == 0")
  _check(m.dtype in ("float32", "bfloat16"), "model.dtype",
         f"unsupported dtype {m.dtype!r}", "use 'float32' or 'bfloat16'")
  _check(m.remat in ("none", "full", "dots_saveable"), "model.remat",
         f"unknown policy {m.remat!r}", "use 'none', 'full' or 'dots_saveable'")
  _check(0.0 <= m.dropout < 1.0, "model.dropout",
         f"{m.dropout} is outside [0, 1)", "set a probability in [0, 1)")
  _check(0.0 <= m.attention_dropout < 1.0, "model.attention_dropout",
         f"{m.attention_dropout} is outside [0, 1)",
         "set a probability in [0, 1)")
  _check(m.dropout_rng in ("hash", "threefry"), "model.dropout_rng",
         f"unknown generator {m.dropout_rng!r}", "use 'hash' or 'threefry'")
  _check(m.position_encoding in ("learned", "alibi"),
         "model.position_encoding", f"unknown {m.position_encoding!r}",
         "use 'learned' or 'alibi'")
  _check(d.seq_len >= 8, "data.seq_len", f"{d.seq_len} is too short",
         "use at least 8 ([CLS] and [SEP] take two slots)")
  _check(d.seq_len <= m.max_positions, "data.seq_len",
         f"{d.seq_len} exceeds model.max_positions={m.max_positions}",
         "raise model.max_positions or shorten data.seq_len")
  _check(d.packing in ("stream", "pairs"), "data.packing",
         f"unknown packing {d.packing!r}", "use 'stream' or 'pairs'")
  _check(d.source in ("offline", "tfds", "files"), "data.source",
         f"unknown source {d.source!r}", "use 'offline', 'tfds' or 'files'")
  _check(d.files_format in ("text_blocks", "text_lines", "jsonl"),
         "data.files_format", f"unknown format {d.files_format!r}",
         "use 'text_blocks', 'text_lines' or 'jsonl'")
  _check(d.workers >= 0 and d.loader_threads >= 0, "data.workers",
         "worker and thread counts must be >= 0", "use 0 for the default")
  _check(0.0 < d.eval_fraction < 1.0, "data.eval_fraction",
         f"{d.eval_fraction} is outside (0, 1)", "hold out e.g. 0.01")
  _check(config.vocab_size > 5 + 16, "vocab_size",
         f"{config.vocab_size} is too small", "use at least a few hundred")
  if tokenizer_vocab_size is not None:
    _check(tokenizer_vocab_size == config.vocab_size, "vocab_size",
           f"{config.vocab_size} does not match the tokenizer's "
           f"{tokenizer_vocab_size} pieces",
           f"set --config.vocab_size={tokenizer_vocab_size} or use another "
           "tokenizer")
  objectives.check_config(config)
  _check(t.batch_size > 0 and t.batch_size % num_devices == 0,
         "train.batch_size",
         f"{t.batch_size} is not divisible by the {num_devices} devices",
         f"use a multiple of {num_devices}")
  _check(t.accum_steps >= 1
         and t.batch_size % (num_devices * t.accum_steps) == 0,
         "train.accum_steps",
         f"{t.accum_steps} micro-batches do not split the per-device batch "
         f"({t.batch_size} over {num_devices} devices)",
         "use a divisor of batch_size / devices")
  _check(t.num_steps > 0, "train.num_steps", f"{t.num_steps} is not positive",
         "train for at least one step")
  for field in ("log_every", "eval_every", "checkpoint_every"):
    _check(t[field] > 0, f"train.{field}", f"{t[field]} is not positive",
           f"set it to a number of steps, e.g. {t.num_steps}")
  _check(t.max_to_keep >= 0, "train.max_to_keep", f"{t.max_to_keep} is "
         "negative", "use 0 to keep every checkpoint, or how many to keep")
  _check(t.early_stopping_patience >= 0, "train.early_stopping_patience",
         f"{t.early_stopping_patience} is negative", "use 0 (off) or more")
  _check(t.early_stopping_min_delta >= 0, "train.early_stopping_min_delta",
         f"{t.early_stopping_min_delta} is negative",
         "use 0 or a positive loss difference")
  _check(config.host.allocator in ALLOCATORS,
         "host.allocator", f"unknown allocator {config.host.allocator!r}",
         f"use one of {', '.join(ALLOCATORS)}")
  _check(config.parallel.mode in ("pmap", "jit"), "parallel.mode",
         f"unknown mode {config.parallel.mode!r}", "use 'pmap' or 'jit'")
  _check(num_devices % config.parallel.fsdp == 0, "parallel.fsdp",
         f"{config.parallel.fsdp} does not divide the {num_devices} devices",
         "use a divisor of the device count")
  _check(config.parallel.mode == "jit" or config.parallel.fsdp == 1,
         "parallel.fsdp", "parameter sharding needs parallel.mode='jit'",
         "set --config.parallel.mode=jit or fsdp=1")
  _check(o.decay in ("linear", "cosine"), "optim.decay",
         f"unknown schedule {o.decay!r}", "use 'linear' or 'cosine'")
  _check(o.lr > 0, "optim.lr", f"{o.lr} is not positive", "use e.g. 1e-4")
  _check(0 <= o.warmup_steps <= t.num_steps, "optim.warmup_steps",
         f"{o.warmup_steps} is outside [0, train.num_steps={t.num_steps}]",
         "shorten the warm-up")
  _check(config.tokenizer.model_type in ("unigram", "bpe"),
         "tokenizer.model_type", f"unknown type {config.tokenizer.model_type!r}",
         "use 'unigram' or 'bpe'")
