"""Metrics: summing step outputs on the host, and the JSONL log.

The step returns every metric as a (sum, count) pair (see
`objectives.losses.pair`); the loop keeps the per-step device outputs of a
logging interval without touching them, then fetches them all at once, so
there is no device-to-host sync per step. Means are taken here, once:
sum of sums / sum of counts.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

# A counter, not a mean: reported as a rate (tokens_per_s), never averaged.
TOKENS = "tokens"


def sum_metrics(steps: Iterable[dict[str, np.ndarray]]
                ) -> dict[str, np.ndarray]:
  """Sums host metric dicts of (sum, count) pairs key by key."""
  total: dict[str, np.ndarray] = {}
  for m in steps:
    for k, v in m.items():
      v = np.asarray(v, np.float64)
      total[k] = total[k] + v if k in total else v
  return total


def summarize(sums: Mapping[str, np.ndarray],
              loss_weights: Mapping[str, float],
              prefix: str = "") -> dict[str, float]:
  """Means from (sum, count) pairs, and `loss`, the weighted training loss.

  `loss` = sum over terms of weight * mean(term), as the step minimises it;
  a lone term of weight 1 is `loss` itself and is not repeated. Every other
  pair is reported as its mean (0 when its count is 0), `tokens` excepted.
  """
  mean = lambda k: float(sums[k][0] / sums[k][1]) if sums[k][1] else 0.0
  out = {f"{prefix}loss": sum(w * mean(t) for t, w in loss_weights.items())}
  alone = (next(iter(loss_weights)) if len(loss_weights) == 1
           and next(iter(loss_weights.values())) == 1.0 else None)
  for k in sums:
    if k not in (TOKENS, alone):
      out[f"{prefix}{k}"] = mean(k)
  return out


def is_finite(values: dict[str, float]) -> bool:
  return all(math.isfinite(v) for v in values.values())


class IntervalMeter:
  """Collects the step metrics of a logging interval and reports them.

  Device outputs are only held, never read, until `report`, which fetches
  them all at once. The first step of a run is timed apart (it includes
  compilation): its metrics count, its time does not. Time spent in
  `paused()` (evaluation, checkpointing) is not training time either.
  """

  def __init__(self, fetch: Callable[[list], list[dict[str, np.ndarray]]],
               loss_weights: Mapping[str, float]):
    self._fetch = fetch
    self._loss_weights = dict(loss_weights)
    self._pending: list = []
    self._host: list[dict[str, np.ndarray]] = []
    self._timed_steps = 0
    self._tick = time.perf_counter()

  def add(self, step_metrics) -> None:
    self._pending.append(step_metrics)
    self._timed_steps += 1

  def first_step_seconds(self) -> float:
    """Blocks on the pending (first) step; returns its wall time."""
    self._host += self._fetch(self._pending)
    seconds = time.perf_counter() - self._tick
    self._pending, self._timed_steps = [], 0
    self._tick = time.perf_counter()
    return seconds

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    start = time.perf_counter()
    yield
    self._tick += time.perf_counter() - start

  def report(self) -> dict[str, float]:
    """Means of the interval, `tokens_per_s` and `steps_per_s`; resets."""
    timed = self._fetch(self._pending)
    elapsed = max(time.perf_counter() - self._tick, 1e-9)
    out = summarize(sum_metrics(self._host + timed), self._loss_weights)
    if self._timed_steps:
      out["tokens_per_s"] = float(sum_metrics(timed)[TOKENS][0]) / elapsed
      out["steps_per_s"] = self._timed_steps / elapsed
    self._pending, self._host, self._timed_steps = [], [], 0
    self._tick = time.perf_counter()
    return out

  @property
  def has_pending(self) -> bool:
    return bool(self._pending or self._host)


class JsonlWriter:
  """Appends one JSON object per line to `path`; safe to resume.

  Resuming from step s first drops the records of steps after s (logged by
  the interrupted run after its last checkpoint), so the file reads as one
  uninterrupted run. The rewrite goes to a temporary file and is renamed.
  A record whose keys were all recorded at its step already (the final
  evaluation of a finished run, re-run on resume) is not written again.
  """

  def __init__(self, path: str | os.PathLike, resume_step: int = 0):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._keys: dict[int, set[str]] = {}
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if _step_of(line) is not None and _step_of(line) <= resume_step]
      for line in kept:
        self._keys.setdefault(_step_of(line), set()).update(json.loads(line))
      tmp = self.path.with_name(self.path.name + ".tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      os.replace(tmp, self.path)

  def write(self, step: int, values: dict[str, Any]) -> bool:
    """Appends the record of `step`; False if it was there already."""
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    seen = self._keys.setdefault(int(step), set())
    if set(record) <= seen:
      return False
    seen.update(record)
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    return True


def best_eval(path: str | os.PathLike) -> tuple[int, float] | None:
  """(step, loss) of the lowest `eval_loss` in a metrics.jsonl, if any."""
  path, best = pathlib.Path(path), None
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    loss = record.get("eval_loss")
    if loss is not None and (best is None or loss < best[1]):
      best = (int(record["step"]), float(loss))
  return best


def _step_of(line: str) -> int | None:
  """The step of a record, or None for a blank or truncated (crashed) line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def _plain(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v
