"""The host process of a run: which memory allocator serves XLA's buffers.

On CPU, XLA allocates every step's scratch (activations and gradients: one
large block) afresh and frees it when the step ends. glibc's malloc hands
blocks that large back to the kernel and takes them again on the next step,
so each step page-faults its whole scratch in, in 4 KiB pages. The
preloadable allocators avoid that (the benchmark records which one each
timing ran on; the comparison is in docs/benchmark/):

  mimalloc  the default: a dependency of this package on Linux (the
            `cmeel-mimalloc` wheel puts libmimalloc.so under
            site-packages), so no system package is needed. It keeps freed
            pages for a moment and reuses them: the fastest step, at the
            cost of a higher peak memory than jemalloc.
  jemalloc  with transparent huge pages (`thp:always`): blocks of 8 MiB and
            more live in an arena of their own that returns them at once,
            so the peak is the step's working set in every run, and they
            come back in 2 MiB pages (the kernel's THP mode must be
            'madvise' or 'always'). The least memory.
  tcmalloc  keeps freed pages for reuse, as TPU VM images arrange by
            preloading it. But XLA's CPU runtime frees a step's scratch just
            after it signals the step's outputs, so the next step can
            allocate its own scratch first; tcmalloc then keeps both blocks
            for good, at a random step of a random run.

An allocator is chosen before the process starts, so `use_allocator`
re-executes the launcher with the library in LD_PRELOAD, once, when it is
installed and not already loaded. When it is not installed, glibc's own
huge-page tunable (`glibc.malloc.hugetlb=1`, glibc 2.35 and later) is the
next best thing, set by the same re-execution.
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
import sys

from absl import logging

from mlm_jax import config as config_lib

ALLOCATORS = config_lib.ALLOCATORS
# Set in the re-executed process: the preload was asked for, never loop.
MARK = "MLM_JAX_PRELOADED"
# Shared libraries of each preloadable allocator, and its Debian package.
_NAMES = {"mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2"),
          "jemalloc": ("libjemalloc.so.2",),
          "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")}
_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}
# mimalloc also comes as a wheel (a dependency of this package on Linux),
# which installs the library under site-packages: no system package needed.
_WHEELS = {"mimalloc": "cmeel-mimalloc"}
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
         "/usr/lib64", "/usr/lib", "/usr/local/lib")
# Settings a preload brings, unless the environment already sets them.
_SETTINGS = {
    # Its defaults: freed memory is kept a moment for reuse, so the next
    # step's scratch is not faulted in again (huge OS pages measured slower).
    "mimalloc": {},
    # Transparent huge pages for its memory (where the kernel's THP mode is
    # 'madvise' or 'always'): the step's scratch, returned after each step,
    # comes back in 2 MiB pages, 512x fewer faults than 4 KiB ones.
    "jemalloc": {"MALLOC_CONF": "thp:always,metadata_thp:always"},
    # gperftools prints a line for every allocation above 1 GiB by default.
    "tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)},
}


# The kernel's transparent huge page mode: '[madvise]' marks the one in use.
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str | None = None) -> str | None:
  """'always', 'madvise' or 'never'; None where the kernel does not say."""
  try:
    text = pathlib.Path(path or _THP).read_text(encoding="ascii")
  except OSError:
    return None
  match = re.search(r"\[(\w+)\]", text)
  return match.group(1) if match else None


def install_hint(allocator: str) -> str:
  """How to install `allocator` ('mimalloc', 'jemalloc' or 'tcmalloc')."""
  if allocator in _WHEELS:
    return f"pip install {_WHEELS[allocator]}"
  return f"apt install {_PACKAGES[allocator]}"


def _wheel_library(allocator: str) -> str | None:
  """The library that `allocator`'s wheel installed, if it is installed."""
  if allocator not in _WHEELS:
    return None
  try:
    dist = importlib.metadata.distribution(_WHEELS[allocator])
  except importlib.metadata.PackageNotFoundError:
    return None
  for name in _NAMES[allocator]:
    for f in dist.files or ():
      if f.name == name and pathlib.Path(dist.locate_file(f)).exists():
        return str(dist.locate_file(f))
  return None


def find_library(allocator: str,
                 dirs: tuple[str, ...] | None = None) -> str | None:
  """Path of the installed shared library of `allocator`, or None: from its
  wheel (mimalloc), else from the system's library directories."""
  if dirs is None and (library := _wheel_library(allocator)):
    return library
  for d in _DIRS if dirs is None else dirs:
    for name in _NAMES[allocator]:
      path = pathlib.Path(d) / name
      if path.exists():
        return str(path)
  return None


