"""What each objective's step costs next to BERT's MLM step, interleaved.

The benchmark's `--objectives` names steps to compare with the config's
own (the baseline): objectives ('nsp', 'electra', ...) and masking
strategies ('whole_word', 'span'). All are built and compiled in this
process, then timed in rounds: each round runs `--steps` steps of every one
in turn, so a drift of the machine's speed over minutes falls on all of
them alike. The cost of a step is the median over rounds of its time / the
baseline's time in the same round.

Pair objectives run on sentence-pair batches (`data.packing=pairs`), the
others on the config's packing; shapes are the same. Peak host memory is
the process's, over all of them, so it is not reported per step here.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import jax
import ml_collections

from mlm_jax import config as config_lib
from mlm_jax import masking
from mlm_jax import objectives
from mlm_jax.bench import timing

PAIR_OBJECTIVES = ("nsp", "sop")


def names(config: ml_collections.ConfigDict,
          asked: Sequence[str]) -> list[str]:
  """The steps to compare, the baseline first; ConfigError if unknown."""
  known = [*objectives.REGISTRY, *masking.STRATEGIES[1:]]
  unknown = [n for n in asked if n not in known]
  if unknown:
    raise config_lib.ConfigError(
        f"--objectives: unknown {unknown}; use objectives "
        f"({', '.join(objectives.REGISTRY)}) or masking strategies "
        f"({', '.join(masking.STRATEGIES[1:])}), comma-separated.")
  return [label(config), *[n for n in asked if n != label(config)]]


def label(config: ml_collections.ConfigDict) -> str:
  """The name of a config's step: its objective, or its masking strategy
  for BERT's MLM with other than token masking."""
  name = config.objective.name
  if name == "mlm" and config.masking.strategy != "token":
    return config.masking.strategy
  return name


def variant(config: ml_collections.ConfigDict,
            name: str) -> ml_collections.ConfigDict:
  """`config` with the step `name` (objective or masking strategy)."""
  out = ml_collections.ConfigDict(config.to_dict())
  defaults = objectives.default_config()
  out.objective = defaults
  out.masking.strategy = "token"
  if name in masking.STRATEGIES:
    out.objective.name = "mlm"
    out.masking.strategy = name
  else:
    out.objective.name = name
  out.objective[out.objective.name] = config.objective.get(
      out.objective.name, defaults[out.objective.name])
  if name in PAIR_OBJECTIVES:
    out.data.packing = "pairs"
  if not objectives.REGISTRY[out.objective.name].USES_MASKING:
    out.masking = masking.default_config()
  elif out.masking.strategy != "span":
    out.masking.span = masking.default_config().span
  return out


def time_objectives(config: ml_collections.ConfigDict, asked: Sequence[str],
                    *, steps: int, rounds: int) -> list[dict[str, Any]]:
  """One record per step of `names(config, asked)`: its median step time,
  tokens/s, MFU, lowering and compile time, and `cost`: the median over
  rounds of its step time over the baseline's."""
  steps_by_name, configs = {}, {}
  peak_samples = [timing.matmul_peak_flops()]
  for name in names(config, asked):
    cfg = configs[name] = variant(config, name)
    compiled, state, batch, lower, compile_ = timing.compile_step(cfg)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    steps_by_name[name] = {"compiled": compiled, "state": state,
                           "batch": batch, "lower": lower,
                           "compile": compile_, "times": []}
  for _ in range(rounds):
    for s in steps_by_name.values():
      start = time.perf_counter()
      for _ in range(steps):
        s["state"], metrics = s["compiled"](s["state"], s["batch"])
      jax.block_until_ready(metrics)
      s["times"].append((time.perf_counter() - start) / steps)
    peak_samples.append(timing.matmul_peak_flops(repeats=2))
  base = next(iter(steps_by_name.values()))["times"]
  peak = max(peak_samples)
  records = []
  for name, s in steps_by_name.items():
    measured = timing.step_timing(configs[name], s["times"], s["lower"],
                                  s["compile"], peak, peak_memory_gb=0.0)
    records.append({
        "objective": name, "step_median": measured.step_median,
        "step_times": s["times"], "tokens_per_s": measured.tokens_per_s,
        "lower_seconds": s["lower"], "compile_seconds": s["compile"],
        "flops_per_step": measured.flops_per_step, "peak_flops": peak,
        "mfu": measured.mfu,
        "cost": statistics.median(t / b for t, b in zip(s["times"], base))})
  return records
