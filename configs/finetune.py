"""Fine-tuning a pre-trained encoder on a downstream task.

  python experiments/finetune.py --config configs/finetune.py \\
      --config.init.checkpoint=/tmp/mlm_smoke --workdir /tmp/ft_smoke

Variants after ':':
  task=offline       which package a docstring comes from (no network)
  task=glue/sst2     a tensorflow-datasets GLUE task (cola, sst2, mrpc, qqp,
                     stsb, mnli, qnli, rte, wnli), read from a prepared
                     data dir (--config.task.tfds_data_dir)
  task=files         local CSV/TSV/JSON Lines/CoNLL files: set
                     task.source, task.kind, task.train/dev/test and the
                     column names
  runlocal           the CPU smoke settings (the tiny smoke checkpoint)
Any field can then be overridden: --config.optim.lr=3e-5.
"""
import ml_collections

from mlm_jax import config as config_lib
from mlm_jax.finetune import tasks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for the variant named by `arg`."""
  variant = config_lib.parse_arg(arg, task="offline", runlocal=False)

  config = ml_collections.ConfigDict()
  config.init = ml_collections.ConfigDict()
  # The workdir of a pre-training run (experiments/pretrain.py): its
  # config, tokenizer and encoder weights.
  config.init.checkpoint = ""
  # Which of its checkpoints: 'best' (lowest held-out loss), 'latest' or a
  # step number.
  config.init.which = "best"
  # Start from random weights of the checkpoint's config instead (its
  # tokenizer too): the baseline that shows what pre-training brought.
  config.init.random_weights = False

  # The task's data (fields: mlm_jax/finetune/tasks.py), plus the settings
  # below. Source 'offline' is the task made from the offline corpus.
  config.task = tasks.task_config()
  config.task.source = "offline"
  # Train on the first this many training examples only (0: all), e.g.
  # for learning curves or a quick run.
  config.task.max_train_examples = 0
  # Tokens per example, [CLS] and [SEP] included; longer texts are cut.
  config.task.max_len = 128
  # Batches come in this many fixed lengths up to max_len, so the step
  # compiles at most this many times.
  config.task.num_buckets = 4
  # Where the offline task is built (and the offline corpus read from).
  config.task.cache_dir = "~/.cache/mlm_jax"
  # The offline task's number of classes (packages).
  config.task.offline_classes = 8

  config.model = ml_collections.ConfigDict()
  # Dropout while fine-tuning (BERT: 0.1), whatever pre-training used.
  config.model.dropout = 0.1
  config.model.attention_dropout = 0.1

  config.optim = ml_collections.ConfigDict()
  # As transformers' run_glue_flax: AdamW, linear warm-up then linear decay.
  config.optim.lr = 5e-5
  # Warm-up steps as a fraction of all steps.
  config.optim.warmup_ratio = 0.1
  config.optim.decay = "linear"
  config.optim.end_lr_ratio = 0.0
  config.optim.weight_decay = 0.01
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-6
  config.optim.grad_clip = 1.0
  config.optim.fused = True

  config.train = ml_collections.ConfigDict()
  # One fine-tuning per seed (head initialisation, data order, dropout);
  # results give each and their median, min and max.
  config.train.seeds = "0,1,2"
  config.train.batch_size = 32
  config.train.num_epochs = 3
  # Log training metrics every this many steps.
  config.train.log_every = 50
  # Score the dev split every this many steps (0: after every epoch).
  config.train.eval_every = 0
  # The dev score that picks the best checkpoint and drives early
  # stopping ('' = accuracy, pearson or entity_f1 by task kind).
  config.train.metric = ""
  # Scores reported, comma-separated ('' = the task kind's usual ones):
  # accuracy, f1, macro_f1, matthews, pearson, spearman, entity_f1, ...
  config.train.scores = ""
  # Stop a seed when the dev metric has not improved by more than
  # min_delta for this many evaluations (0: never).
  config.train.early_stopping_patience = 0
  config.train.early_stopping_min_delta = 0.0

  config.parallel = ml_collections.ConfigDict()
  # 'jit' over a mesh of all devices, or 'pmap'; see configs/bert.py.
  config.parallel.mode = "jit"
  config.parallel.fsdp = 1

  config.host = ml_collections.ConfigDict()
  # The launcher's memory allocator on CPU; see configs/bert.py.
  config.host.allocator = "mimalloc"

  if variant.task.startswith("glue/"):
    config.task.source = ""  # GLUE's table
    config.task.path_or_name = variant.task
  elif variant.task == "files":
    config.task.source = ""  # from the files' extension
  elif variant.task != "offline":
    raise config_lib.ConfigError(
        f"Unknown task variant {variant.task!r}; use offline, files or a "
        "GLUE name such as glue/sst2.")

  if variant.runlocal:
    # The CPU smoke fine-tuning of the smoke checkpoint: a few epochs of the
    # offline task, the tiny model's learning rate.
    config.optim.lr = 1e-3
    config.train.num_epochs = 3
    config.train.log_every = 50
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.0
  return config
