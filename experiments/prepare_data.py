"""Prepares a corpus once: tokenizer, packed ArrayRecord shards, manifest.

  python experiments/prepare_data.py --config configs/bert.py:size=base \\
      --config.data.source=files --config.data.files='corpus/**/*.txt.gz' \\
      --config.data.dir=/data/mycorpus-L128

Pre-training with the same config then finds the prepared data and starts
at once. Re-running reuses what exists; a directory prepared with another
config is an error, never silently reused.
"""
import json

from absl import app
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax.data import prepare

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
cli.require(config="configs/bert.py:size=tiny,runlocal")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    data = prepare.prepare(_CONFIG.value)
  summary = {k: data.manifest[k] for k in (
      "documents", "examples", "tokens", "text_bytes", "packing_efficiency",
      "pack_mb_per_s", "workers")}
  print(f"{data.directory}\n{json.dumps(summary, indent=1)}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
