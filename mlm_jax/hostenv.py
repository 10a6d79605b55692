"""The host process of a run: which memory allocator serves XLA's buffers.

On CPU, XLA allocates every step's activations and gradients afresh and
frees them when the step ends. glibc's malloc hands blocks that large to the
kernel (mmap/munmap, or a trim of the heap) and takes them back on the next
step, so each step page-faults its whole working set in again: measured here
(2-core VM, BERT-tiny, batch 32 x 128) 2.4 M minor faults in 26 steps and a
fifth of the step in the kernel. tcmalloc keeps freed pages for reuse, as TPU
VM images arrange by preloading it: 5x fewer faults, and (2026-12-02, jit
step) 42% more tokens/s at BERT-tiny and 16% at base for 0.7 GB more peak
memory (figures in README.md; `host.allocator='system'` for the memory).
jemalloc with its default decay
and glibc's MALLOC_* variables did not help (MALLOC_ARENA_MAX=1 with
MALLOC_MMAP_MAX_=0 did, at twice the peak memory).

An allocator is chosen before the process starts, so `use_allocator`
re-executes the launcher with tcmalloc in LD_PRELOAD, once, when the library
is installed (Debian/Ubuntu: libtcmalloc-minimal4) and not already loaded.
"""
from __future__ import annotations

import os
import pathlib
import sys

from absl import logging

from mlm_jax import config as config_lib

ALLOCATORS = ("tcmalloc", "system")
# Set in the re-executed process: the preload was asked for, never loop.
MARK = "MLM_JAX_PRELOADED"
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
         "/usr/lib64", "/usr/lib", "/usr/local/lib")
# gperftools prints a line for every allocation above 1 GiB by default.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc(dirs: tuple[str, ...] | None = None) -> str | None:
  """Path of an installed tcmalloc shared library, or None."""
  for d in _DIRS if dirs is None else dirs:
    for name in _NAMES:
      path = pathlib.Path(d) / name
      if path.exists():
        return str(path)
  return None


def loaded_allocator() -> str:
  """'tcmalloc' if this process has it mapped, else 'system'."""
  try:
    maps = pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return "system"
  return "tcmalloc" if "libtcmalloc" in maps else "system"


def preload_env(library: str, environ: dict[str, str]) -> dict[str, str]:
  """`environ` plus `library` first in LD_PRELOAD, marked as preloaded."""
  env = dict(environ)
  env["LD_PRELOAD"] = ":".join(
      filter(None, [library, environ.get("LD_PRELOAD")]))
  env[MARK] = library
  for key, value in _QUIET.items():
    env.setdefault(key, value)
  return env


def use_allocator(allocator: str) -> None:
  """Makes sure this process runs on `allocator`; may re-execute it.

  Call first thing in a launcher's `main` (before any output worth keeping):
  for 'tcmalloc' on Linux, when the library is installed but not loaded,
  the process is replaced by itself with the library preloaded (same
  interpreter, same arguments). When it is not installed, a warning says how
  to install it and the run goes on with the system allocator.

  Args:
    allocator: 'tcmalloc' or 'system' (nothing to do).
  Raises:
    config.ConfigError: for any other name.
  """
  if allocator not in ALLOCATORS:
    raise config_lib.ConfigError(
        f"config.host.allocator: unknown allocator {allocator!r}; use "
        f"'tcmalloc' (fast on CPU) or 'system'.")
  if (allocator == "system" or not sys.platform.startswith("linux")
      or loaded_allocator() == allocator):
    return
  if os.environ.get(MARK):
    logging.warning("tcmalloc was preloaded (%s) but is not mapped; "
                    "running on the system allocator.", os.environ[MARK])
    return
  library = find_tcmalloc()
  if library is None:
    logging.warning(
        "tcmalloc is not installed, so CPU steps run up to 30%% slower on the "
        "system allocator (README: host set-up). Install it "
        "(apt install libtcmalloc-minimal4) or set "
        "--config.host.allocator=system to silence this.")
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, preload_env(library, os.environ))
