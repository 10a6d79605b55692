"""Fine-tunes a pre-trained encoder on a downstream task, for several seeds.

  python experiments/finetune.py --config configs/finetune.py:runlocal \\
      --config.init.checkpoint=/tmp/mlm_smoke --workdir /tmp/ft_smoke

Results (every seed's dev and test scores, their median, min and max) go to
<workdir>/results.json; --config.init.random_weights=True trains the same
model from random weights, the baseline for what pre-training brought.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax import hostenv
from mlm_jax.finetune import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for the results, metrics and checkpoints.")
cli.require(config="configs/finetune.py:runlocal "
            "--config.init.checkpoint=/tmp/mlm_smoke",
            workdir="/tmp/ft_smoke")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    hostenv.use_allocator(_CONFIG.value.host.allocator)
    run.finetune(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
