"""Fills the [MASK]s of texts with a pre-trained checkpoint's MLM head: the
top-k pieces of each mask with their probabilities, and the filled text.

  python experiments/fill_mask.py --workdir /tmp/mlm_smoke \\
      --text "Return the [MASK] [MASK] of the array." --mode mask_predict

One [MASK] stands for ONE token piece of the run's SentencePiece vocabulary
(a subword; '\u2581' marks a word start), not a word.
"""
from absl import app
from absl import flags

from mlm_jax import cli
from mlm_jax import fill_mask
from mlm_jax import pretrained

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The workdir of a pre-training run.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", f"Which checkpoint: {pretrained.WHICH_HELP}.")
_TEXT = flags.DEFINE_multi_string(
    "text", None, "Text with one or more literal [MASK] (repeat the flag for "
    "several texts). One [MASK] stands for ONE token piece (a subword of the "
    "run's SentencePiece vocabulary), not a word: a word the vocabulary "
    "cuts in two needs [MASK][MASK]")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Candidates shown per [MASK].",
                              lower_bound=1)
_MODE = flags.DEFINE_enum(
    "mode", "independent", fill_mask.MODES,
    "'independent': every mask from one pass; 'mask_predict': predict all, "
    "then re-mask and re-predict the least confident (Mask-Predict, "
    "Ghazvininejad et al. 2019), so masks depend on each other.")
_ITERATIONS = flags.DEFINE_integer(
    "iterations", None, "Mask-predict's passes over each text (default: its "
    "number of masks).", lower_bound=1)
cli.require(workdir="/tmp/mlm_smoke")
flags.register_multi_flags_validator(
    ["mode", "iterations"],
    lambda v: v["iterations"] is None or v["mode"] == "mask_predict",
    "--iterations applies to --mode=mask_predict; add it, or drop "
    "--iterations")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    if not _TEXT.value:
      raise fill_mask.FillMaskError(
          "--text is required (a text with one or more [MASK]), e.g. --text "
          "'Return the [MASK] of the array.'")
    model = pretrained.load(_WORKDIR.value, _CHECKPOINT.value)
    results = fill_mask.fill_mask(model, _TEXT.value, top_k=_TOP_K.value,
                                  mode=_MODE.value,
                                  iterations=_ITERATIONS.value)
  print(f"{model.path} ({model.objective.name}), {_MODE.value}:")
  for r in results:
    print(f"\n{r.text}\n  -> {r.filled}")
    for j, candidates in enumerate(r.masks):
      print(f"  [MASK] {j + 1}: " + "  ".join(
          f"{c.piece} {c.probability:.3f}" for c in candidates))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
