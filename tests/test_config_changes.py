"""What a resume may change in the config: every field of the config file is
either accepted (named in the log) or refused (one line naming it), in both
directions of the change."""
import sys
import os

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from configs_loader import load_config  # noqa: E402

from mlm_jax import config_changes  # noqa: E402
from mlm_jax.errors import ConfigError  # noqa: E402

BASE = load_config("size=tiny,runlocal").to_dict()
FIELDS = config_changes.fields(BASE)


def _get(d, field):
  for key in field.split("."):
    d = d[key]
  return d


def _with(field, value):
  import copy  # pylint: disable=import-outside-toplevel
  out = copy.deepcopy(BASE)
  *parents, last = field.split(".")
  d = out
  for key in parents:
    d = d[key]
  d[last] = value
  return out


def _other(value):
  """Another value of the same type."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value * 2 + 1
  return f"{value}_other"


REFUSED = [f for f in FIELDS if config_changes.is_refused(f)]
ACCEPTED = [f for f in FIELDS if not config_changes.is_refused(f)]


def test_the_state_defining_fields_are_the_refused_ones():
  assert {"model.hidden_size", "model.num_layers", "model.num_heads",
          "model.position_encoding", "vocab_size", "objective.name",
          "optim.fused", "objective.electra.generator_size"} <= set(REFUSED)
  assert {"seed", "optim.lr", "masking.rate", "train.num_steps",
          "train.batch_size", "model.dropout", "model.remat",
          "data.loader_threads", "parallel.mode"} <= set(ACCEPTED)


@pytest.mark.parametrize("field", REFUSED)
def test_a_refused_change_is_one_line_naming_it_both_ways(field):
  old, new = BASE, _with(field, _other(_get(BASE, field)))
  for a, b in ((old, new), (new, old)):
    with pytest.raises(ConfigError) as info:
      config_changes.check_resume(a, b, "/w/checkpoints")
    message = str(info.value)
    assert "\n" not in message
    assert field in message and "--workdir" in message
    assert f"--config.{field}={_get(a, field)}" in message


@pytest.mark.parametrize("field", ACCEPTED)
def test_an_accepted_change_is_named_both_ways(field):
  old, new = BASE, _with(field, _other(_get(BASE, field)))
  for a, b in ((old, new), (new, old)):
    described = config_changes.check_resume(a, b, "/w/checkpoints")
    assert described == (f"{field}: {_get(a, field)!r} -> "
                         f"{_get(b, field)!r}")


def test_no_change_is_silent_and_several_are_all_named():
  assert config_changes.check_resume(BASE, BASE, "/w") == ""
  new = _with("optim.fused", False)
  new["model"]["hidden_size"] = 64
  new["seed"] = 3
  with pytest.raises(ConfigError) as info:
    config_changes.check_resume(BASE, new, "/w")
  message = str(info.value)
  assert "model.hidden_size: 128 -> 64" in message
  assert "optim.fused: True -> False" in message
  assert "seed" not in message  # accepted ones are not the problem
