"""Times the training step of a config: step time, tokens/s, compile, MFU.

  python experiments/benchmark.py --config configs/bert.py:size=tiny,runlocal \\
      --workdir /tmp/mlm_bench
  # Against Hugging Face's BERT (pip install -e '.[bench]'):
  python experiments/benchmark.py --config configs/bert.py:size=tiny,bench \\
      --config.benchmark.peers=flax,torch --workdir /tmp/mlm_bench

Prints this run's table, appends its records to <workdir>/benchmark.jsonl
and rewrites <workdir>/benchmark.md from all records there. Any config field
can be overridden as for pre-training (--config.model.remat=full).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax import hostenv
from mlm_jax.bench import report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where benchmark.jsonl and benchmark.md go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    hostenv.use_allocator(_CONFIG.value.host.allocator)
    print(report.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
