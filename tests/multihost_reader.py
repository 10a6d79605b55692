"""One host of the two-process loader test (run by test_multihost.py).

usage: multihost_reader.py PROCESS_ID PORT OUT SHARD...
Joins a 2-process JAX cluster on 127.0.0.1, reads its share of one epoch
of the shards with the training loader, and writes the first token of each
example it saw (one line per step) to OUT.
"""
import sys

import jax

from mlm_jax.data import loader
from mlm_jax.data import records


def main(process_id, port, out, *shards):
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=int(process_id))
  assert jax.process_count() == 2
  examples = records.source(shards, 16, 1000)
  it = loader.train_iterator(
      examples, global_batch=8, seed=5, process_index=jax.process_index(),
      process_count=jax.process_count())
  with open(out, "w") as f:
    for _ in range(len(examples) // 8):
      batch = next(it)
      f.write(" ".join(f"{t}:{i}" for t, i in zip(
          batch["tokens"][:, 0], batch["example_id"])) + "\n")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
