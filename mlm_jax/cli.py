"""Command-line plumbing shared by the absl launchers in `experiments/`.

Launchers stay thin: they define `--config`/`--workdir` and call a library
function. What they share lives here: turning a bad `--config.x=y` override
or a bad variant into one line that names the problem (absl and
ml_collections would print a stack trace), doing the same for a missing
required flag and for config and input errors found later, and a `--help`
that lists the config file's variants and fields (`config_help`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys
from typing import Iterator, Sequence

from absl import app
from absl import flags
from absl import logging as absl_logging
# A public function (for telling config flags apart) not re-exported.
from ml_collections.config_flags.config_flags import is_config_flag

from mlm_jax import config as config_lib
from mlm_jax import config_help

# The launcher's required flags and an example value of each (`require`).
_REQUIRED: dict[str, str] = {}

# What asks for help; --helpfull stays absl's (every module's flags).
_HELP = {"--help", "-help", "--helpshort", "-helpshort", "-h", "-?"}


def _fail(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  raise SystemExit(2)


def require(**examples: str) -> None:
  """Declares the launcher's required flags, each with an example value.

  `parse_flags` stops a run without them with one line naming each missing
  flag, what it is (its help text) and the example; `--help` shows the
  config file of the `config` example when no --config is given.
  """
  _REQUIRED.update(examples)


def missing_flags(missing: dict[str, tuple[str, str]]) -> str:
  """The one-line error for missing flags: {name: (help text, example)}."""
  example = " ".join(f"--{n} {e}" for n, (_, e) in missing.items())
  if len(missing) == 1:
    (name, (about, _)), = missing.items()
    about = about.strip().rstrip(".")
    about = about[:1].lower() + about[1:]
    return f"--{name} is required ({about}), e.g. {example}"
  names = [f"--{n}" for n in missing]
  return (f"{', '.join(names[:-1])} and {names[-1]} are required, "
          f"e.g. {example}")


def _flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
  """The value the last of `--name=v`, `--name v` (any of `names`) gives."""
  value, args = None, list(argv[1:])
  for i, a in enumerate(args):
    if a == "--":
      break
    m = re.fullmatch(r"--?([\w.]+)(?:=(.*))?", a, re.S)
    if m and m.group(1) in names:
      value = m.group(2) if m.group(2) is not None else (
          args[i + 1] if i + 1 < len(args) else None)
  return value


def _default_config(example: str | None) -> str | None:
  """The file of the launcher's --config example, from the cwd or the repo."""
  if not example:
    return None
  path = example.partition(":")[0]
  repo = pathlib.Path(__file__).parents[1] / path
  return path if os.path.isfile(path) else (
      str(repo) if repo.is_file() else None)


def _print_help(argv: Sequence[str]) -> None:
  """absl's help of the launcher's flags, then its config file's."""
  names = [n for n in flags.FLAGS if is_config_flag(flags.FLAGS[n])]
  spec = _flag_value(argv, names) or next(filter(None, (
      _default_config(_REQUIRED.get(n)) for n in names)), None)
  text = ("Pass --config FILE --help for a config file's variants and "
          "fields.\n") if names else ""
  if spec:
    try:
      text = config_help.config_help(spec)
    except (config_lib.ConfigError, OSError) as e:
      _fail(f"--{names[0]}: {e}")
  try:
    app.usage(shorthelp=True, writeto_stdout=True)
    sys.stdout.write(f"\nTry --helpfull to get a list of all flags.\n\n{text}")
    sys.stdout.flush()
  except BrokenPipeError:
    # `--help | head`: the reader is gone; so is the rest (no traceback).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`absl.app.run(..., flags_parser=parse_flags)`: one-line flag errors.

  `--help` (-h, --helpshort) prints the launcher's flags and the variants
  and fields of its config file (--config's, else its example's), exit 0.
  """
  args = list(argv[1:])
  if _HELP & set(args[:args.index("--")] if "--" in args else args):
    _print_help(argv)
    raise SystemExit(0)
  try:
    rest = flags.FLAGS(list(argv))
  except flags.Error as e:
    # A config file that raised while loading arrives as a flags error with
    # the whole traceback inside; its last line is the message that matters.
    lines = [l for l in str(e).splitlines() if l.strip()]
    if len(lines) == 1:
      _fail(lines[0])
    flag = re.match(r"flag (--\w+)=", lines[0])
    given = flag and next((a.split("=", 1)[-1] for i, a in enumerate(argv)
                           if a.startswith(flag.group(1) + "=")), None)
    if flag and given is None:  # `--config path` as two arguments
      given = next((argv[i + 1] for i, a in enumerate(argv[:-1])
                    if a == flag.group(1)), None)
    where = f"{flag.group(1)} {given}" if given else lines[0].split(":")[0]
    # "mlm_jax.errors.ConfigError: Unknown ..." -> "Unknown ...".
    message = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", lines[-1])
    _fail(f"{where}: {message}")
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
  missing = {n: (flags.FLAGS[n].help, e) for n, e in _REQUIRED.items()
             if flags.FLAGS[n].value is None}
  if missing:
    _fail(missing_flags(missing))
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