def loaded_allocator() -> str:
  """The preloadable allocator this process has mapped, else 'system'."""
  try:
    maps = pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return "system"
  for allocator in _NAMES:
    if f"lib{allocator}" in maps:
      return allocator
  return "system"


def without_preloads(environ: dict[str, str]) -> dict[str, str]:
  """`environ` with no allocator library in LD_PRELOAD, and unmarked."""
  env = dict(environ)
  env.pop(MARK, None)
  kept = [p for p in env.pop("LD_PRELOAD", "").split(":")
          if p and not any(f"lib{a}" in p for a in _NAMES)]
  if kept:
    env["LD_PRELOAD"] = ":".join(kept)
  return env


def preload_env(allocator: str, library: str,
                environ: dict[str, str]) -> dict[str, str]:
  """`environ` plus `library` first in LD_PRELOAD, marked as preloaded.

  Other allocators' libraries leave LD_PRELOAD (one process, one malloc);
  `allocator`'s settings are added where `environ` does not set them.
  """
  env = without_preloads(environ)
  env["LD_PRELOAD"] = ":".join(
      filter(None, [library, env.get("LD_PRELOAD")]))
  env[MARK] = library
  for key, value in _SETTINGS[allocator].items():
    env.setdefault(key, value)
  return env


def use_allocator(allocator: str) -> None:
  """Makes sure this process runs on `allocator`; may re-execute it.

  Call first thing in a launcher's `main` (before any output worth keeping):
  for 'mimalloc', 'jemalloc' or 'tcmalloc' on Linux, when the library is
  installed but not loaded, the process is replaced by itself with the
  library preloaded (same interpreter, same arguments). When it is not
  installed, the run goes on with the allocator it has: quietly if that is
  another preloadable one (as on TPU VM images, which preload tcmalloc),
  else with a warning that says how to install it, re-executed on glibc's
  huge-page tunable where glibc has it.

  Args:
    allocator: 'mimalloc', 'jemalloc', 'tcmalloc' or 'system' (nothing to
      do).
  Raises:
    config.ConfigError: for any other name.
  """
  if allocator not in ALLOCATORS:
    raise config_lib.ConfigError(
        f"config.host.allocator: unknown allocator {allocator!r}; use one of "
        f"{', '.join(ALLOCATORS)}.")
  loaded = loaded_allocator()
  if (allocator == "system" or not sys.platform.startswith("linux")
      or loaded == allocator):
    return
  if os.environ.get(MARK) == _GLIBC_TUNABLE:
    return  # Re-executed on glibc's tunables; warned before.
  if os.environ.get(MARK):
    logging.warning("%s was preloaded (%s) but is not mapped; running on "
                    "%s.", allocator, os.environ[MARK], loaded)
    return
  library = find_library(allocator)
  if library is None and loaded != "system":
    # E.g. a TPU VM image that preloads tcmalloc: fast enough, keep it.
    logging.info("%s is not installed; running on the preloaded %s.",
                 allocator, loaded)
    return
  if library is None:
    glibc_env = glibc_hugepages_env(os.environ)
    logging.warning(
        "%s is not installed, so CPU steps run slower on the system "
        "allocator%s (README: Set up and run). Install it (%s) or set "
        "--config.host.allocator=system to silence this.", allocator,
        " (with glibc's huge-page tunable)" if glibc_env else "",
        install_hint(allocator))
    if glibc_env:
      _reexecute(glibc_env)
    return
  if allocator == "jemalloc" and thp_mode() == "never":
    logging.warning(
        "Transparent huge pages are off (%s), so jemalloc faults each step's "
        "scratch back in 4 KiB pages, slowing CPU steps; set "
        "--config.host.allocator=tcmalloc for speed, or enable them (echo "
        "madvise > %s).", _THP, _THP)
  _reexecute(preload_env(allocator, library, os.environ))


def _reexecute(environ: dict[str, str]) -> None:
  """Replaces this process by itself (same interpreter and arguments)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  return tuple(int(x) for x in re.findall(r"\d+", version)) or None


# glibc's malloc: large blocks (each step's scratch) in transparent huge
# pages, the best it does alone (glibc >= 2.35, THP 'madvise' or 'always').
_GLIBC_TUNABLE = "glibc.malloc.hugetlb=1"


def glibc_hugepages_env(environ: dict[str, str]) -> dict[str, str] | None:
  """`environ` with glibc's huge-page tunable, marked, or None where it
  does not apply (not glibc >= 2.35, THP off, or set already)."""
  version = _glibc_version()
  if (version is None or version < (2, 35) or thp_mode() not in (
      "madvise", "always") or "GLIBC_TUNABLES" in environ):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = _GLIBC_TUNABLE
  env[MARK] = _GLIBC_TUNABLE
  return env
