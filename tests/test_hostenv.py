"""The launcher's allocator set-up: tcmalloc preloaded by re-execution."""
import os
import subprocess
import sys

import pytest

from mlm_jax import config as config_lib
from mlm_jax import hostenv

# A child that asks for an allocator and says which one it runs on, and in
# how many processes (a re-execution keeps the pid, so count the prints).
CHILD = """
import sys
from mlm_jax import hostenv
print("start", flush=True)
hostenv.use_allocator(sys.argv[1])
print(hostenv.loaded_allocator())
"""


def run_child(allocator, env=None):
  env = dict(os.environ if env is None else env)
  env.pop("LD_PRELOAD", None)
  env.pop(hostenv.MARK, None)
  proc = subprocess.run([sys.executable, "-c", CHILD, allocator], env=env,
                        capture_output=True, text=True, check=True)
  return proc.stdout.split(), proc.stderr


def test_this_process_is_on_the_system_allocator():
  if "libtcmalloc" in os.environ.get("LD_PRELOAD", ""):
    pytest.skip("the test run itself preloads tcmalloc")
  assert hostenv.loaded_allocator() == "system"


@pytest.mark.skipif(hostenv.find_tcmalloc() is None,
                    reason="tcmalloc not installed (libtcmalloc-minimal4)")
def test_tcmalloc_is_preloaded_by_one_reexecution():
  out, _ = run_child("tcmalloc")
  assert out == ["start", "start", "tcmalloc"]


def test_system_allocator_is_left_alone():
  out, _ = run_child("system")
  assert out == ["start", "system"]


def test_missing_tcmalloc_warns_and_runs_on(monkeypatch, tmp_path):
  # The library looked for in an empty directory only.
  monkeypatch.setattr(hostenv, "_DIRS", (str(tmp_path),))
  assert hostenv.find_tcmalloc() is None
  monkeypatch.delenv(hostenv.MARK, raising=False)
  with monkeypatch.context() as m:
    warnings = []
    m.setattr(hostenv.logging, "warning",
              lambda msg, *a: warnings.append(msg % a))
    if hostenv.loaded_allocator() == "tcmalloc":
      pytest.skip("the test run itself preloads tcmalloc")
    hostenv.use_allocator("tcmalloc")  # returns instead of re-executing
  assert len(warnings) == 1 and "libtcmalloc-minimal4" in warnings[0]


def test_a_failed_preload_does_not_loop(monkeypatch):
  monkeypatch.setenv(hostenv.MARK, "/nonexistent/libtcmalloc.so")
  if hostenv.loaded_allocator() == "tcmalloc":
    pytest.skip("the test run itself preloads tcmalloc")
  monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
  hostenv.use_allocator("tcmalloc")


def test_preload_env_prepends_and_marks():
  env = hostenv.preload_env("/x/libtcmalloc.so.4", {"LD_PRELOAD": "/y.so"})
  assert env["LD_PRELOAD"] == "/x/libtcmalloc.so.4:/y.so"
  assert env[hostenv.MARK] == "/x/libtcmalloc.so.4"
  assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_unknown_allocator_names_the_field():
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.host\.allocator: unknown allocator "
                           r"'mimalloc'; use 'tcmalloc'"):
    hostenv.use_allocator("mimalloc")
