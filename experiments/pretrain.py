"""Pre-trains an MLM encoder: `--config` and `--workdir`, nothing else.

  python experiments/pretrain.py \\
      --config configs/bert.py:size=tiny,runlocal --workdir /tmp/mlm_smoke

Running it again with the same --workdir resumes from the last checkpoint.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax import hostenv
from mlm_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and the tokenizer.")
cli.require(config="configs/bert.py:size=tiny,runlocal",
            workdir="/tmp/mlm_smoke")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    hostenv.use_allocator(_CONFIG.value.host.allocator)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
