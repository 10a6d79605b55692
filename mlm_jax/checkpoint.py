"""Checkpoints: one orbax step directory holds the full state of a run.

Items of a step directory (`<workdir>/<step>/<item>`): `state`, the train state
pytree (step, params, optimizer state; sharded or replicated); `config`, the
run config (JSON); `data`, the data-iterator state (JSON, when given);
`progress`, the best held-out loss and early-stopping counters (JSON, when
given; `early_stopping.Progress`).

A state holding NaN/Inf is never saved, so a diverged run cannot rotate good
checkpoints away. Restores go into the caller's abstract state (shapes, dtypes,
shardings), so a checkpoint written on one topology restores onto another.

Interrupted saves: orbax writes a step into `<step>.orbax-checkpoint-tmp` and
renames it when complete (local disks), or writes `commit_success.txt` last
(GCS). Unfinalised steps are never listed as steps; their leftovers are
removed when a `Checkpointer` opens the directory. A finalised step that is
damaged later is moved aside by `restore`, which falls back to the step before.
"""
import time
from typing import Any, NamedTuple

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

# Item name -> (save args, restore args). To add an item, add it here and pass
# it in `Checkpointer.save`; `restore` restores whatever the step holds.
# NOTE: JsonSave writes from the primary process only; a per-process item (the
# grain iterator state on several hosts) needs a per-process handler.
ITEMS = {
    "state": (ocp.args.StandardSave, ocp.args.StandardRestore),
    "config": (ocp.args.JsonSave, ocp.args.JsonRestore),
    "data": (ocp.args.JsonSave, ocp.args.JsonRestore),
    "progress": (ocp.args.JsonSave, ocp.args.JsonRestore),
}
REQUIRED_ITEMS = ("state", "config")


class NonFiniteStateError(ValueError):
  """The state to save holds NaN or Inf values."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree structure or shapes differ from the abstract state."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint in the directory could be restored."""


class Restored(NamedTuple):
  step: int
  state: PyTree
  config: dict
  # The data-iterator state; None when the checkpoint holds none.
  data: dict | None
  # Best loss and early-stopping counters; None when the checkpoint has none.
  progress: dict | None = None


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  """[len(leaves)] bool array: whether each leaf is all finite."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def check_finite(state: PyTree) -> None:
  """Raises NonFiniteStateError if a floating leaf of `state` has NaN/Inf.

  One jitted reduction on device and a single host fetch of one bool per leaf.
  """
  path_leaves = [
      (path, x) for path, x in jax.tree_util.tree_leaves_with_path(state)
      if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  if not path_leaves:
    return
  flags = np.asarray(_finite_flags([x for _, x in path_leaves]))
  if not flags.all():
    bad = [jax.tree_util.keystr(p) for (p, _), ok in zip(path_leaves, flags)
           if not ok]
    raise NonFiniteStateError(
        f"Refusing to save a state with NaN/Inf values in {len(bad)} of "
        f"{len(flags)} floating arrays: {', '.join(bad[:10])}"
        f"{' ...' if len(bad) > 10 else ''}. The run has diverged; existing "
        "checkpoints are left untouched.")


def _brief(e: Exception) -> str:
  """The exception's type and first line (tensorstore errors span pages)."""
  line = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {line.split(' [tensorstore_spec=')[0][:500]}"


def _mismatch(abstract_state: PyTree, tree_metadata: PyTree) -> list[str]:
  """Differences between the abstract state and a checkpoint's metadata."""
  want = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract_state))
  have = ocp.tree.to_flat_dict(tree_metadata)
  name = "/".join
  problems = [f"{name(k)} missing from the checkpoint" for k in want
              if k not in have]
  problems += [f"{name(k)} in the checkpoint but not in the state" for k in have
               if k not in want]
  problems += [
      f"{name(k)} has shape {tuple(have[k].shape)} in the checkpoint but "
      f"{tuple(want[k].shape)} in the state"
      for k in want if k in have and
      tuple(have[k].shape) != tuple(want[k].shape)]
  return problems


