"""Times the training step of a config: step time, tokens/s, compile, MFU.

  python experiments/benchmark.py --config configs/bert.py:size=tiny,runlocal \\
      --workdir /tmp/mlm_bench
  # Against Hugging Face's BERT (pip install -e '.[bench]'):
  python experiments/benchmark.py --config configs/bert.py:size=tiny,bench \\
      --peers=flax,torch --workdir /tmp/mlm_bench
  # Each objective's step against BERT's MLM step, interleaved:
  python experiments/benchmark.py --config configs/bert.py:size=small,bench \\
      --objectives=span,nsp,electra --workdir /tmp/mlm_bench
  # The fine-tuning step against FlaxBertForSequenceClassification:
  python experiments/benchmark.py --config configs/bert.py:size=base,bench \\
      --finetune --peers=flax --workdir /tmp/mlm_bench

Prints this run's table, appends its records to <workdir>/benchmark.jsonl
and rewrites <workdir>/benchmark.md from all records there. --config is the
run config to time, any field overridable as for pre-training
(--config.model.remat=full); the other flags say how to measure it.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from mlm_jax import cli
from mlm_jax import hostenv
from mlm_jax.bench import report

_DEFAULT = report.Settings()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with variants after ':'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where benchmark.jsonl and benchmark.md go.")
_REPEATS = flags.DEFINE_integer(
    "repeats", _DEFAULT.repeats,
    "Timed repeats; the step time is their median (with --objectives: "
    "rounds).")
_STEPS = flags.DEFINE_integer(
    "steps", _DEFAULT.steps, "Steps in each timed repeat (or round).")
_PEERS = flags.DEFINE_list(
    "peers", list(_DEFAULT.peers),
    "Hugging Face peers timed too, each in a process of its own, "
    "comma-separated: 'flax' (FlaxBertForMaskedLM as run_mlm_flax.py trains "
    "it, or the objective's Flax peer), 'torch' (BertForMaskedLM as Trainer "
    "trains it). Needs the 'bench' extra.")
_PEER_ALLOCATOR = flags.DEFINE_string(
    "peer_allocator", _DEFAULT.peer_allocator,
    "The peers' allocator: 'system' (as their users run them), 'jemalloc' "
    "or 'tcmalloc'.")
_OBJECTIVES = flags.DEFINE_list(
    "objectives", list(_DEFAULT.objectives),
    "Steps timed in this process, interleaved with the config's own, for "
    "what each costs next to it, comma-separated: objectives ('nsp', "
    "'electra', ...) or masking strategies ('whole_word', 'span').")
_FINETUNE = flags.DEFINE_bool(
    "finetune", _DEFAULT.finetune,
    "Time the fine-tuning step (sequence classification, 2 labels, on the "
    "config's encoder, batch and length) instead of pre-training's; with "
    "--peers=flax, against FlaxBertForSequenceClassification as "
    "run_flax_glue.py trains it.")
cli.require(config="configs/bert.py:size=tiny,runlocal",
            workdir="/tmp/mlm_bench")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  settings = report.Settings(
      repeats=_REPEATS.value, steps=_STEPS.value, peers=tuple(_PEERS.value),
      peer_allocator=_PEER_ALLOCATOR.value,
      objectives=tuple(_OBJECTIVES.value), finetune=_FINETUNE.value)
  with cli.one_line_errors():
    hostenv.use_allocator(_CONFIG.value.host.allocator)
    print(report.run(_CONFIG.value, _WORKDIR.value, settings))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
