"""Temporaries that name their maker, and removal of a dead maker's ones
(mlm_jax/data/scratch.py)."""
import os
import signal
import subprocess
import sys

from mlm_jax.data import scratch

# Makes a temporary directory (with a file in it) and a temporary file in
# argv[1] as a preparation would, prints them, then waits for a line on
# stdin: "kill" kills it where it stands, anything else ends it, neither
# cleaning up.
MAKER = """
import os, signal, sys
from mlm_jax.data import scratch
d = scratch.mkdtemp(sys.argv[1], "dataset")
(d / "train-000000.array_record.tmp").write_bytes(b"partial")
fd, f = scratch.mkstemp(sys.argv[1], "corpus.jsonl")
os.write(fd, b"partial")
print(d.name, f.name, flush=True)
if sys.stdin.readline().strip() == "kill":
  os.kill(os.getpid(), signal.SIGKILL)
os._exit(0)
"""


def _maker(directory):
  """A running process that made temporaries in `directory`; their names."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  child = subprocess.Popen([sys.executable, "-c", MAKER, str(directory)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=env)
  return child, child.stdout.readline().split()


def _end(child, how):
  child.stdin.write(how + "\n")
  child.stdin.close()
  child.wait()
  child.stdout.close()


def test_names_say_which_process_of_which_host_made_them(tmp_path):
  made = scratch.mkdtemp(tmp_path, "files-L64-0123")
  fd, file = scratch.mkstemp(tmp_path, "offline-v2-ab.jsonl")
  os.close(fd)
  host = scratch._host()
  for path, name in ((made, "files-L64-0123"), (file, "offline-v2-ab.jsonl")):
    assert path.parent == tmp_path
    assert path.name.startswith(f".{name}.tmp-{host}-{os.getpid()}-")
    found = scratch._NAME.fullmatch(path.name)
    assert (found["name"], found["host"], found["pid"]) == (
        name, host, str(os.getpid()))
  assert made.is_dir() and file.is_file()


def test_removes_what_dead_processes_left_never_a_live_ones(tmp_path):
  killed, killed_names = _maker(tmp_path)
  _end(killed, "kill")
  assert killed.returncode == -signal.SIGKILL
  live, live_names = _maker(tmp_path)
  own = scratch.mkdtemp(tmp_path, "mine")
  host = scratch._host()
  others = [f".d.tmp-other-host-{killed.pid}-abc12345",  # pids mean nothing
            ".d.tmp-abc12345",  # made by an older version: maker unknown
            "dataset", f".dataset.tmp-{host}-x-y"]
  for name in others:
    (tmp_path / name).mkdir()
  try:
    removed = scratch.remove_dead(tmp_path)
    assert sorted(p.name for p in removed) == sorted(killed_names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        live_names + [own.name] + others)
  finally:
    _end(live, "exit")
  # Its maker gone (without cleaning up), the live one's are removed too.
  assert sorted(p.name for p in scratch.remove_dead(tmp_path)) == sorted(
      live_names)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [own.name] + others)


def test_a_missing_directory_has_nothing_to_remove(tmp_path):
  assert scratch.remove_dead(tmp_path / "nope") == []
