"""The host process of a run: which memory allocator serves XLA's buffers.

On CPU, XLA allocates every step's scratch (activations and gradients: one
large block) afresh and frees it when the step ends. glibc's malloc hands
blocks that large back to the kernel and takes them again on the next step,
so each step page-faults its whole scratch in, in 4 KiB pages. Two
preloadable allocators avoid that (the benchmark records which one each
timing ran on: docs/benchmark/):

  tcmalloc  keeps freed pages for reuse, as TPU VM images arrange by
            preloading it. But XLA's CPU runtime frees a step's scratch just
            after it signals the step's outputs, so the next step can
            allocate its own scratch first; tcmalloc then keeps both blocks
            for good. That happens at a random step of a random run, so
            peak memory differs between identical runs (a pause between
            steps avoids it).
  jemalloc  with transparent huge pages (`thp:always`): blocks of 8 MiB and
            more live in an arena of their own that returns them at once,
            so the peak is the step's working set in every run, and they
            come back in 2 MiB pages (512x fewer faults than 4 KiB ones;
            the kernel's THP mode must be 'madvise' or 'always').

An allocator is chosen before the process starts, so `use_allocator`
re-executes the launcher with the library in LD_PRELOAD, once, when it is
installed (Debian/Ubuntu: libjemalloc2, libtcmalloc-minimal4) and not
already loaded.
"""
from __future__ import annotations

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
_NAMES = {"jemalloc": ("libjemalloc.so.2",),
          "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")}
_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
         "/usr/lib64", "/usr/lib", "/usr/local/lib")
# Settings a preload brings, unless the environment already sets them.
_SETTINGS = {
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
  """How to install `allocator` ('jemalloc' or 'tcmalloc')."""
  return f"apt install {_PACKAGES[allocator]}"


def find_library(allocator: str,
                 dirs: tuple[str, ...] | None = None) -> str | None:
  """Path of the installed shared library of `allocator`, or None."""
  for d in _DIRS if dirs is None else dirs:
    for name in _NAMES[allocator]:
      path = pathlib.Path(d) / name
      if path.exists():
        return str(path)
  return None


def loaded_allocator() -> str:
  """'jemalloc' or 'tcmalloc' if this process has it mapped, else 'system'."""
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
  for 'jemalloc' or 'tcmalloc' on Linux, when the library is installed but
  not loaded, the process is replaced by itself with the library preloaded
  (same interpreter, same arguments). When it is not installed, the run goes
  on with the allocator it has: quietly if that is the other preloadable one
  (as on TPU VM images, which preload tcmalloc), else with a warning that
  says how to install it.

  Args:
    allocator: 'jemalloc', 'tcmalloc' or 'system' (nothing to do).
  Raises:
    config.ConfigError: for any other name.
  """
  if allocator not in ALLOCATORS:
    raise config_lib.ConfigError(
        f"config.host.allocator: unknown allocator {allocator!r}; use "
        f"'jemalloc' (fast on CPU, memory returned), 'tcmalloc' or 'system'.")
  loaded = loaded_allocator()
  if (allocator == "system" or not sys.platform.startswith("linux")
      or loaded == allocator):
    return
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
    logging.warning(
        "%s is not installed, so CPU steps run slower on the system "
        "allocator (README: Set up and run). Install it (%s) or set "
        "--config.host.allocator=system to silence this.", allocator,
        install_hint(allocator))
    return
  if allocator == "jemalloc" and thp_mode() == "never":
    logging.warning(
        "Transparent huge pages are off (%s), so jemalloc faults each step's "
        "scratch back in 4 KiB pages, slowing CPU steps; set "
        "--config.host.allocator=tcmalloc for speed, or enable them (echo "
        "madvise > %s).", _THP, _THP)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv,
            preload_env(allocator, library, os.environ))
