"""Tests of mlm_jax.checkpoint: round trips, policies, topology, damage."""
import gc
import logging
import os
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

from mlm_jax import checkpoint as ckpt

# A failed orbax restore leaves read coroutines unfinished and tensorstore
# callbacks aimed at orbax's closed event loop; Python reports them, when they
# are garbage-collected, as unraisable exceptions. Harmless; collected (and
# ignored) at the end of the test that caused them.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(
        "ignore:coroutine .* was never awaited:RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def _collect_garbage():
  yield
  gc.collect()


CONFIG = {"model": {"hidden": 4, "layers": [1, 2]}, "lr": 1e-3, "name": "tiny"}


def make_state(rows=8, seed=0, step=3):
  """A small train state: int step, params of two dtypes, adam state."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {
      "dense": {"kernel": jax.random.normal(k1, (rows, 4)),
                "bias": jnp.arange(4, dtype=jnp.bfloat16)},
      "embed": jax.random.normal(k2, (16, 4)),
  }
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)  # non-zero mu, nu
  return {"step": jnp.array(step, jnp.int32), "params": params,
          "opt_state": opt_state}


def one_device():
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def four_device_mesh():
  return Mesh(np.array(jax.devices()[:4]), ("fsdp",))


def fsdp_sharding(mesh):
  """Shards 2-d arrays along their first dim; replicates the rest."""
  return lambda x: NamedSharding(mesh, P("fsdp") if x.ndim == 2 else P())


def abstract(state, sharding=None):
  sharding = sharding or (lambda x: one_device())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x)),
      state)


def place(state, sharding):
  return jax.tree.map(lambda x: jax.device_put(x, sharding(x)), state)


def assert_trees_equal(actual, expected):
  assert (jax.tree_util.tree_structure(actual)
          == jax.tree_util.tree_structure(expected))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.fixture
def workdir(tmp_path):
  return tmp_path / "ckpt"


def open_ckpt(workdir, **kw):
  kw = {"save_interval_steps": 1, "max_to_keep": None, "async_save": False,
        **kw}
  return ckpt.Checkpointer(workdir, **kw)


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip(workdir, async_save):
  state = make_state()
  expected = jax.tree.map(np.asarray, state)
  with open_ckpt(workdir, async_save=async_save) as c:
    assert c.save(3, state, config=CONFIG)
    if async_save:
      # The loop may donate the state right after save returns.
      jax.tree.map(lambda x: x.delete(), state)
      c.wait()
    assert workdir.is_dir() and c.latest_step() == 3
    restored = c.restore(abstract(make_state()))
  assert restored.step == 3
  assert restored.config == CONFIG
  assert restored.data is None
  assert_trees_equal(restored.state, expected)
  assert isinstance(restored.state["opt_state"][0], optax.ScaleByAdamState)


def test_no_checkpoint_returns_none(workdir):
  with open_ckpt(workdir) as c:
    assert c.latest_step() is None and c.all_steps() == []
    assert c.restore(abstract(make_state())) is None


def test_data_item_round_trips_when_given(workdir):
  data = {"epoch": 1, "position": 17, "seed": 0}
  with open_ckpt(workdir) as c:
    c.save(1, make_state(), config=CONFIG)
    c.save(2, make_state(), config=CONFIG, data=data)
    assert c.restore(abstract(make_state())).data == data
    assert c.restore(abstract(make_state()), step=1).data is None


def test_interval_and_max_to_keep(workdir):
  state = make_state()
  with open_ckpt(workdir, save_interval_steps=2, max_to_keep=2,
                 async_save=True) as c:
    saved = [c.save(s, state, config=CONFIG) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    c.wait()
    assert c.all_steps() == [4, 6]
    assert c.save(7, state, config=CONFIG, force=True)
    assert not c.save(7, state, config=CONFIG, force=True)  # already there
    c.wait()
    assert c.all_steps() == [6, 7]
  assert sorted(os.listdir(workdir)) == ["6", "7"]
  with open_ckpt(workdir) as c:  # a new process sees the same steps
    assert c.all_steps() == [6, 7] and c.latest_step() == 7


@pytest.mark.parametrize("direction", ["1_to_4", "4_to_1"])
def test_restore_onto_another_topology(workdir, direction):
  mesh_sharding = fsdp_sharding(four_device_mesh())
  single_sharding = lambda x: one_device()
  save_sharding, restore_sharding = (
      (single_sharding, mesh_sharding) if direction == "1_to_4"
      else (mesh_sharding, single_sharding))
  state = place(make_state(), save_sharding)
  expected = jax.tree.map(np.asarray, state)
  with open_ckpt(workdir, async_save=True) as c:
    c.save(5, state, config=CONFIG)
    restored = c.restore(abstract(make_state(), restore_sharding))
  assert_trees_equal(restored.state, expected)
  for leaf in jax.tree.leaves(restored.state):
    assert leaf.sharding == restore_sharding(leaf)
  kernel = restored.state["params"]["dense"]["kernel"]
  n_devices = 4 if direction == "1_to_4" else 1
  assert len(kernel.sharding.device_set) == n_devices
  assert {s.data.shape for s in kernel.addressable_shards} == {
      (8 // n_devices, 4)}


def truncate_array_files(step_dir):
  data_dir = step_dir / "state" / "d"
  files = list(data_dir.iterdir())
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def delete_array_files(step_dir):
  for f in (step_dir / "state" / "d").iterdir():
    f.unlink()


def delete_tree_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def remove_config_item(step_dir):  # an incompletely copied step directory
  shutil.rmtree(step_dir / "config")


def _largest_array_file(step_dir):
  """The array data (ocdbt.process_*/d/), not the b-tree nodes (state/d/)."""
  return max((step_dir / "state").glob("ocdbt.process_*/d/*"),
             key=lambda f: f.stat().st_size)


def overwrite_4kib_in_place(step_dir):
  """Random bytes over 4 KiB of an array file: same size, same name."""
  f = _largest_array_file(step_dir)
  size = f.stat().st_size
  offset = max(0, size // 2 - 2048)
  with open(f, "r+b") as fh:
    fh.seek(offset)
    fh.write(np.random.default_rng(0).bytes(min(4096, size - offset)))
  assert f.stat().st_size == size


def flip_one_bit(step_dir):
  f = _largest_array_file(step_dir)
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0x08
  f.write_bytes(bytes(data))


DAMAGES = [truncate_array_files, delete_array_files, delete_tree_metadata,
           remove_config_item]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_damaged_latest_falls_back_to_previous(workdir, damage, caplog):
  with open_ckpt(workdir) as c:
    for step in (1, 2, 3):
      c.save(step, make_state(seed=step, step=step), config=CONFIG)
  damage(workdir / "3")
  with open_ckpt(workdir) as c:
    assert c.latest_step() == 3
    with caplog.at_level(logging.WARNING):
      restored = c.restore(abstract(make_state()))
    assert restored.step == 2
    assert_trees_equal(restored.state,
                       jax.tree.map(np.asarray, make_state(seed=2, step=2)))
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING]
    assert any("step 3" in m and "damaged" in m for m in warnings), warnings
    # The damaged step is moved aside (kept for inspection), so the resumed
    # run saves step 3 again instead of skipping it.
    assert c.all_steps() == [1, 2]
    assert [p for p in os.listdir(workdir) if p.startswith("3.damaged")]
    assert c.save(3, make_state(seed=4), config=CONFIG)
    assert c.restore(abstract(make_state())).step == 3


def test_nothing_restorable_raises_listing_steps(workdir):
  with open_ckpt(workdir) as c:
    for step in (1, 2):
      c.save(step, make_state(), config=CONFIG)
  truncate_array_files(workdir / "1")
  remove_config_item(workdir / "2")
  with open_ckpt(workdir) as c:
    with pytest.raises(ckpt.CheckpointRestoreError,
                       match=r"step 2: .*step 1: ") as info:
      c.restore(abstract(make_state()))
    assert info.value.__cause__ is not None
    assert c.all_steps() == [1, 2]  # nothing moved when nothing restored


def test_interrupted_save_is_never_latest(workdir):
  with open_ckpt(workdir) as c:
    c.save(2, make_state(), config=CONFIG)
  # What a save killed before its rename leaves: a tmp dir, maybe complete.
  tmp = workdir / "5.orbax-checkpoint-tmp"
  shutil.copytree(workdir / "2", tmp)
  with open_ckpt(workdir) as c:
    assert c.all_steps() == [2]
    assert c.restore(abstract(make_state())).step == 2
    c.save(3, make_state(), config=CONFIG)  # cleans up leftovers first
    assert c.all_steps() == [2, 3]
  assert sorted(os.listdir(workdir)) == ["2", "3"]


@pytest.mark.parametrize("where", ["params", "opt_state"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_state_is_refused(workdir, where, value):
  good = make_state()
  bad = make_state()
  if where == "params":
    bad["params"]["embed"] = bad["params"]["embed"].at[3, 1].set(value)
    name = "['params']['embed']"
  else:
    mu = bad["opt_state"][0].mu
    mu["dense"]["bias"] = mu["dense"]["bias"].at[0].set(value)
    name = "['opt_state'][0].mu['dense']['bias']"
  with open_ckpt(workdir, max_to_keep=1, async_save=True) as c:
    assert c.save(1, good, config=CONFIG)
    with pytest.raises(ckpt.NonFiniteStateError, match="NaN/Inf") as info:
      c.save(2, bad, config=CONFIG, force=True)
    assert name in str(info.value)
    c.wait()
    assert c.all_steps() == [1]  # step 1 was not rotated away
    restored = c.restore(abstract(make_state()))
  assert restored.step == 1
  assert_trees_equal(restored.state, jax.tree.map(np.asarray, good))


def test_check_finite_ignores_integers_and_passes_finite():
  ckpt.check_finite(make_state())
  ckpt.check_finite({"count": jnp.array(2**31 - 1, jnp.int32), "none": None})
  with pytest.raises(ckpt.NonFiniteStateError):
    ckpt.check_finite({"x": jnp.array([1.0, -np.inf], jnp.bfloat16)})


def test_shape_mismatch_is_an_error_not_a_fallback(workdir):
  with open_ckpt(workdir) as c:
    c.save(1, make_state(rows=12), config=CONFIG)  # would match the target
    c.save(2, make_state(rows=8), config=CONFIG)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
      c.restore(abstract(make_state(rows=12)))
    message = str(info.value)
    assert "\n" not in message and "--workdir" in message
    assert "step 2" in message
    assert "params/dense/kernel has shape (8, 4)" in message
    assert info.value.__cause__ is not None  # orbax's own error, chained
    assert c.all_steps() == [1, 2]  # nothing moved aside


def test_structure_mismatch_is_an_error(workdir):
  target = make_state()
  target["params"]["extra"] = jnp.zeros((2,))
  del target["step"]
  with open_ckpt(workdir) as c:
    c.save(1, make_state(), config=CONFIG)
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match="--workdir") as info:
      c.restore(abstract(target))
  message = str(info.value)
  assert "params/extra missing from the checkpoint" in message
  assert "step in the checkpoint but not in the state" in message


def big_state(seed):
  """Mostly one 256 KiB array, so damage at the middle of the largest file
  lands in raw array bytes (which only a checksum can tell are wrong)."""
  return {"step": jnp.array(seed, jnp.int32),
          "params": {"w": jax.random.normal(jax.random.key(seed), (256, 256))}}


@pytest.mark.parametrize("damage", [overwrite_4kib_in_place, flip_one_bit],
                         ids=lambda f: f.__name__)
def test_damaged_array_bytes_are_caught(workdir, damage, caplog):
  """Same size, same name, bytes changed in place. The array data is zstd
  compressed: random bytes usually break its decoding (tensorstore's
  error); one flipped bit decodes to wrong numbers, which only the
  checksum catches."""
  with open_ckpt(workdir) as c:
    for step in (1, 2):
      c.save(step, big_state(step), config=CONFIG)
  damage(workdir / "2")
  with open_ckpt(workdir) as c:
    with caplog.at_level(logging.WARNING):
      restored = c.restore(abstract(big_state(0)))
  assert restored.step == 1
  assert_trees_equal(restored.state, jax.tree.map(np.asarray, big_state(1)))
  warnings = " ".join(r.getMessage() for r in caplog.records)
  assert "Checkpoint at step 2" in warnings and "damaged" in warnings
  if damage is flip_one_bit:
    assert ("1 of 2 arrays differ from the checksums written with them "
            "(['params']['w'])") in warnings, warnings
  assert [p for p in os.listdir(workdir) if p.startswith("2.damaged")]


def test_checksums_do_not_depend_on_the_sharding():
  from mlm_jax import checksums  # pylint: disable=import-outside-toplevel
  state = make_state()
  sharded = place(state, fsdp_sharding(four_device_mesh()))
  assert checksums.summarize(state) == checksums.summarize(sharded)


@pytest.mark.parametrize("saved_fused", [True, False])
def test_the_optimizer_layout_change_is_a_mismatch_both_ways(workdir,
                                                             saved_fused):
  """Never reported as damage (nothing moved aside), in either direction."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mlm_jax import optim  # pylint: disable=import-outside-toplevel
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}}
  def state(fused):
    o = ml_collections.ConfigDict(dict(
        lr=1e-3, warmup_steps=1, decay="linear", end_lr_ratio=0.0,
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0,
        fused=fused))
    return {"step": jnp.asarray(1), "params": params,
            "opt_state": optim.make_optimizer(o, 10).init(params)}
  with open_ckpt(workdir) as c:
    c.save(1, state(saved_fused), config=CONFIG)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"optim\.fused"):
      c.restore(abstract(state(not saved_fused)))
    assert c.all_steps() == [1]
    assert c.restore(abstract(state(saved_fused))).step == 1


