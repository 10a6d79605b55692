"""BERT masked-language-model pre-training.

Variants come from the arg string after the file name:
  --config configs/bert.py                      # BERT-base, TPU-pod scale
  --config configs/bert.py:size=large
  --config configs/bert.py:size=tiny,runlocal   # CPU smoke run, ~2 minutes
  --config configs/bert.py:size=small,bench     # the peer benchmark's shape
  --config configs/bert.py:objective=electra    # any objective, by name
  --config configs/bert.py:masking=whole_word   # or span (SpanBERT)
Any field can then be overridden: --config.optim.lr=5e-4.
"""
import ml_collections

from mlm_jax import config as config_lib
from mlm_jax import masking
from mlm_jax import objectives


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for the variant named by `arg`."""
  variant = config_lib.parse_arg(arg, size="base", runlocal=False,
                                 bench=False, objective="mlm",
                                 masking="token")
  layers, hidden, heads = config_lib.model_size(variant.size)

  config = ml_collections.ConfigDict()
  # Seed of parameter init, data order, masks and dropout.
  config.seed = 0
  # Tokenizer vocabulary size; also the model's embedding rows.
  config.vocab_size = 32000

  config.tokenizer = ml_collections.ConfigDict()
  # An existing SentencePiece model file; empty: train one on the corpus.
  config.tokenizer.path = ""
  # SentencePiece algorithm when training: 'unigram' or 'bpe'.
  config.tokenizer.model_type = "unigram"
  # Train the tokenizer on (at most) the first this many documents ...
  config.tokenizer.train_documents = 1_000_000
  # ... and on at most this many of their lines (subsampled evenly).
  config.tokenizer.max_sentences = 2_000_000

  config.data = ml_collections.ConfigDict()
  # Where documents come from: 'offline' (Python docstrings, no network),
  # 'tfds' (a tensorflow-datasets corpus) or 'files' (local text/JSONL).
  config.data.source = "offline"
  # tfds dataset name and split, e.g. 'wikipedia/20230601.en', 'c4/en'.
  config.data.tfds_name = ""
  config.data.tfds_split = "train"
  # tfds data_dir ('' = tfds's default; a gs:// path on Cloud TPU).
  config.data.tfds_data_dir = ""
  # The tfds feature, or JSON Lines field, that holds the text.
  config.data.text_feature = "text"
  # Local files: a path, a directory or a glob ('**' recurses); .gz is read.
  config.data.files = ""
  # 'text_blocks' (blank-line separated), 'text_lines' or 'jsonl'.
  config.data.files_format = "text_blocks"
  # Use at most this many documents of the source (0: all of them).
  config.data.max_documents = 0
  # Tokens per example, special tokens included.
  config.data.seq_len = 128
  # 'stream': documents end to end, [SEP] between them; 'pairs': sentence
  # pairs [CLS] A [SEP] B [SEP] with segment ids 0/1.
  config.data.packing = "stream"
  # Fraction of packed examples held out for evaluation.
  config.data.eval_fraction = 0.01
  # The prepared dataset directory ('' = under cache_dir, named by a
  # fingerprint of everything that shapes it).
  config.data.dir = ""
  # Where corpora, tokenizers and prepared datasets are cached.
  config.data.cache_dir = "~/.cache/mlm_jax"
  # Processes that tokenize and pack (0: one per CPU core).
  config.data.workers = 0
  # Threads that read and decode examples ahead of the training step.
  config.data.loader_threads = 4

  config.model = ml_collections.ConfigDict()
  # Name of the size preset the fields below came from (for the logs).
  config.model.size = variant.size
  # Number of Transformer layers.
  config.model.num_layers = layers
  # Width of the residual stream.
  config.model.hidden_size = hidden
  # Attention heads per layer (hidden_size must be divisible by it).
  config.model.num_heads = heads
  # Width of the feed-forward block.
  config.model.intermediate_size = 4 * hidden
  # Rows of the learned position embedding (longest sequence supported).
  config.model.max_positions = 512
  # Segment (token type) ids the model embeds: 2 for sentence pairs.
  config.model.type_vocab_size = 2
  # Dropout on embeddings, attention output and feed-forward output.
  config.model.dropout = 0.1
  # Dropout on attention probabilities.
  config.model.attention_dropout = 0.1
  # Where dropout's keep-masks come from: 'hash' (a counter hash keyed by
  # threefry per layer; far cheaper on CPU) or 'threefry' (flax's
  # nn.Dropout, jax.random.bernoulli per element).
  config.model.dropout_rng = "hash"
  # LayerNorm before each sub-block (pre-LN) instead of after (BERT).
  config.model.pre_layer_norm = False
  # Epsilon of every LayerNorm (BERT uses 1e-12).
  config.model.layer_norm_eps = 1e-12
  # Stddev of the truncated-normal initialiser of weights.
  config.model.init_std = 0.02
  # Computation dtype; parameters stay float32. bfloat16 on TPU/GPU.
  config.model.dtype = "float32"
  # Run the layers under nn.scan (one compiled layer, stacked parameters)
  # instead of unrolled. Scan compiles once per model whatever its depth;
  # unrolled steps run faster on CPU but compile longer as depth grows, so
  # models past 12 layers scan (figures: docs/benchmark/).
  config.model.scan_layers = layers > 12
  # Rematerialisation of each layer: 'none', 'full' or 'dots_saveable'.
  config.model.remat = "none"
  # Let tokens attend to other documents packed into the same example
  # (BERT); False restricts attention to the token's own document.
  config.model.attend_across_documents = True
  # How the model knows where a token is: 'learned' (BERT's position
  # embeddings) or 'alibi' (no position embeddings; a per-head penalty on
  # attention linear in the distance between tokens, as MosaicBERT).
  config.model.position_encoding = "learned"

  # The pre-training objective and each objective's settings (their fields
  # are commented where defined: mlm_jax/objectives/<name>.py).
  config.objective = objectives.default_config()
  config.objective.name = variant.objective
  # How MLM-style objectives choose what to predict (mlm_jax/masking.py).
  config.masking = masking.default_config()
  config.masking.strategy = variant.masking
  if variant.objective == "electra":
    # ELECTRA's masking: 85% [MASK], 15% unchanged, no random tokens.
    config.masking.mask_prob, config.masking.random_prob = 0.85, 0.0
  if variant.objective in ("nsp", "sop"):
    config.data.packing = "pairs"

  config.optim = ml_collections.ConfigDict()
  # Peak learning rate, reached at the end of warm-up.
  config.optim.lr = 1e-4
  # Linear warm-up steps from 0 to the peak.
  config.optim.warmup_steps = 10_000
  # Decay after warm-up to end_lr_ratio * lr: 'linear' or 'cosine'.
  config.optim.decay = "linear"
  # Learning rate at the last step as a fraction of the peak.
  config.optim.end_lr_ratio = 0.0
  # Decoupled (AdamW) weight decay; never applied to biases and LayerNorm.
  config.optim.weight_decay = 0.01
  # Adam moment decay rates and epsilon.
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-6
  # Clip gradients to this global L2 norm (0: no clipping).
  config.optim.grad_clip = 1.0
  # Clipping and AdamW as one elementwise update per parameter
  # (optim.fused_adamw); False builds the same update from optax's chain.
  config.optim.fused = True

  config.train = ml_collections.ConfigDict()
  # Global batch size in sequences, split over all devices.
  config.train.batch_size = 256
  # Micro-batches per step: the batch is processed in this many slices whose
  # gradients are summed (same result, less activation memory).
  config.train.accum_steps = 1
  # Optimizer steps in the whole run.
  config.train.num_steps = 1_000_000
  # Log training metrics every this many steps.
  config.train.log_every = 100
  # Evaluate on the held-out split every this many steps (and at the end).
  config.train.eval_every = 10_000
  # Evaluate on at most this many held-out batches (0: the whole split).
  config.train.eval_batches = 0
  # Write a checkpoint every this many steps (and at the end).
  config.train.checkpoint_every = 10_000
  # Checkpoints kept on disk (0: all); older ones are deleted once a newer
  # one is written. The checkpoint with the best held-out loss is kept
  # apart (<workdir>/best) and never deleted.
  config.train.max_to_keep = 3
  # Stop when the held-out loss has not improved by more than min_delta
  # for this many evaluations in a row (0: never stop early).
  config.train.early_stopping_patience = 0
  config.train.early_stopping_min_delta = 0.0
  # Write checkpoints in the background while training continues.
  config.train.async_checkpoint = True

  config.parallel = ml_collections.ConfigDict()
  # 'jit': one program over a (data, fsdp) mesh of all devices; 'pmap':
  # per-device data parallelism. Same results; on CPU jit is faster and
  # needs less temporary memory (pmap's psum of the gradients needs buffers
  # of its own; the benchmark times both: docs/benchmark/).
  config.parallel.mode = "jit"
  # Devices that shard parameters and optimizer state (mode 'jit' only).
  config.parallel.fsdp = 1

  config.host = ml_collections.ConfigDict()
  # Memory allocator of the launcher's process on CPU, preloaded by one
  # re-execution: 'mimalloc' (installed with this package on Linux; the
  # fastest), 'jemalloc' (apt install libjemalloc2; with transparent huge
  # pages, less peak memory), 'tcmalloc' (apt install libtcmalloc-minimal4)
  # or 'system' (glibc, untouched). When the one asked for is missing, glibc
  # with its huge-page tunable. Measurements: docs/benchmark/.
  config.host.allocator = "mimalloc"

  if variant.bench:
    # The peer benchmark's shape: BERT's vocabulary and sequence length, and
    # per size the batch that fits a 2-core CPU step in about a second.
    config.vocab_size = 30522
    config.data.seq_len = 128
    config.train.batch_size = {"tiny": 32, "mini": 16, "small": 8}.get(
        variant.size, 4)

  if variant.runlocal:
    # A CPU smoke run: small vocabulary and corpus, about 2 minutes of
    # training on 2 cores. Pre-LN, a higher learning rate and Adam's b2 of
    # 0.98 leave the unigram plateau sooner than BERT's post-LN recipe; with
    # learned position embeddings the tiny model then only learns to copy
    # the kept tokens within the run, while ALiBi's distance penalty lets it
    # use the neighbouring tokens, which a small vocabulary makes
    # informative (the measurements: README, Set up and run).
    config.vocab_size = 2000
    config.model.position_encoding = "alibi"
    config.tokenizer.max_sentences = 300_000
    config.data.max_documents = 30_000
    config.model.dropout = 0.0
    config.model.attention_dropout = 0.0
    config.model.pre_layer_norm = True
    config.optim.lr = 2e-3
    config.optim.b2 = 0.98
    config.optim.warmup_steps = 50
    config.train.batch_size = 32
    config.train.num_steps = 1600
    config.train.log_every = 100
    config.train.eval_every = 400
    config.train.eval_batches = 20
    config.train.checkpoint_every = 800
    if variant.objective == "electra":
      # At temperature 1 the tiny generator soon learns the corpus's
      # unigram statistics, and its samples stay too plausible for the tiny
      # discriminator to beat answering "original" within the run; sampling
      # at 2 gives it replacements it can find.
      config.objective.electra.temperature = 2.0
    if variant.objective == "nsp":
      # The pair classifier leaves chance late and at a seed-dependent step
      # on this corpus (measured: step ~1,000 for seed 0, ~2,600 for seed
      # 1); twice the steps give every seed tried the time to.
      config.train.num_steps = 3200
  return config


def get_hyper(h):
  """A learning-rate by warm-up sweep (big_vision style)."""
  return h.product([
      h.sweep("config.optim.lr", [5e-5, 1e-4, 2e-4]),
      h.sweep("config.optim.warmup_steps", [5_000, 10_000]),
  ])
