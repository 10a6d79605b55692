"""interrupts.Watch: real signals sent to real processes."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mlm_jax import interrupts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_sigint():
  """A child with SIGINT's default action, even from a background job."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(code):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PYTHONPATH": ROOT},
                        preexec_fn=default_sigint)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_before_the_loop_a_signal_interrupts_at_once(signum):
  # As in a foreground shell (a background job starts with SIGINT ignored,
  # which Watch leaves alone).
  previous = {signal.SIGINT: signal.signal(signal.SIGINT,
                                           signal.default_int_handler),
              signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
  try:
    _interrupts_at_once(signum)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _interrupts_at_once(signum):
  with interrupts.Watch() as watch:
    with pytest.raises(interrupts.Interrupted) as info:
      os.kill(os.getpid(), signum)
      for _ in range(10 ** 7):  # the handler runs between bytecodes
        pass
  assert info.value.exit_code == 128 + signum
  assert watch.requested == signum
  assert "nothing to save" in str(info.value)
  # The previous handlers are back.
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_in_the_loop_a_signal_is_a_request_and_a_second_ctrl_c_exits_now():
  proc = run("""
      import os, signal, time
      from mlm_jax import interrupts
      with interrupts.Watch() as watch:
        watch.defer()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print("requested", watch.requested, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # repeated: still saving
        time.sleep(0.1)
        print("still running", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # a second interrupt: exit now
        time.sleep(5)
        print("not reached", flush=True)
      """)
  assert proc.returncode == 130, proc.stderr
  assert proc.stdout.split("\n")[:2] == [f"requested {int(signal.SIGTERM)}",
                                          "still running"]
  lines = proc.stderr.strip().splitlines()
  assert "SIGTERM received: finishing this step" in proc.stderr
  assert lines[-1].startswith("Second interrupt: exiting now without saving")


def test_an_ignored_signal_stays_ignored():
  """`nohup ... &`: a background job ignores SIGINT, and so does its run."""
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with interrupts.Watch():
      assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
      assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
  finally:
    signal.signal(signal.SIGINT, previous)


def test_disabled_or_off_the_main_thread_it_installs_nothing():
  with interrupts.Watch(enabled=False):
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  import threading  # pylint: disable=import-outside-toplevel
  seen = []
  def body():
    with interrupts.Watch():
      seen.append(signal.getsignal(signal.SIGTERM))
  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert seen == [signal.SIG_DFL]
