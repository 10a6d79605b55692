"""Pre-training objectives, one module each, chosen by `config.objective.name`.

Each module defines its objective (a `base.Objective`), `default_config()`
(its block `config.objective.<name>`, a comment per field), `USES_MASKING`
(whether `config.masking` applies to it) and `check(config)` for its own
settings. Adding one = a module, its entry in `REGISTRY`, and its tests.
"""
from __future__ import annotations

import types

import ml_collections
import numpy as np

from mlm_jax import masking
from mlm_jax import tokenizer as tok
from mlm_jax.errors import ConfigError, check
from mlm_jax.objectives import base
from mlm_jax.objectives import causal_lm
from mlm_jax.objectives import electra
from mlm_jax.objectives import mlm
from mlm_jax.objectives import nsp
from mlm_jax.objectives import prefix_lm
from mlm_jax.objectives import sop

Objective = base.Objective

# name -> module. The order is the one `--help` and errors list them in.
REGISTRY: dict[str, types.ModuleType] = {
    "mlm": mlm,
    "nsp": nsp,
    "sop": sop,
    "electra": electra,
    "prefix_lm": prefix_lm,
    "causal_lm": causal_lm,
}


def default_config() -> ml_collections.ConfigDict:
  """`config.objective`: the name, and every objective's settings block."""
  c = ml_collections.ConfigDict()
  # The objective that trains the encoder: one of REGISTRY's names.
  c.name = "mlm"
  for name, module in REGISTRY.items():
    c[name] = module.default_config()
  return c


def build(config: ml_collections.ConfigDict,
          word_starts: np.ndarray | None = None) -> base.Objective:
  """The objective of a run config.

  Args:
    config: the full run config (validated).
    word_starts: the tokenizer's [vocab_size] bool word-start table
      (`Tokenizer.word_starts`), for masking by whole words.
  """
  return REGISTRY[config.objective.name].build(config, word_starts)


def _differences(value, default, path: str) -> list[str]:
  if isinstance(default, ml_collections.ConfigDict):
    out = []
    for key in default.keys():
      out += _differences(value[key], default[key], f"{path}.{key}")
    return out
  return [] if value == default else [f"{path}={value!r}"]


def _unchanged(value, default, path: str, problem: str, fix: str) -> None:
  """Raises ConfigError naming the first field of `value` off its default."""
  changed = _differences(value, default, path)
  if changed:
    field, setting = changed[0].split("=", 1)
    raise ConfigError(f"config.{field}: set to {setting} {problem}; {fix}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a bad objective or masking setting.

  A setting of an objective other than the selected one, or of a masking
  strategy other than the selected one, is an error: it would silently do
  nothing.
  """
  name = config.objective.name
  check(name in REGISTRY, "objective.name", f"unknown objective {name!r}",
        f"use one of {', '.join(REGISTRY)}")
  defaults = default_config()
  for other in REGISTRY:
    if other != name:
      _unchanged(config.objective[other], defaults[other],
                 f"objective.{other}",
                 f"but config.objective.name is {name!r}",
                 f"select it with --config.objective.name={other}, or leave "
                 "it at its default")
  k, k_default = config.masking, masking.default_config()
  if not REGISTRY[name].USES_MASKING:
    _unchanged(k, k_default, "masking",
               f"but objective {name!r} masks nothing",
               "leave config.masking at its defaults")
    REGISTRY[name].check(config)
    return
  check(k.strategy in masking.STRATEGIES, "masking.strategy",
        f"unknown strategy {k.strategy!r}",
        f"use one of {', '.join(masking.STRATEGIES)}")
  if k.strategy != "span":
    _unchanged(k.span, k_default.span, "masking.span",
               f"but config.masking.strategy is {k.strategy!r}",
               "set --config.masking.strategy=span, or leave it at its "
               "default")
  check(0.0 < k.rate < 1.0, "masking.rate", f"{k.rate} is outside (0, 1)",
        "use e.g. 0.15")
  check(k.mask_prob >= 0 and k.random_prob >= 0
        and k.mask_prob + k.random_prob <= 1.0, "masking.mask_prob",
        f"mask_prob={k.mask_prob} and random_prob={k.random_prob} must be "
        "non-negative and sum to at most 1", "use e.g. 0.8 and 0.1")
  seq_len = config.data.seq_len
  budget = masking.max_predictions(config)
  check(1 <= budget <= seq_len - 2, "masking.max_predictions",
        f"budget {budget} does not fit a sequence of {seq_len}",
        "use 0 (derived from the rate) or a value in [1, seq_len - 2]")
  if k.strategy == "span":
    check(0.0 < k.span.p < 1.0, "masking.span.p",
          f"{k.span.p} is outside (0, 1)", "use e.g. 0.2 (SpanBERT)")
    check(1 <= k.span.max_length <= seq_len - 2, "masking.span.max_length",
          f"{k.span.max_length} does not fit a sequence of {seq_len} "
          "(two places go to [CLS] and [SEP])",
          f"use a value in [1, {seq_len - 2}], e.g. 10 (SpanBERT)")
  REGISTRY[name].check(config)


def check_word_starts(config: ml_collections.ConfigDict,
                      word_starts: np.ndarray, tokenizer_path: str) -> None:
  """Raises ConfigError if whole-word masking meets a tokenizer without
  word-boundary markers (every piece would continue the previous word)."""
  if not (REGISTRY[config.objective.name].USES_MASKING
          and masking.needs_word_starts(config.masking)):
    return
  ordinary = np.asarray(word_starts)[tok.NUM_SPECIAL_TOKENS:]
  field = ("masking.strategy" if config.masking.strategy == "whole_word"
           else "masking.span.whole_words")
  check(ordinary.any(), field,
        f"whole words need word-boundary markers, and no piece of the "
        f"tokenizer {tokenizer_path} starts a word (SentencePiece's '\u2581')",
        "train the tokenizer with SentencePiece's default whitespace "
        "handling (config.tokenizer.path=''), or mask by 'token' or 'span'")


__all__ = ["ConfigError", "REGISTRY", "Objective", "build", "check_config",
           "check_word_starts", "default_config"]
