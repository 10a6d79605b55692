"""One benchmark run of a config: measure, record as JSON lines, tabulate.

`experiments/benchmark.py` calls `run` with the run config to time and the
benchmark's own `Settings` (its flags). Without peers our step is timed in
this process. With `Settings.peers` ('flax', 'torch') every contender, ours
included, is timed in a fresh process of its own (see
`peers.run_in_subprocess`), so that each peak host memory is its own; ours
runs on this process's allocator, the peers on `Settings.peer_allocator`.
With `Settings.finetune` the step timed is the fine-tuning step
(`bench.finetune`), against its Flax peer (`peer_flax_glue`).

Each run appends its records to <workdir>/benchmark.jsonl and rewrites
<workdir>/benchmark.md, the table of every record there: run the launcher
once per size (or per remat/accumulation variant) into one workdir to build
the whole table.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from typing import Any, Sequence

import jax
import ml_collections

from mlm_jax import config as config_lib
from mlm_jax import hostenv
from mlm_jax.bench import finetune as bench_finetune
from mlm_jax.bench import hf
from mlm_jax.bench import objectives as bench_objectives
from mlm_jax.bench import peers
from mlm_jax.bench import timing

RECORDS = "benchmark.jsonl"
TABLE = "benchmark.md"


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a benchmark run measures: experiments/benchmark.py's flags, not
  fields of the run config (training reads none of them)."""
  # Timed repeats (the step time is their median) of `steps` steps each;
  # with `objectives`, rounds of `steps` steps of each step.
  repeats: int = 5
  steps: int = 10
  # Hugging Face peers timed too, each in a process of its own: 'flax',
  # 'torch' (see `peers`).
  peers: tuple[str, ...] = ()
  # The peers' allocator: 'system' (as their users run them), 'jemalloc'
  # or 'tcmalloc'.
  peer_allocator: str = "system"
  # Steps timed interleaved with the config's own in this process:
  # objectives ('nsp', 'electra', ...) or masking strategies ('span', ...).
  objectives: tuple[str, ...] = ()
  # Time the fine-tuning step (sequence classification on the config's
  # encoder, `bench.finetune`) instead of pre-training's; its peer is
  # 'flax' (FlaxBertForSequenceClassification as run_flax_glue.py trains
  # it).
  finetune: bool = False


