"""A run's workdir: created with one-line errors, held by one run at a time.

`claim(path)` is what a launcher's run opens first:
- it creates the directory (or says in one line why it cannot);
- it takes `<workdir>/.lock`, an exclusive `flock` held until the run's
  process ends, so a second launch into the same workdir is refused with one
  line naming the holder's process id (written into the file). The kernel
  drops a lock when its holder dies, however it dies, so a lock left by a
  killed run is never stale: the next launch takes it over;
- when the run fails before it has written anything of its own
  (`metrics.jsonl`, the first step's record), a workdir this claim created is
  removed again, so a failed start leaves nothing behind.

With several processes (multi-host), process 0 holds the lock for all.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import pathlib
import shutil
import socket
from typing import Iterator

import jax

from mlm_jax import errors

LOCK = ".lock"


class WorkdirInUseError(errors.ConfigError):
  """Another live run holds the workdir."""


def make(workdir: str | os.PathLike) -> tuple[pathlib.Path, bool]:
  """Creates the workdir; returns (path, whether this call created it).

  Raises ConfigError (one line) when it is a file, cannot be created or is
  not writable.
  """
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise errors.ConfigError(
        f"--workdir {path} is a file, not a directory; name a new or "
        "existing directory.")
  created = not path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(
        f"--workdir {path} cannot be created ({e.strerror or e}); name a "
        "directory you can write to.") from None
  if not os.access(path, os.W_OK | os.X_OK) or not _writable(path):
    raise errors.ConfigError(
        f"--workdir {path} is not writable; name a directory you can write "
        "to.")
  return path, created


def _writable(path: pathlib.Path) -> bool:
  """Whether a file can be created in `path` (os.access says yes to root
  on a read-only mount)."""
  probe = path / f".write-test-{os.getpid()}"
  try:
    probe.touch()
    probe.unlink()
    return True
  except OSError:
    return False


def _holder(lock_path: pathlib.Path) -> str:
  try:
    text = lock_path.read_text().strip()
  except OSError:
    text = ""
  return text or "unknown process"


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
  """Holds `<path>/.lock` exclusively, or raises WorkdirInUseError."""
  lock_path = path / LOCK
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise errors.ConfigError(
            f"--workdir {path}: cannot lock {lock_path} ({e.strerror}); use "
            "a workdir on a local or network filesystem with locks.") from None
      raise WorkdirInUseError(
          f"--workdir {path} is in use by another run ({_holder(lock_path)}); "
          "wait for it to end or stop it, or use another --workdir."
      ) from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                 f"{started}\n".encode())
    yield
  finally:
    os.close(fd)  # Releases the lock; the file stays (no unlink race).


@contextlib.contextmanager
def claim(workdir: str | os.PathLike,
          started: str = "metrics.jsonl") -> Iterator[pathlib.Path]:
  """Creates and locks the workdir for the run inside the `with`.

  A workdir this call created is removed again when the run fails before
  it holds a file matching the glob `started` (what the run writes once it
  has started training: pre-training's metrics.jsonl).
  """
  path, created = make(workdir)
  try:
    if jax.process_index() == 0:
      with _lock(path):
        yield path
    else:
      yield path
  except BaseException:
    if (created and jax.process_index() == 0
        and not any(path.glob(started))):
      shutil.rmtree(path, ignore_errors=True)
    raise
