"""SIGTERM and Ctrl-C: stop a run where it can be resumed with nothing lost.

Cloud TPU VMs are preempted with SIGTERM; people press Ctrl-C. `Watch` turns
either signal into a request the training loop sees between two steps: the
loop saves a checkpoint at that step and raises `Interrupted`, which the
launchers report in one line and exit with 128 + the signal's number (130
for SIGINT, 143 for SIGTERM), the shell's convention for "killed by".

Before the loop can save (data preparation, compilation) there is nothing to
save, so a signal interrupts at once (`Interrupted` raised from the handler).
A second Ctrl-C while the loop finishes its step and saves exits at once
without saving: the previous checkpoint is intact, as after `kill -9`.

Handlers are installed only while a `Watch` is open, only from the main
thread (Python delivers signals there; elsewhere, e.g. a notebook's worker
thread, the watch is inert), and never over a signal that is ignored (a
background job's SIGINT).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
  """The run was stopped by a signal (after saving, when it could).

  A BaseException, as KeyboardInterrupt is, so that no `except Exception`
  on the way swallows it.
  """

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def name(signum: int) -> str:
  return signal.Signals(signum).name


class Watch:
  """Catches SIGINT and SIGTERM while open.

  Until `defer()` is called, a signal raises `Interrupted` at once; after it,
  the signal is recorded in `requested` for the loop to act on between steps.
  """

  def __init__(self, enabled: bool = True):
    """`enabled` False: install nothing (a multi-host run, which JAX's
    preemption sync stops instead)."""
    self.requested: int | None = None
    # Set by the loop when JAX's preemption sync, not a signal, stopped it.
    self.preempted = False
    self._enabled = enabled
    self._deferred = False
    self._previous: dict[int, object] = {}

  def defer(self) -> None:
    """From now on a signal is a request (`requested`) the loop acts on."""
    self._deferred = True

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.requested is not None:
      if signum == signal.SIGINT:
        # A second Ctrl-C: exit now. os._exit skips the interpreter's
        # shutdown, which would wait for the save in flight.
        os.write(sys.stderr.fileno(),
                 b"\nSecond interrupt: exiting now without saving; the run "
                 b"resumes from its last checkpoint.\n")
        os._exit(128 + signum)  # pylint: disable=protected-access
      return  # A repeated SIGTERM: the save is already on its way.
    self.requested = signum
    if not self._deferred:
      raise Interrupted(signum, f"Stopped by {name(signum)} before training "
                        "started; nothing to save.")
    os.write(sys.stderr.fileno(), (
        f"\n{name(signum)} received: finishing this step and saving a "
        "checkpoint (press Ctrl-C again to exit without saving).\n").encode())

  def __enter__(self) -> "Watch":
    if (self._enabled
        and threading.current_thread() is threading.main_thread()):
      for signum in SIGNALS:
        # An ignored signal stays ignored: a background job (`... &`,
        # nohup) is not meant to stop on the terminal's Ctrl-C.
        if signal.getsignal(signum) != signal.SIG_IGN:
          self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
