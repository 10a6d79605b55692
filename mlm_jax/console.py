"""What a person reads while a run trains: a progress bar and summaries.

On a terminal, `Progress` keeps one line at the bottom of the screen
(step, loss, tokens/s, ETA), redrawn at most a few times a second and
cleared before each periodic log line, so the log stays readable above it.
Written to a file (a job scheduler's log, `> run.log`), it draws nothing:
the periodic `step N/M | ...` lines are the progress, with no control
characters. `start_summary` and `end_summary` are the lines printed once at
the start and the end of a run.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

import jax
from absl import logging as absl_logging

from mlm_jax import hostenv


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty() and os.environ.get("TERM") != "dumb"
  except (AttributeError, ValueError):
    return False


def duration(seconds: float) -> str:
  """'1:05:09', '4:02' or '7s': hours only when there are any."""
  seconds = max(int(round(seconds)), 0)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f"{h}:{m:02d}:{s:02d}"
  return f"{m}:{s:02d}" if m else f"{s}s"


def bar_text(step: int, num_steps: int, values: Mapping[str, float],
             eta_seconds: float | None, width: int = 24) -> str:
  """One line: 'step 340/1600 [#####......] 21% | loss 6.27 | ...'."""
  filled = int(width * step / max(num_steps, 1))
  parts = [f"step {step}/{num_steps} [{'#' * filled}{'.' * (width - filled)}]"
           f" {100 * step // max(num_steps, 1)}%"]
  if "loss" in values:
    parts.append(f"loss {values['loss']:.4g}")
  if "tokens_per_s" in values:
    parts.append(f"{values['tokens_per_s']:,.0f} tokens/s")
  if eta_seconds is not None:
    parts.append(f"ETA {duration(eta_seconds)}")
  return " | ".join(parts)


class Progress:
  """A progress bar on a terminal; nothing at all anywhere else.

  A context manager: while it is open, every absl log line clears the bar
  first. `update(step)` after each step, `report(values)` with each logged
  interval (for the loss and speed the bar shows).
  """

  def __init__(self, start: int, num_steps: int, stream: TextIO | None = None,
               min_interval_s: float = 0.2):
    self._stream = stream if stream is not None else sys.stderr
    self.enabled = _is_terminal(self._stream)
    self._num_steps, self._start = num_steps, start
    self._values: dict[str, float] = {}
    self._interval = min_interval_s
    self._drawn_at = 0.0
    self._shown = False
    self._step = start
    self._clock: tuple[int, float] | None = None  # (step, time) of the rate
    self._filter = _ClearFirst(self)

  def report(self, values: Mapping[str, float]) -> None:
    self._values.update({k: v for k, v in values.items()
                         if k in ("loss", "tokens_per_s")})

  def eta_seconds(self, step: int, now: float) -> float | None:
    """Remaining steps at the rate measured since the first timed step."""
    if self._clock is None or step <= self._clock[0]:
      return None
    rate = (step - self._clock[0]) / max(now - self._clock[1], 1e-9)
    return (self._num_steps - step) / rate

  def update(self, step: int) -> None:
    """Step `step` finished; redraws when it is time to."""
    now = time.monotonic()
    if self._clock is None:  # After the first (compiling) step.
      self._clock = (step, now)
    self._step = step
    if not self.enabled or (now - self._drawn_at < self._interval
                            and step < self._num_steps):
      return
    self._drawn_at = now
    line = bar_text(step, self._num_steps, self._values,
                    self.eta_seconds(step, now))
    self._stream.write("\r\x1b[K" + line)
    self._stream.flush()
    self._shown = True

  def pause_clock(self, seconds: float) -> None:
    """Excludes `seconds` (evaluation, checkpointing) from the ETA's rate."""
    if self._clock is not None:
      self._clock = (self._clock[0], self._clock[1] + seconds)

  def clear(self) -> None:
    if self._shown:
      self._stream.write("\r\x1b[K")
      self._stream.flush()
      self._shown = False

  def close(self) -> None:
    self.clear()
    handler = absl_logging.get_absl_handler()
    if self._filter in handler.filters:
      handler.removeFilter(self._filter)

  def __enter__(self) -> "Progress":
    if self.enabled:  # Any log line first clears the bar.
      absl_logging.get_absl_handler().addFilter(self._filter)
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _ClearFirst(logging.Filter):
  """Clears the progress bar before a log record is printed."""

  def __init__(self, progress: Progress):
    super().__init__()
    self._progress = progress

  def filter(self, record: logging.LogRecord) -> bool:
    self._progress.clear()
    return True


