"""Command-line plumbing shared by the absl launchers in `experiments/`.

Launchers stay thin: they define `--config`/`--workdir` and call a library
function. What they share lives here: turning a bad `--config.x=y` override
or a bad variant into one line that names the problem (absl and
ml_collections would print a stack trace), and doing the same for config and
input errors found later.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Iterator, Sequence

from absl import flags
from absl import logging as absl_logging

from mlm_jax import config as config_lib


def _fail(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  raise SystemExit(2)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`absl.app.run(..., flags_parser=parse_flags)`: one-line flag errors."""
  try:
    rest = flags.FLAGS(list(argv))
  except flags.Error as e:
    # A config file that raised while loading arrives as a flags error with
    # the whole traceback inside; its last line is the message that matters.
    lines = [l for l in str(e).splitlines() if l.strip()]
    _fail(lines[0] if len(lines) == 1 else
          f"{lines[0].split(':')[0]}: {lines[-1]}")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field that does not
    # exist (with a spelling suggestion when it has one).
    text = str(e).strip("'\"").replace("\\n", "\n")
    name = re.match(r"[\\'\"]*(\w+)", text).group(1)
    hint = re.search(r"Did you mean [^?]*\?", text)
    culprit = next((a for a in argv if re.match(
        rf"-{{1,2}}\w+(\.\w+)*\.{re.escape(name)}(\.|=|$)", a)), name)
    _fail(f"{culprit}: the config has no field {name!r}. "
          + (hint.group(0).replace('\\', '') if hint else
             "Check the spelling against the config file."))
  for name in flags.FLAGS:
    # A config file that cannot be read is only reported when first used;
    # report it now, with the path it tried.
    if type(flags.FLAGS[name].value).__name__ == "_ErrorConfig":
      try:
        getattr(flags.FLAGS[name].value, "keys")
      except OSError as e:
        missing = re.search(r"\[Errno \d+\] ([^\n]*)", str(e))
        _fail(f"--{name}: cannot load the config file"
              + (f": {missing.group(1)}" if missing else f" ({e})"))
  return rest


class _OwnInfoOnly(logging.Filter):
  """Keeps INFO lines of this package only; warnings of everyone.

  orbax logs dozens of INFO lines per checkpoint through absl, which would
  bury the training log.
  """
  _ours = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or os.path.abspath(record.pathname).startswith(self._ours))


def quiet_library_logs() -> None:
  """Installs `_OwnInfoOnly` on absl's handler (call once, from `main`)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Reports config and missing-input errors as one line, not a traceback."""
  try:
    yield
  except (config_lib.ConfigError, FileNotFoundError) as e:
    _fail(str(e))
