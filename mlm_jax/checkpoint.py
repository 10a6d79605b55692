"""Checkpoints: one orbax step directory holds the full state of a run.

Items of a step directory (`<workdir>/<step>/<item>`): `state`, the train state
pytree (step, params, optimizer state; sharded or replicated); `config`, the
run config (JSON); `data`, the data-iterator state (JSON, when given);
`progress`, the best held-out loss and early-stopping counters (JSON, when
given; `early_stopping.Progress`); `checksums`, a checksum of every array of
`state` (JSON; `checksums.py`).

A state holding NaN/Inf is never saved, so a diverged run cannot rotate good
checkpoints away. A restored state is checked against its checksums and for
NaN/Inf: bytes damaged on disk count as a damaged checkpoint. Restores go into the caller's abstract state (shapes, dtypes,
shardings), so a checkpoint written on one topology restores onto another.

Interrupted saves: orbax writes a step into `<step>.orbax-checkpoint-tmp` and
renames it when complete (local disks), or writes `commit_success.txt` last
(GCS). Unfinalised steps are never listed as steps; their leftovers are
removed when a `Checkpointer` opens the directory. A finalised step that is
damaged later is moved aside by `restore`, which falls back to the step before.

Failed saves (a full disk, a path that refuses writes): a save runs in the
background; `check_saves` (cheap, called every step) raises
`CheckpointSaveError` once a save has failed. Old steps beyond `max_to_keep`
are deleted only after a newer step is written, so a failing save never costs
the checkpoint before it.
"""
import os
import re
import time
from typing import Any, NamedTuple

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from mlm_jax import checksums as checksums_lib

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
    "checksums": (ocp.args.JsonSave, ocp.args.JsonRestore),
}
REQUIRED_ITEMS = ("state", "config")


class NonFiniteStateError(ValueError):
  """The state to save holds NaN or Inf values."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree structure or shapes differ from the abstract state."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint in the directory could be restored."""


class CheckpointDamagedError(RuntimeError):
  """A restored state differs from its checksums or holds NaN/Inf."""


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (full disk, unwritable path)."""


class Restored(NamedTuple):
  step: int
  state: PyTree
  config: dict
  # The data-iterator state; None when the checkpoint holds none.
  data: dict | None
  # Best loss and early-stopping counters; None when the checkpoint has none.
  progress: dict | None = None


def _non_finite_error(bad: list[str], total: int) -> NonFiniteStateError:
  return NonFiniteStateError(
      f"Refusing to save a state with NaN/Inf values in {len(bad)} of "
      f"{total} arrays: {', '.join(bad[:10])}"
      f"{' ...' if len(bad) > 10 else ''}. The run has diverged; existing "
      "checkpoints are left untouched.")


def check_finite(state: PyTree) -> dict[str, list]:
  """Raises NonFiniteStateError if a floating leaf of `state` has NaN/Inf;
  else returns the state's checksums (`checksums.summarize`).

  One jitted reduction on device and a single host fetch.
  """
  sums, bad = checksums_lib.summarize(state)
  if bad:
    raise _non_finite_error(bad, len(sums))
  return sums


def _cause(e: Exception | None) -> str:
  """What made a write fail, in a few words ('No space left on device')."""
  if e is None:
    return "the step was not written (see the log above)"
  text = str(e)
  os_error = re.search(r"os_error_code='?(\d+)", text)  # tensorstore's
  if os_error:
    return os.strerror(int(os_error.group(1)))
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror}{f' ({e.filename})' if e.filename else ''}"
  return _brief(e)


def _brief(e: Exception) -> str:
  """The exception's type and first line (tensorstore errors span pages)."""
  line = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {line.split(' [tensorstore_spec=')[0][:500]}"


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree: PyTree) -> dict[str, tuple]:
  """{'a/b/0': shape} of a pytree's leaves (arrays or orbax metadata)."""
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if hasattr(leaf, "shape")}


def _mismatch(abstract_state: PyTree, tree_metadata: PyTree) -> list[str]:
  """Differences between the abstract state and a checkpoint's metadata."""
  want, have = _shapes(abstract_state), _shapes(tree_metadata)
  problems = [f"{k} missing from the checkpoint" for k in want
              if k not in have]
  problems += [f"{k} in the checkpoint but not in the state" for k in have
               if k not in want]
  problems += [
      f"{k} has shape {have[k]} in the checkpoint but {want[k]} in the state"
      for k in want if k in have and have[k] != want[k]]
  return problems


