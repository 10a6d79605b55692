"""Loss and accuracy curves of one or several runs, from their metrics.jsonl.

A workdir's `metrics.jsonl` holds one JSON object per line, {"step": N,
...}: training records with `loss` and the objective's accuracies
(`mlm_accuracy`, `nsp_accuracy`, ...), evaluation records with the same keys
prefixed `eval_`, and others (`first_step_seconds`) that are not drawn.
`plot_runs` draws one panel for the loss and one per accuracy key found in
any run; in each, one colour per run (labelled by its folder name), training
solid and evaluation dashed with dots. matplotlib draws on its Agg canvas,
without pyplot: no display, no global state.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
EVAL_PREFIX = "eval_"

# key -> (steps, values), in step order.
Series = dict[str, tuple[list[int], list[float]]]


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl`, skipping lines that are not a
  JSON object with a step (blank, or cut off by a crash)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{path}: no such file; pass a workdir that experiments/pretrain.py "
        "has trained in (it writes metrics.jsonl there at every log step).")
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
  return records


def series(records: Iterable[Mapping[str, Any]]) -> Series:
  """Every key's finite numeric values, with their steps, in step order."""
  points: dict[str, list[tuple[int, float]]] = {}
  for record in records:
    for key, value in record.items():
      if (key != "step" and isinstance(value, (int, float))
          and not isinstance(value, bool) and math.isfinite(value)):
        points.setdefault(key, []).append((record["step"], float(value)))
  out: Series = {}
  for key, pairs in points.items():
    pairs.sort(key=lambda p: p[0])
    out[key] = ([s for s, _ in pairs], [v for _, v in pairs])
  return out


def panel_keys(runs: Iterable[Series]) -> list[str]:
  """The training keys to draw, one panel each: `loss` first, then every
  accuracy (a key ending in `accuracy`, with or without `eval_`), sorted."""
  keys = set()
  for run in runs:
    keys |= {k.removeprefix(EVAL_PREFIX) for k in run}
  accuracies = sorted(k for k in keys if k.endswith("accuracy"))
  return (["loss"] if "loss" in keys else []) + accuracies


def run_labels(workdirs: Sequence[str | os.PathLike]) -> list[str]:
  """Each workdir's folder name, with as many parent folders as it takes to
  tell the runs apart (`a/run`, `b/run`)."""
  parts = [pathlib.Path(w).resolve().parts for w in workdirs]
  for depth in range(1, max(map(len, parts), default=1) + 1):
    labels = ["/".join(p[-depth:]) for p in parts]
    if len(set(labels)) == len(labels):
      return labels
  return [str(w) for w in workdirs]


def plot_runs(workdirs: Sequence[str | os.PathLike],
              out: str | os.PathLike) -> pathlib.Path:
  """Draws the loss and accuracy curves of `workdirs` into the image `out`
  (PNG; another suffix matplotlib knows, such as .pdf or .svg, picks that
  format) and returns its path.

  Raises FileNotFoundError for a workdir without metrics.jsonl, ValueError
  when no run has logged a loss or accuracy yet.
  """
  runs = [series(read_metrics(w)) for w in workdirs]
  keys = panel_keys(runs)
  if not keys:
    raise ValueError(
        f"{', '.join(map(str, workdirs))}: no loss or accuracy logged yet; "
        "plot again once training has passed its first log step.")
  cols = min(3, len(keys))
  rows = -(-len(keys) // cols)
  fig = Figure(figsize=(5.0 * cols, 3.6 * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  labels = run_labels(workdirs)
  for ax, key in zip(axes, keys):
    for i, (label, run) in enumerate(zip(labels, runs)):
      _draw(ax, run, key, label, color=f"C{i % 10}")
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  for ax in axes[len(keys):]:  # the grid's unused cells
    ax.set_visible(False)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  return out


def _draw(ax, run: Series, key: str, label: str, color: str) -> None:
  """The training (solid) and evaluation (dashed, dots) curves of `key`."""
  if key in run:
    steps, values = run[key]
    ax.plot(steps, values, color=color, label=f"{label} train",
            marker="o" if len(steps) == 1 else None, markersize=3)
  if EVAL_PREFIX + key in run:
    steps, values = run[EVAL_PREFIX + key]
    ax.plot(steps, values, color=color, linestyle="--", marker="o",
            markersize=4, label=f"{label} eval")
