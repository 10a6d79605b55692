"""Loads `configs/*.py` by path, as the launchers' --config flag does."""
import importlib.util
import pathlib
import types

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def config_module(name: str = "bert") -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(arg: str | None = None, name: str = "bert"):
  return config_module(name).get_config(arg)


def override(config, flags):
  """Applies `--config.a.b=value` flags to `config` in place, each value
  read as its field's type, as a launcher's --config overrides are: for
  tests that call in process what a launcher would run."""
  for flag in flags:
    path, value = flag.removeprefix("--config.").split("=", 1)
    *blocks, name = path.split(".")
    block = config
    for b in blocks:
      block = block[b]
    kind = type(block[name])
    block[name] = (value.lower() in ("true", "1") if kind is bool
                   else kind(value))
  return config
