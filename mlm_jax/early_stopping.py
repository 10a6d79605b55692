"""The best held-out loss so far, and when to stop for lack of progress.

`Progress` is a small JSON-able record that goes into every checkpoint
(item `progress`), so a resumed run keeps its best step and its patience
count and stops where an uninterrupted run would. Pure functions; the
training loop (`train.py`) calls `update` after each evaluation.

Semantics (as Keras's EarlyStopping with `restore_best_weights`): an
evaluation counts as progress when its loss is below the best so far by more
than `min_delta`; after `patience` evaluations in a row without progress the
run stops. The best checkpoint is the lowest loss, whatever `min_delta`.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
  # The lowest held-out loss so far and the step it was reached at.
  best_loss: float | None = None
  best_step: int | None = None
  # Evaluations since the last one that made progress (by min_delta).
  stale_evals: int = 0
  # The step the run stopped early at; None while it runs.
  stopped_at: int | None = None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict[str, Any] | None) -> Progress:
    """From a checkpoint's item (None: a checkpoint written before it)."""
    if not record:
      return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in known})


@dataclasses.dataclass(frozen=True)
class Outcome:
  progress: Progress
  # Whether this evaluation is the new best (its checkpoint is kept).
  is_best: bool
  # Whether the run should stop here.
  stop: bool


def update(progress: Progress, step: int, loss: float, *, patience: int,
           min_delta: float, higher_is_better: bool = False) -> Outcome:
  """The progress after an evaluation of `loss` at `step`.

  Args:
    progress: before this evaluation.
    step: the step evaluated.
    loss: its held-out loss (lower is better), or a score with
      `higher_is_better` (e.g. a fine-tuning task's dev accuracy).
    patience: evaluations without progress before stopping; 0: never stop.
    min_delta: the improvement that counts as progress.
    higher_is_better: whether larger values are better.
  """
  best = progress.best_loss
  sign = -1.0 if higher_is_better else 1.0
  is_best = best is None or sign * loss < sign * best
  progressed = best is None or sign * loss < sign * best - min_delta
  stale = 0 if progressed else progress.stale_evals + 1
  stop = patience > 0 and stale >= patience
  new = Progress(
      best_loss=loss if is_best else best,
      best_step=step if is_best else progress.best_step,
      stale_evals=stale,
      stopped_at=step if stop else None)
  return Outcome(new, is_best, stop)


def reason(progress: Progress, *, patience: int, min_delta: float,
           metric: str = "held-out loss") -> str:
  """Why a stopped run stopped, in one sentence."""
  return (f"Stopped early at step {progress.stopped_at}: the {metric} "
          f"has not improved by more than {min_delta:g} for {patience} "
          f"evaluations; the best is {progress.best_loss:.4g} at step "
          f"{progress.best_step}.")
