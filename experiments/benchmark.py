"""Times the training step of a config: step time, tokens/s, compile, MFU.

  python experiments/benchmark.py --config configs/bert.py:size=tiny,runlocal \\
      --workdir /tmp/mlm_bench

Prints a table and writes <workdir>/benchmark.json. Any config field can be
overridden as for pre-training (--config.train.batch_size=64).
"""
import json
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import benchmark
from mlm_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where benchmark.json goes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    result = benchmark.time_train_step(_CONFIG.value)
  print(benchmark.format_table([(_CONFIG.value, result)]))
  out = pathlib.Path(_WORKDIR.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "benchmark.json").write_text(json.dumps(
      benchmark.as_record(_CONFIG.value, result), indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
