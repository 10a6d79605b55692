"""Runs launcher command lines, each in a forked child, for the catalogue test.

Reads a JSON list of cases on stdin ({"argv": [launcher.py, args...],
"fsize": bytes or null}) and writes a JSON list of {"rc", "stdout",
"stderr"} on stdout. The heavy imports (jax, orbax, grain, the library) are
done once, here, before any fork; each child then runs its launcher file as
`__main__`, as `python launcher.py args...` would, minus the interpreter's
start. No JAX backend exists before the fork: each child makes its own.
"""
import json
import os
import resource
import runpy
import signal
import sys
import tempfile
import traceback

from mlm_jax import hostenv

# The launchers' allocator re-execution would replace the child by a fresh
# interpreter running this file: say it has happened already.
os.environ[hostenv.MARK] = hostenv._GLIBC_TUNABLE  # pylint: disable=protected-access

# pylint: disable=unused-import,g-import-not-at-top
import jax  # noqa: F401,E402
import orbax.checkpoint  # noqa: F401,E402
from mlm_jax import cli  # noqa: F401,E402
from mlm_jax import evaluation  # noqa: F401,E402
from mlm_jax import fill_mask  # noqa: F401,E402
from mlm_jax import train  # noqa: F401,E402
from mlm_jax.finetune import run  # noqa: F401,E402


def _child(case: dict, out: int, err: int) -> None:
  os.dup2(out, 1)
  os.dup2(err, 2)
  if case.get("fsize"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"],) * 2)
  sys.argv = list(case["argv"])
  code = 0
  try:
    runpy.run_path(sys.argv[0], run_name="__main__")
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def main() -> None:
  results = []
  for case in json.load(sys.stdin):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      pid = os.fork()
      if pid == 0:
        _child(case, out.fileno(), err.fileno())
      _, status = os.waitpid(pid, 0)
      out.seek(0)
      err.seek(0)
      results.append({"rc": os.waitstatus_to_exitcode(status),
                      "stdout": out.read().decode(errors="replace"),
                      "stderr": err.read().decode(errors="replace")})
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  main()