class Checkpointer:
  """Saves and restores full-state checkpoints in one directory.

  Call every method from every process (orbax synchronises the hosts).
  """

  def __init__(self, directory: str | epath.PathLike, *,
               save_interval_steps: int, max_to_keep: int | None,
               async_save: bool = True):
    """`max_to_keep` None keeps every checkpoint."""
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps={save_interval_steps} must be >= 1")
    self.directory = epath.Path(directory)
    self._barriers = 0
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, arg_types in ITEMS.items():
      for arg_type in arg_types:
        registry.add(name, arg_type)
    # No InitialSavePolicy (orbax's default saves the first step whatever the
    # interval); a preemption notice from JAX's sync manager does save.
    save_policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
    ])
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=registry)

  def save(self, step: int, state: PyTree, *, config: dict,
           data: dict | None = None, progress: dict | None = None,
           force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`) and not yet saved.

    Returns whether a save started. With async_save, returns once the arrays
    are copied off device (the state may then be donated) and writes in the
    background. Raises NonFiniteStateError, saving nothing, on NaN/Inf.
    """
    if step in self.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    check_finite(state)
    items = {"state": state, "config": config, "data": data,
             "progress": progress}
    args = {name: ITEMS[name][0](value) for name, value in items.items()
            if value is not None}
    return self._manager.save(
        step, args=ocp.args.Composite(**args), force=True)

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would save (cheap to ask)."""
    return self._manager.should_save(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written."""
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: PyTree,
              step: int | None = None) -> Restored | None:
    """Restores the latest checkpoint (or `step`) into `abstract_state`.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with `.sharding`, e.g.
        from jax.eval_shape, with the shardings wanted now (any topology).
      step: a step to restore; None: the latest restorable one.

    Returns:
      Restored(step, state, config, data), or None if there is no checkpoint.

    Raises:
      CheckpointMismatchError: the checkpoint's structure or shapes differ
        from `abstract_state` (e.g. the model size changed).
      CheckpointRestoreError: no checkpoint could be restored.
    """
    self.wait()
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      return None
    failures = []
    for s in steps:
      try:
        restored = self._restore_step(s, abstract_state)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        # Every process must see the same damage: they share the storage.
        failures.append((s, e))
        logging.warning("Checkpoint at step %d in %s is damaged and cannot be "
                        "restored (%s); trying the previous step.",
                        s, self.directory, _brief(e))
        continue
      if failures:
        self._move_aside([f for f, _ in failures])
      return restored
    tried = "; ".join(f"step {s}: {_brief(e)}" for s, e in failures)
    raise CheckpointRestoreError(
        f"No checkpoint in {self.directory} could be restored. Tried {tried}"
    ) from failures[-1][1]

  def mismatch(self, step: int, abstract_state: PyTree) -> list[str]:
    """How a step's arrays differ from `abstract_state` (names, shapes),
    read from its metadata only; [] when they match."""
    return _mismatch(abstract_state,
                     self._manager.item_metadata(step)["state"].tree)

  def restore_config(self, step: int) -> dict:
    """The config a step was written with (nothing else is read)."""
    out = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def _restore_step(self, step: int, abstract_state: PyTree) -> Restored:
    # Optional items are restored when the step holds them; a step missing a
    # required item is damaged (the restore fails).
    present = {p.name for p in (self.directory / str(step)).iterdir()}
    args = {name: restore_args() for name, (_, restore_args) in ITEMS.items()
            if name in REQUIRED_ITEMS or name in present}
    args["state"] = ocp.args.StandardRestore(abstract_state)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:
      # Tell a changed model (an error) from a damaged checkpoint (fall back).
      try:
        tree = self._manager.item_metadata(step)["state"].tree
        problems = _mismatch(abstract_state, tree)
      except Exception:  # pylint: disable=broad-except
        problems = []  # Unreadable metadata: damaged.
      if problems:
        raise CheckpointMismatchError(
            f"Checkpoint at step {step} in {self.directory} does not match "
            f"the model/optimizer state: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}. Did the model or "
            "optimizer config change (optim.fused selects the optimizer "
            "state's layout)? Restore the checkpoint's config, or use a new "
            "--workdir to start afresh.") from e
      raise
    return Restored(step, out["state"], out["config"], out.get("data"),
                    out.get("progress"))

  def _move_aside(self, steps: list[int]) -> None:
    """Renames damaged step dirs so they are no longer steps (nor deleted)."""
    if jax.process_index() == 0:
      for step in steps:
        path = self.directory / str(step)
        if path.exists():
          target = path.parent / f"{path.name}.damaged-{time.time_ns()}"
          path.rename(target)
          logging.warning("Moved damaged checkpoint %s to %s.", path, target)
    self._barriers += 1  # Barrier names must be unique.
    ocp.multihost.sync_global_processes(
        f"mlm_jax_move_aside_{self.directory.name}_{self._barriers}")
    self._manager.reload()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
