"""Data throughput against what the training step consumes.

  python experiments/benchmark_data.py --config configs/bert.py:size=tiny,runlocal \\
      --workdir /tmp/mlm_bench_data

Prepares the config's corpus afresh into <workdir>/prepared-<time> (timing
tokenizer training and packing), times the training loader (examples/s,
median of 3), times the training step of the same config, and prints how
many times faster the loader is than the step's consumption. Writes
<workdir>/benchmark_data.json.
"""
import json
import pathlib
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax.bench import timing
from mlm_jax.data import prepare

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.")
cli.require(config="configs/bert.py:size=tiny,runlocal",
            workdir="/tmp/mlm_bench_data")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  config, out = _CONFIG.value, pathlib.Path(_WORKDIR.value)
  with cli.one_line_errors():
    prepare.prepare(config)  # the source itself (e.g. the tfds build) cached
    with config.unlocked():
      config.data.dir = str(out / f"prepared-{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.perf_counter()
    data = prepare.prepare(config)
    prepare_seconds = time.perf_counter() - start
    loader_rate = timing.time_loader(
        data.source("train"), global_batch=config.train.batch_size,
        threads=config.data.loader_threads)
    step = timing.time_train_step(config)
  m = data.manifest
  consumed = config.train.batch_size / step.step_median
  record = {
      "size": config.model.size, "batch_size": config.train.batch_size,
      "seq_len": config.data.seq_len, "text_mb": m["text_bytes"] / 2 ** 20,
      "prepare_seconds": prepare_seconds,
      "prepare_mb_per_s": m["text_bytes"] / 2 ** 20 / prepare_seconds,
      "tokenizer_seconds": m["seconds"]["tokenizer"],
      "pack_mb_per_s": m["pack_mb_per_s"], "workers": m["workers"],
      "loader_examples_per_s": loader_rate,
      "loader_threads": config.data.loader_threads,
      "step_examples_per_s": consumed, "loader_headroom": loader_rate / consumed}
  print("\n".join(f"{k}: {v:,.2f}" if isinstance(v, float) else f"{k}: {v}"
                  for k, v in record.items()))
  out.mkdir(parents=True, exist_ok=True)
  (out / "benchmark_data.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
