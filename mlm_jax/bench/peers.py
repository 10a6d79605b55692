"""Peers of our training step: Hugging Face's BERT, timed as its users run it.

A step time means little alone; it is fast or slow next to what people would
otherwise run. This module times, on the same config and the same synthetic
tokens as `timing`, the MLM training step of Hugging Face transformers'
BERT in its two forms:

  flax   FlaxBertForMaskedLM trained as transformers' example
         run_mlm_flax.py trains it (`peer_flax`).
  torch  BertForMaskedLM trained as transformers' Trainer trains it
         (`peer_torch`).

With `finetune`, the step timed is the fine-tuning step instead
(`bench.finetune`), and its peer is 'flax' only:
FlaxBertForSequenceClassification as run_flax_glue.py trains it
(`peer_flax_glue`).

Host masking is inside each timed step: it is part of their step as users run
it (ours masks on device). Useful FLOPs, and so MFU, are
`flops.train_flops_per_step` (MLM head at the masked positions only) for
every contender: MFU compares useful work per second, not work done.

A process's peak RSS covers all it ever ran, so peak host memory compares
only when each contender runs alone: `run_in_subprocess` times one of 'ours',
'flax' or 'torch' in a fresh process and returns its figures. The child
reports its VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its
parent's RSS (exec keeps the high-water mark of the forked copy).

transformers and torch are an optional extra, imported only when a peer runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import ml_collections

from mlm_jax import hostenv
from mlm_jax.bench import finetune as bench_finetune
from mlm_jax.bench import hf
from mlm_jax.bench import peer_flax
from mlm_jax.bench import peer_flax_glue
from mlm_jax.bench import peer_torch
from mlm_jax.bench import timing

KINDS = ("ours", "flax", "torch")
# The contenders of the fine-tuning step.
FINETUNE_KINDS = ("ours", "flax")


def _timer(kind: str, finetune: bool = False
           ) -> Callable[..., timing.StepTiming]:
  """The timing function of a contender (of the fine-tuning step)."""
  if finetune:
    return {"flax": peer_flax_glue.time_hf_glue,
            "ours": bench_finetune.time_train_step}[kind]
  return {"flax": peer_flax.time_hf_flax, "torch": peer_torch.time_hf_torch,
          "ours": timing.time_train_step}[kind]


def _import_for(kind: str, finetune: bool = False) -> None:
  """Imports what `kind` needs, so the import cost is measured apart."""
  if kind == "flax" and finetune:
    _ = hf.require("transformers").FlaxBertForSequenceClassification
  elif kind == "flax":
    _ = hf.require("transformers").FlaxBertForMaskedLM
  elif kind == "torch":
    hf.require("torch")
    _ = hf.require("transformers").BertForMaskedLM


def allocator_env(allocator: str, environ: dict[str, str]) -> dict[str, str]:
  """`environ` for a child that runs on `allocator` (one of ALLOCATORS)."""
  env = hostenv.without_preloads(environ)
  if allocator == "system":
    return env
  if allocator not in hostenv.ALLOCATORS:
    raise ValueError(f"Cannot run a contender on allocator {allocator!r}: "
                     f"use one of {', '.join(hostenv.ALLOCATORS)}.")
  library = hostenv.find_library(allocator)
  if library is None:
    raise ValueError(f"Cannot run a contender on {allocator}: it is not "
                     f"installed ({hostenv.install_hint(allocator)}); or use "
                     f"'system'.")
  return hostenv.preload_env(allocator, library, env)


def run_in_subprocess(kind: str, config: ml_collections.ConfigDict, *,
                      steps: int = 10, repeats: int = 5,
                      peak_flops: float | None = None,
                      allocator: str | None = None,
                      finetune: bool = False) -> dict[str, Any]:
  """Times `kind` ('ours', 'flax' or 'torch') in a fresh Python process.

  The child runs `python -m mlm_jax.bench.peers`, so its peak RSS (VmHWM)
  holds only that contender: imports, model, optimizer state, compilation,
  steps.

  Args:
    kind: one of KINDS.
    config: the run config; it travels as JSON.
    steps: steps per timed repeat.
    repeats: timed repeats; the step time is their median.
    peak_flops: the matmul peak for MFU. None: the child samples its own
      between its timed repeats (`timing.time_repeats`).
    allocator: one of hostenv.ALLOCATORS for the child; None: as this
      process.
    finetune: time the fine-tuning step (or its peer) instead; `kind` is
      then one of FINETUNE_KINDS.
  Returns:
    `dataclasses.asdict` of the child's StepTiming, whose
    `peak_host_memory_gb` is the child's own peak RSS, plus `kind`,
    `allocator` (the one the child ran on) and `import_host_memory_gb` (its
    peak once its imports were done).
  Raises:
    ValueError: for an unknown kind or allocator.
    RuntimeError: if the child failed; the message ends with its stderr.
  """
  kinds = FINETUNE_KINDS if finetune else KINDS
  if kind not in kinds:
    raise ValueError(f"Unknown peer {kind!r}; use one of {', '.join(kinds)}"
                     f"{' to time fine-tuning' if finetune else ''}.")
  child_env = (dict(os.environ) if allocator is None
               else allocator_env(allocator, dict(os.environ)))
  root = str(pathlib.Path(__file__).resolve().parents[2])
  child_env["PYTHONPATH"] = os.pathsep.join(
      filter(None, [root, child_env.get("PYTHONPATH")]))
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "timing.json"
    cmd = [sys.executable, "-m", "mlm_jax.bench.peers", kind,
           config.to_json(), f"--out={out}", f"--steps={steps}",
           f"--repeats={repeats}"]
    if peak_flops:
      cmd.append(f"--peak_flops={peak_flops!r}")
    if finetune:
      cmd.append("--finetune")
    proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"Timing {kind!r} in a subprocess failed (exit "
                         f"{proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def compare(config: ml_collections.ConfigDict, *,
            kinds: Sequence[str] = KINDS, steps: int = 10, repeats: int = 5,
            peak_flops: float | None = None,
            allocators: dict[str, str] | None = None,
            finetune: bool = False) -> dict[str, dict[str, Any]]:
  """Times each of `kinds` in its own process, one after the other
  (the fine-tuning step and its peer, with `finetune`).

  `allocators` maps a kind to its child's allocator (default: as this
  process). `peak_flops` None: each child samples the matmul peak between
  its own timed repeats (`timing.time_repeats`), at the moments its
  steps ran; a peak measured here, minutes before the last child's steps,
  would drift away from them.
  """
  allocators = allocators or {}
  return {kind: run_in_subprocess(kind, config, steps=steps, repeats=repeats,
                                  peak_flops=peak_flops,
                                  allocator=allocators.get(kind),
                                  finetune=finetune)
          for kind in kinds}


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m mlm_jax.bench.peers KIND CONFIG_JSON`: a timing's child."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("kind", choices=KINDS)
  parser.add_argument("config", help="the run config as ConfigDict JSON")
  parser.add_argument("--out", help="write the JSON here, not to stdout")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--peak_flops", type=float, default=None)
  parser.add_argument("--finetune", action="store_true",
                      help="time the fine-tuning step (or its peer)")
  args = parser.parse_args(argv)
  config = ml_collections.ConfigDict(json.loads(args.config))
  _import_for(args.kind, args.finetune)
  import_gb = timing.peak_host_memory_gb()
  result = _timer(args.kind, args.finetune)(
      config, steps=args.steps, repeats=args.repeats,
      peak_flops=args.peak_flops)
  record = {"kind": args.kind, "allocator": hostenv.loaded_allocator(),
            "import_host_memory_gb": import_gb,
            **dataclasses.asdict(result)}
  text = json.dumps(record)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  else:
    print(text)


if __name__ == "__main__":
  main()
