"""The launcher's allocator set-up: mimalloc, jemalloc or tcmalloc preloaded by re-execution."""
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
  if os.environ.get("LD_PRELOAD"):
    pytest.skip("the test run itself preloads an allocator")
  assert hostenv.loaded_allocator() == "system"


def test_mimalloc_comes_with_the_package_on_linux():
  # A dependency (cmeel-mimalloc) on Linux: no system package needed.
  if not sys.platform.startswith("linux"):
    pytest.skip("preloading is Linux-only")
  library = hostenv.find_library("mimalloc")
  assert library is not None and "site-packages" in library, library
  assert hostenv.install_hint("mimalloc") == "pip install cmeel-mimalloc"


@pytest.mark.parametrize("allocator", ["mimalloc", "jemalloc", "tcmalloc"])
def test_allocator_is_preloaded_by_one_reexecution(allocator):
  if hostenv.find_library(allocator) is None:
    pytest.skip(f"{allocator} not installed ({hostenv.install_hint(allocator)})")
  out, _ = run_child(allocator)
  assert out == ["start", "start", allocator]


def test_system_allocator_is_left_alone():
  out, _ = run_child("system")
  assert out == ["start", "system"]


@pytest.mark.parametrize("allocator,package", [
    ("mimalloc", "cmeel-mimalloc"), ("jemalloc", "libjemalloc2"),
    ("tcmalloc", "libtcmalloc-minimal4")])
def test_missing_allocator_warns_and_runs_on(monkeypatch, tmp_path, allocator,
                                             package):
  # The library looked for in an empty directory only, and in no wheel.
  monkeypatch.setattr(hostenv, "_DIRS", (str(tmp_path),))
  monkeypatch.setattr(hostenv, "_wheel_library", lambda allocator: None)
  assert hostenv.find_library(allocator) is None
  monkeypatch.delenv(hostenv.MARK, raising=False)
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  with monkeypatch.context() as m:
    warnings, reexecuted = [], []
    m.setattr(hostenv.logging, "warning",
              lambda msg, *a: warnings.append(msg % a))
    m.setattr(hostenv, "_reexecute", reexecuted.append)
    if hostenv.loaded_allocator() == allocator:
      pytest.skip(f"the test run itself preloads {allocator}")
    hostenv.use_allocator(allocator)
  assert len(warnings) == 1 and package in warnings[0]
  # Where glibc can, the run goes on with its huge-page tunable instead.
  expected = hostenv.glibc_hugepages_env(dict(os.environ))
  assert reexecuted == ([] if expected is None else [expected])


def test_glibc_tunable_needs_a_recent_glibc_and_huge_pages(monkeypatch):
  monkeypatch.setattr(hostenv, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(hostenv, "thp_mode", lambda: "madvise")
  env = hostenv.glibc_hugepages_env({"A": "1"})
  assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                 hostenv.MARK: "glibc.malloc.hugetlb=1"}
  assert hostenv.glibc_hugepages_env({"GLIBC_TUNABLES": "x"}) is None
  monkeypatch.setattr(hostenv, "thp_mode", lambda: "never")
  assert hostenv.glibc_hugepages_env({}) is None
  monkeypatch.setattr(hostenv, "thp_mode", lambda: "always")
  monkeypatch.setattr(hostenv, "_glibc_version", lambda: (2, 31))
  assert hostenv.glibc_hugepages_env({}) is None


def test_a_failed_preload_does_not_loop(monkeypatch):
  monkeypatch.setenv(hostenv.MARK, "/nonexistent/libtcmalloc.so")
  if hostenv.loaded_allocator() == "tcmalloc":
    pytest.skip("the test run itself preloads tcmalloc")
  monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
  hostenv.use_allocator("tcmalloc")


def test_preload_env_prepends_marks_and_replaces_other_allocators():
  env = hostenv.preload_env("tcmalloc", "/x/libtcmalloc.so.4",
                            {"LD_PRELOAD": "/y.so:/z/libjemalloc.so.2"})
  assert env["LD_PRELOAD"] == "/x/libtcmalloc.so.4:/y.so"
  assert env[hostenv.MARK] == "/x/libtcmalloc.so.4"
  assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_jemalloc_gets_huge_pages_unless_configured_otherwise():
  env = hostenv.preload_env("jemalloc", "/x/libjemalloc.so.2", {})
  assert "thp:always" in env["MALLOC_CONF"]
  mine = {"MALLOC_CONF": "dirty_decay_ms:0"}
  assert hostenv.preload_env("jemalloc", "/x/libjemalloc.so.2",
                             mine)["MALLOC_CONF"] == "dirty_decay_ms:0"


def test_unknown_allocator_names_the_field():
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.host\.allocator: unknown allocator "
                           r"'hoard'; use one of mimalloc, jemalloc"):
    hostenv.use_allocator("hoard")


def test_a_missing_allocator_keeps_a_preloaded_one(monkeypatch, tmp_path):
  # As on a TPU VM image, which preloads tcmalloc: no re-execution, no warning.
  monkeypatch.setattr(hostenv, "_DIRS", (str(tmp_path),))
  monkeypatch.delenv(hostenv.MARK, raising=False)
  monkeypatch.setattr(hostenv, "loaded_allocator", lambda: "tcmalloc")
  monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
  monkeypatch.setattr(hostenv.logging, "warning",
                      lambda *a: pytest.fail("warned"))
  hostenv.use_allocator("jemalloc")


@pytest.mark.parametrize("text,mode", [
    ("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
    ("always madvise [never]", "never"), ("", None)])
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert hostenv.thp_mode(str(path)) == mode
  assert hostenv.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("mode,warned", [("never", True), ("madvise", False)])
def test_jemalloc_without_huge_pages_warns(monkeypatch, mode, warned):
  monkeypatch.delenv(hostenv.MARK, raising=False)
  monkeypatch.setattr(hostenv, "loaded_allocator", lambda: "system")
  monkeypatch.setattr(hostenv, "find_library", lambda a: "/x/libjemalloc.so.2")
  monkeypatch.setattr(hostenv, "thp_mode", lambda: mode)
  warnings = []
  monkeypatch.setattr(hostenv.logging, "warning",
                      lambda msg, *a: warnings.append(msg % a))

  class Reexecuted(Exception):
    pass

  def execve(*a):
    raise Reexecuted

  monkeypatch.setattr(os, "execve", execve)
  with pytest.raises(Reexecuted):
    hostenv.use_allocator("jemalloc")
  assert bool(warnings) == warned
  if warned:
    assert "tcmalloc" in warnings[0] and "huge pages" in warnings[0]
