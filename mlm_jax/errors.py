"""The error every bad config value becomes: one line, the field and the fix.

Its own module so that every part of the library that checks a config (the
config module, each objective) can raise it without importing the others.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A bad config value; the message names the field and the fix."""


def check(ok: bool, field: str, problem: str, fix: str) -> None:
  """Raises `ConfigError('config.<field>: <problem>; <fix>.')` unless ok."""
  if not ok:
    raise ConfigError(f"config.{field}: {problem}; {fix}.")
