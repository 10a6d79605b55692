"""Hugging Face's FlaxBertForMaskedLM trained as its Flax MLM example does.

The peer `peers` times as 'flax': transformers' example
examples/flax/language-modeling/run_mlm_flax.py, reproduced: masks drawn on
the host in numpy per batch, cross-entropy over the full [B, L, V] logits
weighted by `labels > 0`, optax AdamW with their weight-decay mask and linear
schedule, the step under `jax.jit` with the state donated (they `pmap` with
`lax.pmean`; on one device that is the same computation), plus our
global-norm clipping. transformers is imported only when a model is built.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from flax.training import common_utils
from flax.training import train_state

from mlm_jax import benchmark
from mlm_jax import peers
from mlm_jax import synthetic
from mlm_jax import tokenizer as tok



def mask_tokens(tokens: np.ndarray, special_mask: np.ndarray,
                config: ml_collections.ConfigDict,
                rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
  """run_mlm_flax.py's FlaxDataCollatorForLanguageModeling.mask_tokens.

  Each non-special position is selected with probability masking.rate
  (Bernoulli, so the count varies per sequence); a selected token becomes
  [MASK] with probability mask_prob, else a uniformly random id of the whole
  vocabulary (special ids included, as theirs) with probability
  random_prob / (1 - mask_prob), else stays. A legacy RandomState draws them,
  as their `np.random.binomial` calls do.

  Args:
    tokens: [B, L] int token ids; not modified.
    special_mask: [B, L] int, 1 where a position is never selected.
    config: the run config (masking.*, vocab_size).
    rng: the host random state, advanced by the call.
  Returns:
    (input_ids, labels): [B, L] arrays; labels are the original ids at
    selected positions and -100 elsewhere.
  """
  k = config.masking
  inputs, labels = tokens.copy(), tokens.copy()
  probability = np.full(labels.shape, k.rate)
  probability[special_mask.astype(bool)] = 0.0
  selected = rng.binomial(1, probability).astype(bool)
  labels[~selected] = -100
  replaced = rng.binomial(
      1, np.full(labels.shape, k.mask_prob)).astype(bool) & selected
  inputs[replaced] = tok.MASK_ID
  random_share = k.random_prob / (1.0 - k.mask_prob) if k.mask_prob < 1 else 0
  randomized = rng.binomial(1, np.full(labels.shape, random_share)).astype(bool)
  randomized &= selected & ~replaced
  random_words = rng.randint(config.vocab_size, size=labels.shape, dtype="i4")
  inputs[randomized] = random_words[randomized]
  return inputs, labels


def flax_batch(tokens: np.ndarray, special_mask: np.ndarray,
               config: ml_collections.ConfigDict,
               rng: np.random.RandomState) -> dict[str, np.ndarray]:
  """The host batch run_mlm_flax.py feeds its step: masked ids and labels."""
  input_ids, labels = mask_tokens(tokens, special_mask, config, rng)
  return {"input_ids": input_ids, "attention_mask": np.ones_like(tokens),
          "token_type_ids": np.zeros_like(tokens), "labels": labels}


def _lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """run_mlm_flax.py's linear warm-up then linear decay, our numbers."""
  o = config.optim
  warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
  decay = optax.linear_schedule(
      o.lr, o.lr * o.end_lr_ratio,
      max(config.train.num_steps - o.warmup_steps, 1))
  return optax.join_schedules([warmup, decay], [o.warmup_steps])


