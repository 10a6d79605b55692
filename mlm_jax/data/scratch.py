"""Temporary files and directories in the data cache that name their maker.

The cache's files and directories are written under a temporary name and
renamed into place when complete, so a finished one is always whole. A
process killed meanwhile (SIGKILL, the OOM killer, a lost session) cannot
clean up, so its temporary stays behind: a half-built dataset of any size.
Hence the names made here say who made them,

  .<final name>.tmp-<host>-<pid>-<random>

and `remove_dead(directory)`, called before building anything there,
deletes those of this host whose process is gone. Never another host's (its
pids mean nothing here), nor a live process's: a run building the same
cache concurrently keeps its files. A pid reused by a new process keeps a
leftover until that process ends too: a delay, never a loss.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import socket
import tempfile

from absl import logging

_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>[\w.-]+)-(?P<pid>\d+)-"
                   r"[a-z0-9_]+")


def _host() -> str:
  # Host names hold letters, digits, '-' and '.'; anything else (never seen
  # in practice) must not break the name's parsing.
  return re.sub(r"[^\w.-]", "_", socket.gethostname()) or "localhost"


def _prefix(name: str) -> str:
  return f".{name}.tmp-{_host()}-{os.getpid()}-"


def mkdtemp(parent: str | os.PathLike[str], name: str) -> pathlib.Path:
  """A new directory in `parent` that will become `parent/name`."""
  return pathlib.Path(tempfile.mkdtemp(dir=parent, prefix=_prefix(name)))


def mkstemp(parent: str | os.PathLike[str],
            name: str) -> tuple[int, pathlib.Path]:
  """(fd, path) of a new file in `parent` that will become `parent/name`."""
  fd, path = tempfile.mkstemp(dir=parent, prefix=_prefix(name))
  return fd, pathlib.Path(path)


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)  # Signal 0: only checks that the process exists.
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def remove_dead(directory: str | os.PathLike[str]) -> list[pathlib.Path]:
  """Deletes the temporaries in `directory` left by dead processes of this
  host; returns them. Anything else, and what cannot be deleted (a
  read-only cache), stays."""
  removed = []
  host = _host()
  with contextlib.suppress(OSError):  # No directory yet: nothing left.
    for entry in os.scandir(directory):
      found = _NAME.fullmatch(entry.name)
      if (not found or found["host"] != host
          or _alive(int(found["pid"]))):
        continue
      path = pathlib.Path(entry.path)
      try:
        if entry.is_dir(follow_symlinks=False):
          shutil.rmtree(path)
        else:
          path.unlink()
      except FileNotFoundError:  # Another process removed it first.
        continue
      except OSError as e:
        logging.warning("Cannot remove %s, left by process %s of this host, "
                        "which is gone: %s", path, found["pid"], e)
        continue
      logging.warning("Removed %s, left by process %s of this host, which "
                      "is gone (killed while writing it).", path,
                      found["pid"])
      removed.append(path)
  return removed
