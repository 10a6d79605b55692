"""Host batches from prepared examples, with grain: shuffled, sharded by
host, prefetched, resumable to the exact example.

The training stream is the examples shuffled with a new permutation every
epoch and repeated without end. grain's `ElasticIterator` cuts it into
global batches; process p of n takes the elements p, p + n, ... of each, so
the hosts read disjoint examples whose union is the global batch. Its whole
state is `global_next_index`, the stream position of the next batch: the
same on every host, independent of the number of hosts, and saved in each
checkpoint, so a resumed run continues with exactly the examples it would
have seen (even with another number of hosts or another batch size).

Every example carries `example_id`, its stream position (mod 2**32), from
which the step derives its masking key: an example seen in two epochs gets
two different masks.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

Batch = dict[str, np.ndarray]
STATE_KEY = "global_next_index"


def _with_id(index: int, example: Batch) -> Batch:
  return {**example, "example_id": np.uint32(index % 2 ** 32)}


def train_iterator(examples: grain.MapDataset, *, global_batch: int,
                   seed: int, next_index: int = 0, process_index: int = 0,
                   process_count: int = 1, threads: int = 4,
                   prefetch: int = 8) -> grain.DatasetIterator:
  """Endless per-process batches of the shuffled training stream.

  Args:
    examples: random access to the decoded training examples.
    global_batch: examples per step over all processes.
    seed: shuffling seed (a new permutation per epoch).
    next_index: stream position to start at (a checkpoint's data state).
    process_index, process_count: this host's share of each global batch.
    threads, prefetch: background reading: threads, and examples read ahead.
  Returns:
    An iterator of dicts of [global_batch // process_count, ...] arrays: the
    example fields and `example_id` uint32.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{process_count} processes")
  stream = examples.shuffle(seed=seed).repeat().map_with_index(_with_id)
  it = iter(grain.experimental.ElasticIterator(
      stream, global_batch,
      grain.sharding.ShardOptions(process_index, process_count),
      read_options=grain.ReadOptions(num_threads=threads,
                                     prefetch_buffer_size=prefetch)))
  it.set_state({STATE_KEY: next_index})
  return it


def eval_batches(examples: grain.MapDataset, *, global_batch: int,
                 max_batches: int = 0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """The held-out split in order, in fixed batches, the last one padded.

  Padding rows are all [PAD]: they have nothing to mask and so add nothing
  to the metrics. `example_id` is the index in the split, so the evaluation
  masks are the same at every evaluation and in every run.
  """
  n = len(examples)
  num_batches = -(-n // global_batch)
  if max_batches:
    num_batches = min(num_batches, max_batches)
  blank = {k: np.zeros_like(v) for k, v in examples[0].items()}
  for b in range(num_batches):
    ids = np.arange(b * global_batch, (b + 1) * global_batch)
    ids = ids[process_index::process_count]
    rows = [examples[int(i)] if i < n else blank for i in ids]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["example_id"] = ids.astype(np.uint32)
    yield batch


def state_after(next_index: int, steps: int, global_batch: int) -> dict:
  """The data state after `steps` more steps (what a checkpoint stores).

  Computed, not read from the iterator: the iterator runs ahead of the
  step by its prefetch depth.
  """
  return {STATE_KEY: next_index + steps * global_batch}