def _decay_mask(params: Any) -> Any:
  """run_mlm_flax.py's decay_mask_fn: no decay on biases, LayerNorm scales."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      path: path[-1] != "bias" and path[-2:] != ("LayerNorm", "scale")
      for path in flat})


def flax_train_step(state: train_state.TrainState, batch: dict[str, Any],
                    dropout_rng: jax.Array, *, schedule: optax.Schedule
                    ) -> tuple[train_state.TrainState, dict[str, jax.Array],
                               jax.Array]:
  """run_mlm_flax.py's train_step without the pmean (one device, jit).

  Args:
    state: params and AdamW state; `apply_fn` is the HF model's __call__.
    batch: `flax_batch` arrays, each [B, L].
    dropout_rng: key split here; the second half is returned for next step.
    schedule: the learning-rate schedule, only for the logged metric.
  Returns:
    (new state, {'loss', 'learning_rate'} float32 scalars, next dropout key).
  """
  dropout_rng, new_dropout_rng = jax.random.split(dropout_rng)
  labels = batch["labels"]
  inputs = {k: v for k, v in batch.items() if k != "labels"}

  def loss_fn(params):
    logits = state.apply_fn(**inputs, params=params, dropout_rng=dropout_rng,
                            train=True)[0]
    # Theirs: `labels > 0` (ids are positive), i.e. label != -100 here.
    label_mask = jnp.where(labels > 0, 1.0, 0.0)
    loss = optax.softmax_cross_entropy(
        logits, common_utils.onehot(labels, logits.shape[-1])) * label_mask
    return loss.sum() / label_mask.sum()

  loss, grad = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grad)
  metrics = {"loss": loss, "learning_rate": schedule(state.step)}
  return new_state, metrics, new_dropout_rng


def build_hf_flax(config: ml_collections.ConfigDict
                  ) -> tuple[train_state.TrainState, Callable, jax.Array]:
  """A freshly initialised FlaxBertForMaskedLM, its optimizer and step.

  Returns:
    (state, train_step, dropout_rng): `train_step(state, batch,
    dropout_rng) -> (state, metrics, dropout_rng)` is jitted with the state
    donated.
  """
  transformers = peers.require("transformers")
  auto = getattr(transformers, "FlaxAutoModelForMaskedLM", None)
  if auto is None:
    raise peers.MissingPeerError(
        f"transformers {transformers.__version__} has no Flax models (they "
        f"were removed after 4.57). Install the pinned peers: "
        f"{peers.INSTALL_HINT}.")
  model = auto.from_config(peers.bert_config(config), seed=config.seed,
                           dtype=getattr(jnp, config.model.dtype))
  o = config.optim
  schedule = _lr_schedule(config)
  tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                   weight_decay=o.weight_decay, mask=_decay_mask)
  if o.grad_clip > 0:  # Not in run_mlm_flax.py; ours clips.
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  state = train_state.TrainState.create(apply_fn=model.__call__,
                                        params=model.params, tx=tx)
  step = jax.jit(functools.partial(flax_train_step, schedule=schedule),
                 donate_argnums=(0,))
  return state, step, jax.random.PRNGKey(config.seed)



def time_hf_flax(config: ml_collections.ConfigDict, *, steps: int = 10,
                 repeats: int = 5, peak_flops: float | None = None
                 ) -> benchmark.StepTiming:
  """Times the HF Flax peer of the config's objective, host work included.

  BERT's MLM: FlaxBertForMaskedLM as run_mlm_flax.py trains it; other
  objectives: `peer_flax_objectives`. Each timed step prepares its batch on
  the host (masking, pairs) and dispatches the device step (which overlaps
  the next step's host work, as in their loop); each repeat of `steps`
  steps blocks on its last result. Its peak host memory is this process's:
  see `peers.run_in_subprocess`.
  """
  from mlm_jax import peer_flax_objectives  # pylint: disable=import-outside-toplevel
  host = synthetic.batch(config)
  peer = peer_flax_objectives.build(config, host)
  if peer is None:
    state, train_step, dropout_rng = build_hf_flax(config)
    tokens = host["tokens"]
    special = peers.special_tokens_mask(tokens)
    rng = np.random.RandomState(config.seed)
    make_batch = lambda: flax_batch(tokens, special, config, rng)
  else:
    state, train_step, dropout_rng, make_batch = peer
  batch = make_batch()
  jax.block_until_ready((state, batch))  # as ours: no init in the lowering
  start = time.perf_counter()
  lowered = train_step.lower(state, batch, dropout_rng)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  state, metrics, dropout_rng = compiled(state, batch, dropout_rng)  # warm-up
  jax.block_until_ready(metrics)

  def run(steps):
    nonlocal state, metrics, dropout_rng
    for _ in range(steps):
      state, metrics, dropout_rng = compiled(state, make_batch(), dropout_rng)
    jax.block_until_ready(metrics)

  times, peaks = benchmark.time_repeats(run, steps=steps, repeats=repeats,
                                        sample_peak=peak_flops is None)
  return benchmark.step_timing(config, times, lower_seconds, compile_seconds,
                               peak_flops, peak_samples=peaks)
