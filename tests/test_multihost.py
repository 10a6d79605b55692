"""Two real processes on 127.0.0.1 read disjoint halves of every batch."""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from mlm_jax.data import records

HERE = pathlib.Path(__file__).parent


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_hosts_read_disjoint_shares_covering_the_split(tmp_path):
  n = 40  # 5 global batches of 8: exactly one epoch
  shards = []
  for s in range(3):  # uneven shards: 13, 13, 14 examples
    rows = range(s * 13, n if s == 2 else (s + 1) * 13)
    tokens = np.array([[r + 100] + [7] * 15 for r in rows], np.int32)
    path = tmp_path / f"train-{s}.array_record"
    records.write_shard(path, {"tokens": tokens,
                               "segment_ids": np.zeros_like(tokens),
                               "document_ids": np.ones_like(tokens)}, 1000)
    shards.append(str(path))
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "multihost_reader.py"), str(i), str(port),
       str(tmp_path / f"out{i}.txt"), *shards], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
  seen = [[[tuple(map(int, x.split(":"))) for x in line.split()]
           for line in (tmp_path / f"out{i}.txt").read_text().splitlines()]
          for i in range(2)]
  assert len(seen[0]) == len(seen[1]) == 5
  all_rows = []
  for step in range(5):
    a, b = seen[0][step], seen[1][step]
    assert len(a) == len(b) == 4
    assert not {r for r, _ in a} & {r for r, _ in b}  # disjoint
    # Together they are global batch `step`: stream positions 8s..8s+7.
    ids = sorted(i for _, i in a + b)
    assert ids == list(range(8 * step, 8 * step + 8))
    all_rows += [r for r, _ in a + b]
  assert sorted(all_rows) == [r + 100 for r in range(n)]  # whole split
