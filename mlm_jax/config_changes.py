"""What a resumed run may change in its config, and what it may not.

A run resumed with another config either goes on with the change named in
the log (a learning rate, the masking, the seed, the number of steps: how it
trains) or is refused in one line naming the fields (what the model is: its
shapes, its layers, its vocabulary, the optimizer state's layout), because
the checkpoint's arrays would not mean the same thing under the new config.
Refused fields are listed by rule: every `model.` field except the ones
named in `_TRAINING_ONLY_MODEL`, so a new model field is refused until
someone decides otherwise.
"""
from __future__ import annotations

from mlm_jax import errors

# Fields outside `model.` that decide the state's arrays or what they compute.
_STATE_FIELDS = frozenset({
    "vocab_size",
    "objective.name",                        # which networks exist
    "objective.electra.generator_layers",    # the generator's shapes
    "objective.electra.generator_size",
    "optim.fused",                           # the optimizer state's layout
})
# `model.` fields that change how the model trains, not what it is.
_TRAINING_ONLY_MODEL = frozenset({
    "model.dropout", "model.attention_dropout", "model.dropout_rng",
    "model.remat", "model.dtype", "model.init_std",
})


def changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
  """{'a.b': (old value, new value)} of the fields that differ."""
  out = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(changes(a, b, f"{prefix}{key}."))
    elif a != b:
      out[f"{prefix}{key}"] = (a, b)
  return out


def is_refused(field: str) -> bool:
  """Whether changing `field` on resume is refused."""
  if field in _STATE_FIELDS:
    return True
  return field.startswith("model.") and field not in _TRAINING_ONLY_MODEL


def _describe(diff: dict[str, tuple]) -> str:
  return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())


def check_resume(checkpoint_config: dict, config: dict, where: str) -> str:
  """The accepted differences, described ('' when none); raises ConfigError
  naming the refused ones, with the overrides that put them back."""
  diff = changes(checkpoint_config, config)
  refused = {k: v for k, v in diff.items() if is_refused(k)}
  if refused:
    restore = " ".join(f"--config.{k}={a}" for k, (a, _) in refused.items()
                       if a is not None)
    raise errors.ConfigError(
        f"The config changes what the checkpoints in {where} hold "
        f"({_describe(refused)}), so they cannot be resumed with it. Put "
        f"{'it' if len(refused) == 1 else 'them'} back"
        f"{f' ({restore})' if restore else ''}, or use a new --workdir.")
  return _describe(diff)


def fields(config: dict, prefix: str = "") -> list[str]:
  """Every leaf field of a config dict, dotted."""
  out = []
  for key, value in config.items():
    if isinstance(value, dict):
      out += fields(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out