def _verify(state: PyTree, recorded: dict | None) -> None:
  """Raises CheckpointDamagedError if the restored `state` holds NaN/Inf
  (never saved so) or differs from the checksums recorded with it."""
  sums, bad = checksums_lib.summarize(state)
  problems = []
  if recorded is not None:
    differ = checksums_lib.differences(recorded, sums)
    if differ:
      problems.append(
          f"{len(differ)} of {len(recorded)} arrays differ from the checksums "
          f"written with them ({', '.join(differ[:3])}"
          f"{', ...' if len(differ) > 3 else ''})")
  if bad:
    problems.append(f"NaN/Inf in {', '.join(bad[:3])}"
                    f"{', ...' if len(bad) > 3 else ''}")
  if problems:
    raise CheckpointDamagedError("; ".join(problems))


class Checkpointer:
  """Saves and restores full-state checkpoints in one directory.

  Call every method from every process (orbax synchronises the hosts).
  """

  def __init__(self, directory: str | epath.PathLike, *,
               save_interval_steps: int, max_to_keep: int | None,
               async_save: bool = True):
    """`max_to_keep` None (or 0) keeps every checkpoint."""
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
    # orbax keeps every step: `_delete_old` removes the oldest ones itself,
    # once a newer step is known to be written (orbax would delete them when
    # the save starts, so a failing save would cost the checkpoint before).
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self._max_to_keep = max_to_keep or None
    self._pending: list[int] = []
    self._failures = 0  # Failed saves reported (CheckpointSaveError).
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=registry)

  def save(self, step: int, state: PyTree, *, config: dict,
           data: dict | None = None, progress: dict | None = None,
           force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`) and not yet saved.

    Returns whether a save started. With async_save, returns once the arrays
    are copied off device (the state may then be donated) and writes in the
    background. Raises NonFiniteStateError, saving nothing, on NaN/Inf, and
    CheckpointSaveError when the save (or an earlier one) failed.
    """
    self.check_saves()
    if step in self.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    items = {"state": state, "config": config, "data": data,
             "progress": progress, "checksums": check_finite(state)}
    args = {name: ITEMS[name][0](value) for name, value in items.items()
            if value is not None}
    self._pending.append(step)
    try:
      started = self._manager.save(
          step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(e) from None
    if not self._manager.is_saving_in_progress():
      self._settle()  # A synchronous save: written already.
    return started

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would save (cheap to ask)."""
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption sync (Cloud TPU maintenance, multi-host)
    asks every process to save at `step` and stop."""
    return self._manager.reached_preemption(step)

  def check_saves(self) -> None:
    """Raises CheckpointSaveError if a background save has failed; once a
    save is written, deletes the steps beyond max_to_keep. Cheap when a save
    is still running: call it every step."""
    if self._pending and not self._manager.is_saving_in_progress():
      self._settle()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written (raises
    CheckpointSaveError if one failed)."""
    self._settle()

  def _settle(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not self._pending:
        return  # Reported already: orbax raises a failure on every wait.
      raise self._failed(e) from None
    unwritten = [s for s in self._pending
                 if not (self.directory / str(s)).is_dir()]
    if unwritten:
      raise self._failed(None)
    self._pending.clear()
    self._delete_old()

  def _failed(self, cause: Exception | None) -> CheckpointSaveError:
    """The one-line error of a failed save; its leftovers are removed."""
    # The first save not written: a later save may be what found it failed.
    step = next((s for s in self._pending
                 if not (self.directory / str(s)).is_dir()), self._pending[-1])
    pending, self._pending = self._pending, []
    self._failures += 1
    self._manager.reload()
    if jax.process_index() == 0:
      for tmp in [t for s in pending
                  for t in self.directory.glob(f"{s}.orbax-checkpoint-tmp*")]:
        try:
          tmp.rmtree()
        except OSError:
          pass  # Removed when a Checkpointer next opens the directory.
    previous = self.latest_step()
    kept = (f"the checkpoint of step {previous} is intact" if previous
            is not None else "no earlier checkpoint exists")
    return CheckpointSaveError(
        f"Saving the checkpoint of step {step} to "
        f"{self.directory / str(step)} failed: {_cause(cause)}. Training "
        f"stopped; {kept}. Free space or fix the path, then run the same "
        "command to resume.")

  def _delete_old(self) -> None:
    if self._max_to_keep is None:
      return
    for step in self.all_steps()[:-self._max_to_keep]:
      self._manager.delete(step)

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
        logging.warning("Checkpoint at step %d in %s is damaged: %s; trying "
                        "the one before.", s, self.directory, _brief(e))
        continue
      if failures:
        self._move_aside([f for f, _ in failures])
      return restored
    tried = "; ".join(f"step {s}: {_brief(e)}" for s, e in failures)
    raise CheckpointRestoreError(
        f"No checkpoint in {self.directory} could be restored ({tried}). "
        "Use a new --workdir to start afresh.") from failures[-1][1]

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
    _verify(out["state"], out.get("checksums"))
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
    """Waits for pending saves and releases the manager.

    A save that failed raises CheckpointSaveError here, unless it was
    reported already (orbax raises a failed save's error on every wait).
    """
    try:
      if self._pending:
        self._settle()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failures:
          raise

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
