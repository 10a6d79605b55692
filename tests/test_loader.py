"""The host loader: shuffled epochs, exact resume, host sharding, eval."""
import numpy as np
import pytest

from mlm_jax import tokenizer as tok
from mlm_jax.data import loader

N, L = 50, 6


def arrays():
  tokens = np.arange(N * L, dtype=np.int32).reshape(N, L) + 10
  return {"tokens": tokens, "positions": np.tile(np.arange(L, dtype=np.int32),
                                                 (N, 1))}


def row_ids(batch):
  return (batch["tokens"][:, 0] - 10) // L


def take(it, n):
  return [next(it) for _ in range(n)]


def test_each_epoch_is_a_new_permutation_of_all_examples():
  batches = take(loader.train_batches(arrays(), global_batch=10, seed=0), 10)
  ids = np.concatenate([row_ids(b) for b in batches])
  first, second = ids[:N], ids[N:]
  assert sorted(first) == list(range(N)) and sorted(second) == list(range(N))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(N))  # shuffled
  # example_id is the position in the global stream: fresh masks per epoch.
  np.testing.assert_array_equal(
      np.concatenate([b["example_id"] for b in batches]), np.arange(100))
  assert batches[0]["example_id"].dtype == np.uint32


def test_seed_changes_order():
  a = next(loader.train_batches(arrays(), global_batch=10, seed=0))
  b = next(loader.train_batches(arrays(), global_batch=10, seed=1))
  assert not np.array_equal(row_ids(a), row_ids(b))


def test_resume_at_a_step_is_exact():
  full = take(loader.train_batches(arrays(), global_batch=8, seed=3), 12)
  resumed = take(loader.train_batches(arrays(), global_batch=8, seed=3,
                                      start_step=7), 5)
  for a, b in zip(full[7:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_split_each_global_batch(processes):
  full = take(loader.train_batches(arrays(), global_batch=8, seed=1), 9)
  shards = [take(loader.train_batches(
      arrays(), global_batch=8, seed=1, process_index=p,
      process_count=processes), 9) for p in range(processes)]
  for step in range(9):
    parts = [s[step] for s in shards]
    assert all(len(p["tokens"]) == 8 // processes for p in parts)
    got = np.concatenate([p["example_id"] for p in parts])
    assert len(set(got)) == 8  # disjoint
    assert sorted(got) == sorted(full[step]["example_id"])


def test_batch_must_split_over_processes():
  with pytest.raises(ValueError, match="not divisible"):
    loader.train_batches(arrays(), global_batch=6, seed=0, process_count=4)


def test_eval_batches_cover_split_once_in_order_with_pad_rows():
  batches = list(loader.eval_batches(arrays(), global_batch=16))
  assert len(batches) == 4  # ceil(50 / 16)
  last = batches[-1]
  assert last["tokens"].shape == (16, L)
  np.testing.assert_array_equal(last["tokens"][2:], tok.PAD_ID)
  real = np.concatenate([b["tokens"] for b in batches])[:N]
  np.testing.assert_array_equal(real, arrays()["tokens"])
  ids = np.concatenate([b["example_id"] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(64))
  again = list(loader.eval_batches(arrays(), global_batch=16))
  np.testing.assert_array_equal(again[1]["tokens"], batches[1]["tokens"])
  assert len(list(loader.eval_batches(arrays(), global_batch=16,
                                      max_batches=2))) == 2


def test_eval_batches_split_over_processes():
  whole = list(loader.eval_batches(arrays(), global_batch=16))
  parts = [list(loader.eval_batches(arrays(), global_batch=16,
                                    process_index=p, process_count=2))
           for p in range(2)]
  for b, (p0, p1) in enumerate(zip(*parts)):
    ids = np.sort(np.concatenate([p0["example_id"], p1["example_id"]]))
    np.testing.assert_array_equal(ids, whole[b]["example_id"])
