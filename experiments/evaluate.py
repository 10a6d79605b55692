"""Evaluates a pre-training checkpoint: loss, accuracy and perplexity with
fixed masks, printed and written as JSON.

  python experiments/evaluate.py --workdir /tmp/mlm_smoke --checkpoint best
  python experiments/evaluate.py --workdir /tmp/mlm_smoke \\
      --data_source=files --data_files='corpus/*.txt'

Without --data_source: a split of the run's own prepared data. With it:
every example of that corpus, tokenized with the run's tokenizer.
"""
import json

from absl import app
from absl import flags

from mlm_jax import cli
from mlm_jax import config as config_lib
from mlm_jax import evaluation
from mlm_jax import pretrained

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The workdir of a pre-training run.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", f"Which checkpoint: {pretrained.WHICH_HELP}.")
_SPLIT = flags.DEFINE_enum(
    "split", None, evaluation.SPLITS,
    "Split of the run's own prepared data (default: eval); not with "
    "--data_source.")
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", 0, "Evaluate the first this many batches of the run's "
    "train.batch_size (0: all); train.eval_batches means the same.",
    lower_bound=0)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON file to write; default: "
    "<workdir>/evaluation/step<step>-<data>[-<n>batches].json.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "Prepared-data cache (default: the run's "
    "config.data.cache_dir).")
# Another corpus: config.data fields of that name, as pre-training takes them.
_CORPUS = {
    "source": flags.DEFINE_enum(
        "data_source", None, ["offline", "tfds", "files"],
        "Evaluate on all of this corpus instead of the run's split."),
    "files": flags.DEFINE_string(
        "data_files", None, "With --data_source=files: a path, directory "
        "or glob."),
    "files_format": flags.DEFINE_enum(
        "data_files_format", None, ["text_blocks", "text_lines", "jsonl"],
        "With --data_source=files (default: the run's)."),
    "text_feature": flags.DEFINE_string(
        "text_feature", None, "The tfds feature or JSON Lines field of the "
        "text (default: the run's)."),
    "tfds_name": flags.DEFINE_string(
        "tfds_name", None, "With --data_source=tfds: the dataset name."),
    "tfds_split": flags.DEFINE_string(
        "tfds_split", None, "With --data_source=tfds: its split."),
    "tfds_data_dir": flags.DEFINE_string(
        "tfds_data_dir", None, "With --data_source=tfds: its data_dir."),
    "max_documents": flags.DEFINE_integer(
        "max_documents", None, "Read at most this many documents (default: "
        "all).", lower_bound=0),
}
cli.require(workdir="/tmp/mlm_smoke")
# The data_source each of these flags belongs to.
_ONLY_WITH = {"data_files": "files", "data_files_format": "files",
              "tfds_name": "tfds", "tfds_split": "tfds",
              "tfds_data_dir": "tfds"}


def _corpus() -> dict:
  """The other corpus's config.data fields, from the flags given."""
  v = {k: f.value for k, f in _CORPUS.items() if f.value is not None}
  source, fail = v.get("source"), config_lib.ConfigError
  if source == "files" and "files" not in v:
    raise fail("--data_source=files needs --data_files, a path, directory "
               "or glob, e.g. --data_files='corpus/*.txt'.")
  if source == "tfds" and "tfds_name" not in v:
    raise fail("--data_source=tfds needs --tfds_name, e.g. "
               "--tfds_name=wikipedia/20230601.en.")
  for field, flag in ((k, f.name) for k, f in _CORPUS.items() if k in v):
    kind = _ONLY_WITH.get(flag)
    if (kind and source != kind) or (field != "source" and not source):
      raise fail(f"--{flag} describes another corpus"
                 + (f", of --data_source={kind}" if kind else "")
                 + f"; add --data_source{'=' + kind if kind else ''}, or "
                 f"drop --{flag}.")
  if source and _SPLIT.value:
    raise fail("--split picks a split of the run's own data, and "
               "--data_source evaluates every example of another corpus; "
               "drop one of them.")
  return v


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  with cli.one_line_errors():
    corpus = _corpus()
    if _OUTPUT.value:  # before the work, not after it
      evaluation.check_writable(_OUTPUT.value)
    report = evaluation.evaluate_checkpoint(
        _WORKDIR.value, _CHECKPOINT.value, split=_SPLIT.value or "eval",
        corpus=corpus, cache_dir=_CACHE_DIR.value,
        max_batches=_MAX_BATCHES.value)
    path = _OUTPUT.value or evaluation.default_output(
        _WORKDIR.value, report["step"], report["data"]["name"],
        _MAX_BATCHES.value)
    report["output"] = str(evaluation.write_report(report, path))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