def start_summary(*, devices: str, parallel: str, parameters: int,
                  tokens_per_step: int, flops_per_step: float | None,
                  peak: str | None, data: str, workdir: str,
                  resumed_from: int | None, num_steps: int) -> list[str]:
  """The lines that open a run's log."""
  flops = (f", {flops_per_step / 1e9:,.1f} GFLOP per step (useful matmuls)"
           if flops_per_step else "")
  lines = [
      f"Devices: {devices}; {parallel}",
      f"Model: {parameters:,} parameters; {tokens_per_step:,} tokens per "
      f"step{flops}",
      f"Data: {data}",
      f"Workdir: {workdir}",
      ("Starting at step 0" if resumed_from is None else
       f"Resuming at step {resumed_from}") + f" of {num_steps}",
  ]
  if peak:
    lines.insert(2, f"MFU against: {peak}")
  return lines


def end_summary(*, workdir: str, last_checkpoint: str | None,
                best: tuple[int, float] | None, metrics_path: str,
                events_dir: str | None,
                best_checkpoint: str | None = None) -> list[str]:
  """The lines that close a run's log: where its results are."""
  lines = [f"Results in {workdir}:"]
  if last_checkpoint:
    lines.append(f"  last checkpoint: {last_checkpoint}")
  if best is not None:
    lines.append(f"  best held-out loss: {best[1]:.4g} at step {best[0]}")
  if best_checkpoint:
    lines.append(f"  best checkpoint: {best_checkpoint}")
  lines.append(f"  metrics: {metrics_path}")
  if events_dir:
    lines.append(f"  TensorBoard: tensorboard --logdir {events_dir}")
  return lines


def devices_line() -> str:
  """'8 x TPU v4 (tpu) on 2 hosts', '1 x cpu (cpu), mimalloc allocator'."""
  d = jax.devices()[0]
  hosts = jax.process_count()
  line = (f"{jax.device_count()} x {d.device_kind} ({d.platform})"
          + (f" on {hosts} hosts" if hosts > 1 else ""))
  if d.platform == "cpu":  # where the host allocator sets the speed
    line += f", {hostenv.loaded_allocator()} allocator"
  return line


def layout_line(parallel: Any, num_devices: int) -> str:
  """How the step is spread: `parallel` is `config.parallel`."""
  if parallel.mode == "pmap":
    return f"pmap over {num_devices} devices"
  fsdp = parallel.fsdp
  data = num_devices // fsdp
  return (f"jit over a mesh of {data} data" + (f" x {fsdp} fsdp" if fsdp > 1
                                                else "")
          + (" device" if num_devices == 1 else " devices"))


def parameter_count(params: Any) -> int:
  """Parameters in a tree of arrays or of shapes (`jax.ShapeDtypeStruct`)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def data_line(data: Any, manifest: Mapping[str, Any]) -> str:
  """The corpus and its size: `data` is `config.data`, `manifest` the
  prepared dataset's."""
  source = {"tfds": f"tfds {data.tfds_name}",
            "files": f"files {data.files}"}.get(data.source, data.source)
  ex = manifest["examples"]
  return (f"{source}: {manifest['documents']:,} documents, "
          f"{ex['train']:,} training and {ex['eval']:,} held-out examples of "
          f"{data.seq_len} tokens ({manifest['tokens']:,} tokens, "
          f"{data.packing} packing)")
