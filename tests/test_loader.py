"""The host loader: shuffled epochs, exact resume, host sharding, eval."""
import grain
import jax
import numpy as np
import pytest

from mlm_jax import tokenizer as tok
from mlm_jax.data import loader

N, L = 50, 6


def examples(n=N):
  return grain.MapDataset.source([
      {"tokens": np.arange(L, dtype=np.int32) + 10 + L * i,
       "positions": np.arange(L, dtype=np.int32)} for i in range(n)])


def row_ids(batch):
  return (batch["tokens"][:, 0] - 10) // L


def take(it, n):
  return [next(it) for _ in range(n)]


def test_each_epoch_is_a_new_permutation_of_all_examples():
  batches = take(loader.train_iterator(examples(), global_batch=10, seed=0),
                 10)
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
  a = next(loader.train_iterator(examples(), global_batch=10, seed=0))
  b = next(loader.train_iterator(examples(), global_batch=10, seed=1))
  assert not np.array_equal(row_ids(a), row_ids(b))


def test_resume_from_state_is_exact_even_with_another_batch_size():
  full = take(loader.train_iterator(examples(), global_batch=8, seed=3), 12)
  state = loader.state_after(0, 7, 8)
  resumed = take(loader.train_iterator(
      examples(), global_batch=8, seed=3, next_index=state["global_next_index"]),
      5)
  for a, b in zip(full[7:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # With another global batch the stream continues at the same example.
  bigger = next(loader.train_iterator(
      examples(), global_batch=16, seed=3, next_index=state["global_next_index"]))
  np.testing.assert_array_equal(
      bigger["example_id"], np.concatenate([full[7]["example_id"],
                                            full[8]["example_id"]]))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_split_each_global_batch(processes):
  full = take(loader.train_iterator(examples(), global_batch=8, seed=1), 9)
  shards = [take(loader.train_iterator(
      examples(), global_batch=8, seed=1, process_index=p,
      process_count=processes), 9) for p in range(processes)]
  for step in range(9):
    parts = [s[step] for s in shards]
    assert all(len(p["tokens"]) == 8 // processes for p in parts)
    got = np.concatenate([p["example_id"] for p in parts])
    assert len(set(got)) == 8  # disjoint
    assert sorted(got) == sorted(full[step]["example_id"])


def test_batch_must_split_over_processes():
  with pytest.raises(ValueError, match="not divisible"):
    loader.train_iterator(examples(), global_batch=6, seed=0, process_count=4)


def test_eval_batches_cover_split_once_in_order_with_pad_rows():
  batches = list(loader.eval_batches(examples(), global_batch=16))
  assert len(batches) == 4  # ceil(50 / 16)
  last = batches[-1]
  assert last["tokens"].shape == (16, L)
  np.testing.assert_array_equal(last["tokens"][2:], tok.PAD_ID)
  real = np.concatenate([b["tokens"] for b in batches])[:N]
  np.testing.assert_array_equal(real[:, 0], 10 + L * np.arange(N))
  ids = np.concatenate([b["example_id"] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(64))
  assert len(list(loader.eval_batches(examples(), global_batch=16,
                                      max_batches=2))) == 2


def test_eval_batches_split_over_processes():
  whole = list(loader.eval_batches(examples(), global_batch=16))
  parts = [list(loader.eval_batches(examples(), global_batch=16,
                                    process_index=p, process_count=2))
           for p in range(2)]
  for b, (p0, p1) in enumerate(zip(*parts)):
    ids = np.sort(np.concatenate([p0["example_id"], p1["example_id"]]))
    np.testing.assert_array_equal(ids, whole[b]["example_id"])


def test_interrupted_run_sees_the_examples_of_an_uninterrupted_one(tmp_path):
  # The loop's protocol: the data state saved with a checkpoint is computed
  # from the steps taken (the iterator itself runs ahead by its prefetch);
  # a new process restores it from the checkpoint and carries on.
  import jax.numpy as jnp
  from mlm_jax import checkpoint as ckpt_lib

  def run(steps, next_index=0):
    it = loader.train_iterator(examples(), global_batch=8, seed=2,
                               next_index=next_index, prefetch=64)
    return [next(it)["example_id"].tolist() for _ in range(steps)]

  uninterrupted = run(12)
  first = run(7)  # ... then the process dies after checkpointing step 7
  with ckpt_lib.Checkpointer(tmp_path, save_interval_steps=1, max_to_keep=2,
                             async_save=False) as c:
    c.save(7, {"w": jnp.ones(2)}, config={}, data=loader.state_after(0, 7, 8))
  with ckpt_lib.Checkpointer(tmp_path, save_interval_steps=1,
                             max_to_keep=2) as c:
    restored = c.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert restored.step == 7
  rest = run(5, restored.data[loader.STATE_KEY])
  assert first + rest == uninterrupted
