"""Two parallel wrappers of the one pure step: pmap, and jit over a mesh.

Both expose the same small interface, so the training loop does not care
which one runs:

  init_state()          the initial state, placed on the devices
  put_batch(batch)      a host (numpy) batch of this process -> device batch
  train_step(s, b)      -> (state, metrics)
  lower_train_step(s, b) the lowered step (to time compilation apart)
  eval_step(s, b)       -> metrics
  predict(s, b)         -> per-example predictions of objectives that make
                           them (fine-tuning tasks: `objective.predict`),
                           one global array
  to_global(s)          the state as one global pytree (for checkpoints)
  abstract_state()      shapes, dtypes and shardings to restore a checkpoint
  from_global(s)        a restored global state -> this wrapper's layout
  fetch(metrics)        device metrics -> host numpy scalars

`PmapParallel` is classic data parallelism: the state is replicated with a
leading device axis and the step sees a per-device view. `MeshParallel`
jits the step over `Mesh(('data', 'fsdp'))` with a global view: the batch is
split over both axes, and parameters and optimizer state are sharded over
'fsdp' (when it is > 1), replicated over 'data'.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mlm_jax import step as step_lib

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Parameters smaller than this stay replicated under FSDP: sharding them
# would cost more in collectives than it saves in memory.
MIN_SHARDED_SIZE = 2 ** 14


class _Wrapper:
  """What both wrappers share: the compiled steps, called the same way."""
  _train: Callable
  _eval: Callable

  def train_step(self, state, batch):
    return self._train(state, batch)

  def lower_train_step(self, state, batch):
    return self._train.lower(state, batch)

  def eval_step(self, state, batch):
    return self._eval(state.params, batch)

  def predict(self, state, batch):
    return self._predict(state.params, batch)


class PmapParallel(_Wrapper):
  """Data parallelism with `jax.pmap` over the local devices, axis 'data'."""

  def __init__(self, task: step_lib.Task, seq_len: int):
    self.task, self.seq_len = task, seq_len
    self.devices = jax.local_devices()
    self._mesh = jax.sharding.Mesh(np.array(self.devices), ("devices",))
    self._stacked = NamedSharding(self._mesh, P("devices"))
    self._train = jax.pmap(
        functools.partial(step_lib.train_step, task=task, axis_name=DATA_AXIS),
        axis_name=DATA_AXIS, donate_argnums=(0,))
    self._eval = jax.pmap(
        functools.partial(step_lib.eval_step, task=task, axis_name=DATA_AXIS),
        axis_name=DATA_AXIS)
    if hasattr(task.objective, "predict"):
      predict = jax.pmap(task.objective.predict, axis_name=DATA_AXIS)
      self._predict = lambda params, batch: jax.tree.map(
          lambda x: x.reshape((-1,) + x.shape[2:]), predict(params, batch))

  @property
  def num_devices(self) -> int:
    return jax.device_count()

  def _replicate(self, tree):
    n = len(self.devices)
    return jax.device_put(
        jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + x.shape),
                     tree), self._stacked)

  def init_state(self) -> step_lib.TrainState:
    # Initialised directly as the stacked [devices, ...] replicas: a round
    # trip through host memory would hold three copies of the state at once
    # (on CPU, where host memory is device memory).
    n = len(self.devices)
    stack = lambda x: jnp.broadcast_to(x, (n,) + x.shape)
    init = jax.jit(lambda: jax.tree.map(
        stack, step_lib.init_state(self.task, self.seq_len)),
                   out_shardings=self._stacked)
    return init()

  def put_batch(self, batch: dict[str, np.ndarray]):
    n = len(self.devices)
    return jax.device_put(
        {k: v.reshape((n, v.shape[0] // n) + v.shape[1:])
         for k, v in batch.items()}, self._stacked)

  def to_global(self, state):
    return jax.tree.map(lambda x: x[0], state)

  def abstract_state(self):
    shapes = jax.eval_shape(functools.partial(
        step_lib.init_state, self.task, self.seq_len))
    sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes)

  def from_global(self, state):
    return self._replicate(jax.device_get(state))

  def fetch(self, metrics):
    """Device metrics (any pytree of them) -> the same tree of numpy."""
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(metrics))


def fsdp_spec(path, shape, fsdp: int,
              min_size: int = MIN_SHARDED_SIZE) -> P:
  """Shards the largest dimension divisible by `fsdp` over 'fsdp'.

  Small leaves stay replicated, and the leading [layers] axis of parameters
  stacked by nn.scan is never sharded (the scan walks along it).
  """
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  stacked = any(getattr(k, "key", None) == "layers" for k in path)
  dims = [i for i in range(int(stacked), len(shape)) if shape[i] % fsdp == 0]
  if not dims:
    return P()
  best = max(dims, key=lambda i: shape[i])
  return P(*[FSDP_AXIS if i == best else None for i in range(len(shape))])


class MeshParallel(_Wrapper):
  """`jax.jit` over a ('data', 'fsdp') mesh of all devices (all hosts)."""

  def __init__(self, task: step_lib.Task, seq_len: int, fsdp: int = 1,
               min_sharded_size: int = MIN_SHARDED_SIZE):
    self.task, self.seq_len = task, seq_len
    devices = np.array(jax.devices()).reshape(-1, fsdp)
    self.mesh = jax.sharding.Mesh(
        devices, (DATA_AXIS, FSDP_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2)
    shapes = jax.eval_shape(functools.partial(
        step_lib.init_state, task, seq_len))
    self.state_sharding = jax.tree_util.tree_map_with_path(
        lambda p, s: NamedSharding(
            self.mesh, fsdp_spec(p, s.shape, fsdp, min_sharded_size)),
        shapes)
    self._abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes, self.state_sharding)
    self.batch_sharding = NamedSharding(self.mesh, P((DATA_AXIS, FSDP_AXIS)))
    replicated = NamedSharding(self.mesh, P())
    self._train = jax.jit(
        functools.partial(step_lib.train_step, task=task),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, replicated), donate_argnums=(0,))
    self._eval = jax.jit(
        functools.partial(step_lib.eval_step, task=task),
        in_shardings=(self.state_sharding.params, self.batch_sharding),
        out_shardings=replicated)
    if hasattr(task.objective, "predict"):
      self._predict = jax.jit(
          task.objective.predict,
          in_shardings=(self.state_sharding.params, self.batch_sharding),
          out_shardings=replicated)

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def init_state(self) -> step_lib.TrainState:
    # Initialised directly in its sharded layout: a large model is never
    # materialised whole on one device.
    return jax.jit(functools.partial(step_lib.init_state, self.task,
                                     self.seq_len),
                   out_shardings=self.state_sharding)()

  def put_batch(self, batch: dict[str, np.ndarray]):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in batch.items()}

  def to_global(self, state):
    return state

  def abstract_state(self):
    return self._abstract

  def from_global(self, state):
    return jax.device_put(state, self.state_sharding)

  def fetch(self, metrics):
    return jax.tree.map(np.asarray, jax.device_get(metrics))


def make_parallel(mode: str, task: step_lib.Task, seq_len: int,
                  fsdp: int = 1):
  """The wrapper named by `config.parallel.mode` ('pmap' or 'jit')."""
  if mode == "pmap":
    return PmapParallel(task, seq_len)
  return MeshParallel(task, seq_len, fsdp)