def config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a record says about the step it measured."""
  return {"size": config.model.size, "batch_size": config.train.batch_size,
          "seq_len": config.data.seq_len, "vocab_size": config.vocab_size,
          "parallel": config.parallel.mode, "dtype": config.model.dtype,
          "remat": config.model.remat,
          "scan_layers": config.model.scan_layers,
          "dropout": [config.model.dropout, config.model.attention_dropout],
          "dropout_rng": config.model.dropout_rng,
          "fused_adamw": config.optim.get("fused", True),
          "accum_steps": config.train.accum_steps,
          "objective": bench_objectives.label(config),
          "devices": jax.device_count(), "backend": jax.default_backend()}


def measure(config: ml_collections.ConfigDict,
            settings: Settings = Settings()) -> list[dict[str, Any]]:
  """Times our step (and the configured peers); one record per contender."""
  kinds = list(settings.peers)
  unknown = set(kinds) - set(peers.KINDS[1:])
  if unknown:
    raise config_lib.ConfigError(
        f"--peers: unknown peer(s) {sorted(unknown)}; use 'flax', 'torch' or "
        f"both, comma-separated.")
  allocator = settings.peer_allocator
  if allocator not in hostenv.ALLOCATORS:
    raise config_lib.ConfigError(
        f"--peer_allocator: unknown allocator {allocator!r}; use one of "
        f"{', '.join(hostenv.ALLOCATORS)}.")
  if kinds and allocator != "system" and not hostenv.find_library(allocator):
    raise config_lib.ConfigError(
        f"--peer_allocator: {allocator} is not installed; "
        f"{hostenv.install_hint(allocator)} or use 'system'.")
  if settings.finetune:  # combinations refused before packages checked
    if settings.objectives:
      raise config_lib.ConfigError(
          "--finetune and --objectives: the fine-tuning step has no "
          "pre-training objectives to interleave; run twice.")
    if set(kinds) - set(peers.FINETUNE_KINDS):
      raise config_lib.ConfigError(
          "--finetune: the fine-tuning step's peer is Hugging Face's Flax "
          "one (run_flax_glue.py); use --peers=flax or no peers.")
  needed = {"transformers"} | ({"torch"} if "torch" in kinds else set())
  missing = sorted(m for m in needed if importlib.util.find_spec(m) is None)
  if kinds and missing:
    raise config_lib.ConfigError(
        f"--peers={','.join(kinds)} needs {', '.join(missing)}, which is not "
        f"installed; {hf.INSTALL_HINT}.")
  fields = config_fields(config)
  if settings.finetune:
    fields.update(objective=bench_finetune.NAME,
                  num_labels=bench_finetune.NUM_LABELS)
  if settings.objectives:
    if kinds:
      raise config_lib.ConfigError(
          "--objectives and --peers: time objectives or peers in one run, "
          "not both; run twice.")
    return [{**fields, "kind": "objective",
             "allocator": hostenv.loaded_allocator(), **record}
            for record in bench_objectives.time_objectives(
                config, settings.objectives, steps=settings.steps,
                rounds=settings.repeats)]
  if not kinds:
    timer = (bench_finetune.time_train_step if settings.finetune
             else timing.time_train_step)
    measured = timer(config, steps=settings.steps, repeats=settings.repeats)
    return [{**fields, "kind": "ours",
             "allocator": hostenv.loaded_allocator(),
             **dataclasses.asdict(measured)}]
  results = peers.compare(
      config, kinds=["ours", *kinds], steps=settings.steps,
      repeats=settings.repeats, allocators={k: allocator for k in kinds},
      finetune=settings.finetune)
  return [{**fields, **record} for record in results.values()]


def variant(record: dict[str, Any]) -> str:
  """The non-default step options of a record, e.g. 'remat=full accum=4'."""
  parts = []
  # Records from before the objectives seam have no field: BERT's MLM.
  if record.get("objective", "mlm") != "mlm":
    parts.append(record["objective"])
  if record.get("remat", "none") != "none":
    parts.append(f"remat={record['remat']}")
  if record.get("accum_steps", 1) != 1:
    parts.append(f"accum={record['accum_steps']}")
  if record.get("scan_layers", False):
    parts.append("scan")
  if record.get("parallel", "jit") != "jit":
    parts.append(record["parallel"])
  if record.get("dtype", "float32") != "float32":
    parts.append(record["dtype"])
  # Records from before hashed dropout have no field: they used threefry.
  if record.get("dropout_rng", "threefry") != "hash":
    parts.append(f"{record.get('dropout_rng', 'threefry')} dropout")
  # Ours only (peers bring their own optimizer). Records from before the
  # fused update have no field: they used optax's chain.
  if record.get("kind") == "ours" and not record.get("fused_adamw", False):
    parts.append("optax adamw")
  return " ".join(parts)


def format_table(records: Sequence[dict[str, Any]]) -> str:
  """A Markdown table; the ratio is our plain step's tokens/s to this one's.

  'MFU bound' is the MFU of a step that took only as long as its matmuls
  (forward and both gradients) and its optimizer update, each timed alone
  (`timing.matmul_seconds`, `timing.optimizer_seconds`); blank where
  not measured (peers).

  'Plain' is the 'ours' record of the same size, batch, length and
  objective with no other variant that comes last before the line (for a
  peer, the one timed in the same run; repeated runs each compare within
  themselves), or the first after it if none comes before, so a peer's
  line reads as our speed-up over it and a variant's line as what the
  variant costs.
  """
  lines = ["| size | batch x len | step | variant | allocator | "
           "step ms (median) | tokens/s | lower s | compile s | MFU | "
           "MFU bound | peak host GB | ours / this |", "|" + " --- |" * 13]
  shape = lambda r: (r["size"], r["batch_size"], r["seq_len"],
                     r.get("objective", "mlm"))
  records = [r for r in records if r["kind"] != "objective"]
  is_plain = lambda r: r["kind"] == "ours" and variant(r) in (
      "", r.get("objective"))
  first, latest = {}, {}
  for r in records:
    if is_plain(r):
      first.setdefault(shape(r), r)
  for r in records:
    if is_plain(r):
      latest[shape(r)] = r
    base = latest.get(shape(r), first.get(shape(r)))
    ratio = f"{base['tokens_per_s'] / r['tokens_per_s']:.2f}" if base else ""
    bound = f"{r['mfu_bound']:.2f}" if r.get("mfu_bound") else ""
    lines.append(
        f"| {r['size']} | {r['batch_size']} x {r['seq_len']} | {r['kind']} | "
        f"{variant(r)} | {r.get('allocator', '')} | "
        f"{r['step_median'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | "
        f"{r['lower_seconds']:.2f} | {r['compile_seconds']:.2f} | "
        f"{r['mfu']:.2f} | {bound} | {r['peak_host_memory_gb']:.2f} | "
        f"{ratio} |")
  return "\n".join(lines)


def format_objectives_table(records: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of the interleaved objective timings ('objective'
  records); 'x first' is the step time over the first step of its run
  (the config's own, BERT's MLM), median over the run's rounds."""
  lines = ["| size | batch x len | objective | step ms (median) | tokens/s | "
           "x first | MFU | lower s | compile s |", "|" + " --- |" * 9]
  for r in records:
    if r["kind"] != "objective":
      continue
    lines.append(
        f"| {r['size']} | {r['batch_size']} x {r['seq_len']} | "
        f"{r['objective']} | {r['step_median'] * 1e3:.1f} | "
        f"{r['tokens_per_s']:,.0f} | {r['cost']:.3f} | {r['mfu']:.2f} | "
        f"{r['lower_seconds']:.2f} | {r['compile_seconds']:.2f} |")
  return "\n".join(lines) if len(lines) > 2 else ""


def format_tables(records: Sequence[dict[str, Any]]) -> str:
  """Every table the records fill: steps and peers, then objectives."""
  tables = [format_table(records) if any(
      r["kind"] != "objective" for r in records) else "",
            format_objectives_table(records)]
  return "\n\n".join(t for t in tables if t)


def append_records(workdir: str | pathlib.Path,
                   records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Appends to <workdir>/benchmark.jsonl; returns all records there."""
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / RECORDS
  with path.open("a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  with path.open(encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def run(config: ml_collections.ConfigDict, workdir: str,
        settings: Settings = Settings()) -> str:
  """Measures `config`, records it in `workdir`; returns this run's table."""
  records = measure(config, settings)
  everything = append_records(workdir, records)
  table = pathlib.Path(workdir) / TABLE
  tmp = table.with_suffix(".md.tmp")
  tmp.write_text(format_tables(everything) + "\n", encoding="utf-8")
  tmp.replace(table)
  return format_tables(records)
