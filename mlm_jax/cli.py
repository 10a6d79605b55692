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
import errno
import logging
import os
import pathlib
import re
import signal
import sys
import threading
import traceback
from typing import Iterator, Sequence

from absl import app
from absl import flags
from absl import logging as absl_logging
# A public function (for telling config flags apart) not re-exported.
from ml_collections.config_flags.config_flags import is_config_flag

from mlm_jax import checkpoint as ckpt_lib
from mlm_jax import config as config_lib
from mlm_jax import config_help
from mlm_jax import interrupts

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


def verbose() -> bool:
  """Whether `-v 1` (absl's --verbosity) asks for full tracebacks."""
  return absl_logging.get_verbosity() >= 1


class _OwnInfoOnly(logging.Filter):
  """Keeps INFO lines of this package only; warnings of everyone, in one
  line each (without `-v 1`).

  orbax logs dozens of INFO lines per checkpoint through absl, which would
  bury the training log; its background threads log a traceback with each
  error (a failed save logs four), which would bury the one line that says
  what happened.
  """
  _ours = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record: logging.LogRecord) -> bool:
    ours = os.path.abspath(record.pathname).startswith(self._ours)
    if not ours and record.exc_info and not verbose():
      record.exc_info, record.exc_text, record.stack_info = None, None, None
      record.msg = str(record.getMessage()).split("\n")[0][:400]
      record.args = None
    return record.levelno >= logging.WARNING or ours


def _quiet_thread_error(args) -> None:
  """threading.excepthook: a dying background thread's error in one line."""
  if verbose():
    sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)
    return
  absl_logging.warning("Background thread %s stopped: %s: %s",
                       getattr(args.thread, "name", "?"),
                       args.exc_type.__name__,
                       str(args.exc_value).split("\n")[0][:300])


_REPORTED: set[str] = set()


def _quiet_excepthook(exc_type, value, tb) -> None:
  """sys.excepthook (and through `_quiet_unraisablehook`, what tensorstore's
  callbacks print: "Event loop is closed" a hundred times after a failed
  write): each distinct error once, in one line. An error of the main
  thread never gets here (`one_line_errors` catches it)."""
  if verbose():
    sys.__excepthook__(exc_type, value, tb)
    return
  line = f"{exc_type.__name__}: {str(value).splitlines()[0] if str(value) else ''}"
  if line not in _REPORTED:
    _REPORTED.add(line)
    absl_logging.warning("Ignored in a background callback: %s", line[:300])


def _quiet_unraisablehook(unraisable) -> None:
  """sys.unraisablehook: what a C library could not raise, once, one line."""
  if verbose():
    sys.__unraisablehook__(unraisable)
    return
  _quiet_excepthook(unraisable.exc_type, unraisable.exc_value, None)


def quiet_library_logs() -> None:
  """Installs `_OwnInfoOnly` on absl's handler, and one-line reports of
  background threads' errors (call once, from `main`)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())
  threading.excepthook = _quiet_thread_error
  sys.excepthook = _quiet_excepthook
  sys.unraisablehook = _quiet_unraisablehook


# Errors that mean "this input or this machine", not "this code": one line.
# Exit status: 2 for what the command line or config asked for, 1 for what
# happened while running, 128 + N for signal N (`interrupts`).
_USAGE_ERRORS = (config_lib.ConfigError, FileNotFoundError)
_RUN_ERRORS = (FloatingPointError, OSError, ckpt_lib.CheckpointMismatchError,
               ckpt_lib.CheckpointRestoreError, ckpt_lib.NonFiniteStateError)


def _exit(message: str, code: int) -> None:
  """Writes `message` as the last line on stderr and exits with `code`.

  With background threads still alive (an orbax save, grain readers), exits
  at once: the interpreter's shutdown would print their errors after ours.
  The caller's `with` blocks have closed the run (checkpoints waited for).
  """
  others = threading.active_count() > 1
  if others:
    # No thread may log after the line: new records are dropped, and a
    # record being written finishes first (its handler's lock is taken).
    logging.disable(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
      handler.acquire()
  sys.stdout.flush()
  sys.stderr.write(f"{message}\n")
  sys.stderr.flush()
  if others:
    os._exit(code)  # pylint: disable=protected-access
  raise SystemExit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Reports what went wrong as one line on stderr, the last one printed.

  Config and input errors, run errors (a non-finite loss, a failed save, a
  damaged or mismatched checkpoint, a filesystem error), and a stop by
  SIGINT/SIGTERM. With `-v 1` the traceback is printed instead. Anything
  else is a bug: its traceback, then one line that says so.
  """
  try:
    yield
  except interrupts.Interrupted as e:
    _exit(str(e), e.exit_code)
  except KeyboardInterrupt:
    _exit("Interrupted.", 128 + signal.SIGINT)
  except _USAGE_ERRORS as e:
    if verbose():
      raise
    _exit(f"error: {_one_line(e)}", 2)
  except _RUN_ERRORS as e:
    if verbose():
      raise
    _exit(f"error: {_one_line(e)}", 1)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    _exit(f"error: unexpected {type(e).__name__} (a bug: the traceback is "
          f"above): {_one_line(e)}", 1)


def _one_line(e: BaseException) -> str:
  """The error's message on one line (OSError: its cause and path)."""
  if isinstance(e, OSError) and not isinstance(
      e, (FileNotFoundError, ckpt_lib.CheckpointSaveError)) and e.strerror:
    return f"{e.strerror}: {e.filename}" + (
        "; free space or choose another path." if e.errno == errno.ENOSPC
        else "; check the path's permissions and free space.")
  text = " ".join(str(e).split())
  return text or type(e).__name__
