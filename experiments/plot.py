"""Draws the loss and accuracy curves of training runs into one image.

  python experiments/plot.py /tmp/mlm_jax_smoke /tmp/electra_smoke --out curves.png

Workdirs as arguments (or `--workdirs=a,b`); each must hold the
metrics.jsonl that experiments/pretrain.py writes. One panel for the loss and
one per accuracy, one colour per run, training solid and evaluation dashed.
"""
import sys

from absl import app
from absl import flags

from mlm_jax import plot

_WORKDIRS = flags.DEFINE_list(
    "workdirs", [], "Workdirs to plot, comma-separated (or as arguments).")
_OUT = flags.DEFINE_string(
    "out", "curves.png", "Image to write: .png, or .pdf/.svg.")


def main(argv):
  workdirs = [*_WORKDIRS.value, *argv[1:]]
  if not workdirs:
    raise app.UsageError("Pass one or more workdirs, e.g. "
                         "experiments/plot.py /tmp/mlm_jax_smoke --out c.png")
  try:
    print(plot.plot_runs(workdirs, _OUT.value))
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
