"""Host batches from packed examples, with grain: shuffled, sharded, resumable.

The training stream is a function of (seed, step) alone: grain shuffles the
examples with a new permutation every epoch, the stream is cut into global
batches, and process p of n takes the elements p, p + n, ... of each global
batch. So the batch of step s is known without replaying steps 0..s-1: a
resumed run starts at its checkpoint's step and sees exactly the examples it
would have seen, and so does a run on another number of hosts.

Every example carries `example_id`, its position in the global stream
(mod 2**32), from which the step derives its masking key: an example seen in
two epochs gets two different masks.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import grain
import numpy as np

from mlm_jax import tokenizer as tok

Batch = dict[str, np.ndarray]


class _Rows:
  """A random-access view of row i of every array in a dict."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self._arrays = dict(arrays)
    self._len = len(next(iter(self._arrays.values())))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> Batch:
    return {k: np.asarray(v[i]) for k, v in self._arrays.items()}


def _with_id(index: int, example: Batch) -> Batch:
  return {**example, "example_id": np.uint32(index % 2 ** 32)}


def train_batches(arrays: Mapping[str, np.ndarray], *, global_batch: int,
                  seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1,
                  prefetch: int = 4) -> Iterator[Batch]:
  """Endless per-process batches of the shuffled training stream.

  Args:
    arrays: field -> [num_examples, seq_len] int32 (e.g. memory-mapped).
    global_batch: examples per step over all processes.
    seed: shuffling seed (a new permutation per epoch).
    start_step: first step to produce (the step of a restored checkpoint).
    process_index, process_count: this host's share of each global batch.
    prefetch: batches prepared ahead in background threads.
  Yields:
    dicts of [global_batch // process_count, ...] arrays: the fields of
    `arrays` and `example_id` uint32.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{process_count} processes")
  ds = (grain.MapDataset.source(_Rows(arrays)).shuffle(seed=seed).repeat()
        .map_with_index(_with_id))
  ds = ds[process_index::process_count].batch(global_batch // process_count)
  ds = ds[start_step:]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                            prefetch_buffer_size=prefetch))
  return iter(it)


def eval_batches(arrays: Mapping[str, np.ndarray], *, global_batch: int,
                 max_batches: int = 0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """The held-out split in order, in fixed batches, the last one padded.

  Padding rows are all [PAD]: they have nothing to mask and so add nothing
  to the metrics. `example_id` is the index in the split, so the evaluation
  masks are the same at every evaluation and in every run.
  """
  n = len(next(iter(arrays.values())))
  num_batches = -(-n // global_batch)
  if max_batches:
    num_batches = min(num_batches, max_batches)
  for b in range(num_batches):
    ids = np.arange(b * global_batch, (b + 1) * global_batch)
    ids = ids[process_index::process_count]
    valid = ids < n
    batch = {k: np.where(valid[:, None], np.asarray(v[np.minimum(ids, n - 1)]),
                         tok.PAD_ID if k == "tokens" else 0).astype(np.int32)
             for k, v in arrays.items()}
    batch["example_id"] = ids.astype(np.uint32)
    yield batch