def test_max_to_keep_zero_keeps_every_checkpoint(workdir):
  with open_ckpt(workdir, max_to_keep=0) as c:
    for step in range(1, 6):
      c.save(step, make_state(), config=CONFIG)
    assert c.all_steps() == [1, 2, 3, 4, 5]


FAILING_SAVE = """
import os, resource, signal, sys
import jax, jax.numpy as jnp
from mlm_jax import checkpoint as ckpt
state = {"w": jax.random.normal(jax.random.key(0), (256, 256))}
with ckpt.Checkpointer(sys.argv[1], save_interval_steps=1, max_to_keep=1,
                       async_save=True) as c:
  c.save(1, state, config={})
  c.wait()
  # From here no file may grow past 64 KiB: the next save's writes fail.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
  c.save(2, state, config={})
  try:
    for _ in range(200):
      c.check_saves()  # what the training loop calls every step
      jax.block_until_ready(state["w"] + 1)
    c.wait()
  except ckpt.CheckpointSaveError as e:
    print("SAVE_ERROR", e, flush=True)
  print("STEPS", c.all_steps(), flush=True)
"""


def test_a_failed_save_is_one_error_and_keeps_the_previous_checkpoint(
    workdir):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.run(
      [sys.executable, "-c", FAILING_SAVE, str(workdir)], capture_output=True,
      text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.path.dirname(
          os.path.dirname(os.path.abspath(__file__)))})
  out = proc.stdout
  assert "SAVE_ERROR Saving the checkpoint of step 2 to" in out, proc.stderr
  assert "failed: File too large. Training stopped; the checkpoint of " \
         "step 1 is intact." in out
  assert "STEPS [1]" in out
  # max_to_keep=1 did not delete step 1 for the failed step 2, and the
  # failed step's partial files are gone.
  assert sorted(os.listdir(workdir)) == ["1"]
  with open_ckpt(workdir) as c:
    restored = c.restore(abstract({"w": jnp.zeros((256, 256))}))
  assert restored.step == 1
