"""TensorBoard event files of the training metrics, without TensorFlow.

Writes with the `tensorboard` package's own pure-Python writer
(`EventFileWriter` and its `Event`/`Summary` protos), which imports no
TensorFlow: `pip install tensorboard` brings the writer, the reader and the
viewer, `tensorboard --logdir <logdir>`.

Layout: one metrics record, as the training loop logs it, goes to two
TensorBoard runs under `logdir`. Keys prefixed `eval_` go to the run `eval`
with the prefix removed, every other key to the run `train`; a tag is the
metric key itself. TensorBoard draws one chart per tag with one line per run,
so the chart `loss` overlays the training loss and `eval_loss`, the chart
`mlm_accuracy` the two accuracies, and `lr`, `tokens_per_s`, `grad_norm`
stand alone (train only). Comparing runs: `tensorboard --logdir /tmp` shows
every workdir's `<name>/tensorboard/train` and `.../eval` side by side when
the loop writes to `<workdir>/tensorboard`.

Values are written as 32-bit `simple_value` scalars; a value that is not a
finite real scalar (NaN, inf, a string, an array) is skipped and its key
returned to the caller, who knows whether a NaN loss should stop the run.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

TRAIN, EVAL = "train", "eval"
EVAL_PREFIX = "eval_"


def run_and_tag(key: str) -> tuple[str, str]:
  """The TensorBoard (run, tag) of a metric key: `eval_loss` -> (eval, loss),
  `loss` -> (train, loss)."""
  if key.startswith(EVAL_PREFIX) and len(key) > len(EVAL_PREFIX):
    return EVAL, key[len(EVAL_PREFIX):]
  return TRAIN, key


def as_scalar(value: Any) -> float | None:
  """`value` as a float if it is a finite real scalar (Python number, numpy
  or jax 0-d array, bool), else None."""
  try:
    array = np.asarray(value)
  except Exception:  # objects numpy cannot take
    return None
  if array.ndim != 0 or array.dtype.kind not in "biuf":
    return None
  number = float(array)
  return number if math.isfinite(number) else None


class EventWriter:
  """Writes scalar metrics to `<logdir>/train` and `<logdir>/eval`.

  Only one process of a multi-host job should write: pass
  `enabled=jax.process_index() == 0`; a disabled writer creates no file and
  every method is a no-op. A run's event file is created when it first gets
  a value, so a run without evaluation has no `eval` folder.

  `resume_step`: the step a resumed run restarts from (None: a fresh run).
  Each event file starts with a `SessionLog.START` at `resume_step + 1` (a
  fresh run's at 0), from which TensorBoard's readers drop the events of
  later steps that an earlier run wrote to the same logdir: those the
  interrupted run logged after its last checkpoint, as `metrics.JsonlWriter`
  drops those records, so the curves read as one uninterrupted run. (The
  Python readers need the fresh run's START too: they take the first one
  they see for the start of the run, only later ones for restarts. They read
  a run's files in name order, by the second they were created: a writer
  made again by the same process within a second may be read out of order.)

  Events are written by a background thread and flushed every `flush_secs`
  seconds, on `flush()` and on `close()`. Use as a context manager, or call
  `close()`.
  """

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True,
               resume_step: int | None = None, flush_secs: float = 10.0):
    self.logdir = os.fspath(logdir)
    self.enabled = enabled
    self._resume_step = resume_step
    self._flush_secs = flush_secs
    self._writers: dict[str, EventFileWriter] = {}
    self._closed = False

  def _writer(self, run: str) -> EventFileWriter:
    if run not in self._writers:
      writer = EventFileWriter(os.path.join(self.logdir, run),
                               flush_secs=self._flush_secs)
      start = 0 if self._resume_step is None else int(self._resume_step) + 1
      writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=start, session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))
      self._writers[run] = writer
    return self._writers[run]

  def write_scalars(self, step: int, values: Mapping[str, Any]) -> list[str]:
    """Writes every finite scalar of `values` at `step`; returns the keys
    skipped (not a finite real scalar), in the order given."""
    if self._closed:
      raise ValueError(f"EventWriter({self.logdir!r}) is closed; create a new "
                       "one to write again.")
    if not self.enabled:
      return []
    runs: dict[str, list[summary_pb2.Summary.Value]] = {}
    skipped = []
    for key, value in values.items():
      number = as_scalar(value)
      if number is None:
        skipped.append(key)
        continue
      run, tag = run_and_tag(key)
      runs.setdefault(run, []).append(
          summary_pb2.Summary.Value(tag=tag, simple_value=number))
    now = time.time()
    for run, summary_values in runs.items():
      self._writer(run).add_event(event_pb2.Event(
          wall_time=now, step=int(step),
          summary=summary_pb2.Summary(value=summary_values)))
    return skipped

  def flush(self) -> None:
    """Writes every pending event to disk."""
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    """Flushes and closes the event files; the writer cannot be used after."""
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()
    self._closed = True

  def __enter__(self) -> EventWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
