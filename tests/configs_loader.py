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
