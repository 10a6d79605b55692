"""workdir.claim: one run per workdir, one-line refusals, no empty leftovers."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mlm_jax import workdir as workdir_lib
from mlm_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def holder(path):
  """A process that holds the workdir's lock until killed."""
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import time
      from mlm_jax import workdir
      with workdir.claim({str(path)!r}):
        print("held", flush=True)
        time.sleep(60)
      """)], stdout=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_run_is_refused_naming_the_holder_until_it_dies(tmp_path):
  path = tmp_path / "run"
  proc = holder(path)
  try:
    with pytest.raises(workdir_lib.WorkdirInUseError) as info:
      with workdir_lib.claim(path):
        pass
    message = str(info.value)
    assert "\n" not in message and f"pid {proc.pid} " in message
    assert str(path) in message and "another --workdir" in message
    assert path.is_dir()  # the refused claim removed nothing
  finally:
    proc.send_signal(signal.SIGKILL)  # dies holding it: not stale after
    proc.wait()
  with workdir_lib.claim(path) as claimed:
    assert claimed == path
    assert f"pid {os.getpid()} " in (path / workdir_lib.LOCK).read_text()


def test_the_lock_is_released_on_exit_and_on_error(tmp_path):
  path = tmp_path / "run"
  path.mkdir()
  with workdir_lib.claim(path):
    (path / "metrics.jsonl").write_text("")
  with pytest.raises(RuntimeError):
    with workdir_lib.claim(path):
      raise RuntimeError("boom")
  with workdir_lib.claim(path):
    pass


def test_a_failed_start_leaves_no_workdir_it_created(tmp_path):
  created = tmp_path / "new" / "run"
  with pytest.raises(ConfigError):
    with workdir_lib.claim(created):
      (created / "config.json").write_text("{}")
      raise ConfigError("bad corpus")
  assert not created.exists()
  # A workdir that existed, or a run that had started, is kept.
  existing = tmp_path / "existing"
  existing.mkdir()
  with pytest.raises(ConfigError):
    with workdir_lib.claim(existing):
      raise ConfigError("bad corpus")
  assert existing.is_dir()
  started = tmp_path / "started"
  with pytest.raises(FloatingPointError):
    with workdir_lib.claim(started):
      (started / "metrics.jsonl").write_text('{"step": 1}\n')
      raise FloatingPointError("diverged")
  assert (started / "metrics.jsonl").exists()


def test_unusable_paths_are_one_line(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  cases = {a_file: "is a file",
           a_file / "run": "cannot be created",
           # Read-only for root as well (procfs).
           "/proc/self": "is not writable",
           "/proc/mlm_jax_test/run": "cannot be created"}
  for path, problem in cases.items():
    with pytest.raises(ConfigError) as info:
      with workdir_lib.claim(path):
        pass
    assert problem in str(info.value) and "\n" not in str(info.value)
  assert a_file.read_text() == "x"
