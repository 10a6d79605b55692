"""Fill-mask: the MLM head's most probable pieces for each [MASK] of a text.

  model = pretrained.load("/tmp/mlm_smoke", "best")
  for r in fill_mask.fill_mask(model, ["Return the [MASK] of the array."]):
    print(r.filled, r.masks[0][:3])   # [(piece, probability, id), ...]

One [MASK] stands for ONE token piece of the run's SentencePiece
vocabulary (a subword such as '\u2581arr' or 'ay'; '\u2581' marks a word
start), not for a word. The text is encoded as in pre-training, [CLS] text
[SEP] in segment 0 at positions 0.., the text after a [MASK] continuing
the word it touches (`Tokenizer.encode_following`). Special pieces ([PAD],
[UNK], [CLS], [SEP], [MASK]) are never candidates; probabilities are the
model's softmax over the whole vocabulary, so a mask's candidates sum to at
most 1.

Modes:
  independent   every mask from one pass over the text (plain MLM: each
                mask ignores what the others become);
  mask_predict  Mask-Predict (Ghazvininejad et al. 2019): predict every
                mask, then for t = 1..T-1 re-mask the n = floor(N (T-t)/T)
                least confident (N masks, T iterations; linear decay) and
                predict them again given the others; a slot keeps the
                probability of its latest prediction. Deterministic: ties
                go to the lower id, and to the earlier mask.

Objectives: mlm, nsp and sop (BERT's MLM head, at the top of their
parameters) and electra (its generator, the part trained as an MLM; the
discriminator has no vocabulary head). The language-model objectives
predict from the left context only, so they fill no masks.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax import config as config_lib
from mlm_jax import model as model_lib
from mlm_jax import pretrained
from mlm_jax import tokenizer as tok
from mlm_jax.objectives import mlm

MASK = "[MASK]"
MODES = ("independent", "mask_predict")
MLM_HEAD = ("mlm", "nsp", "sop")  # BertForMaskedLM's head, as trained
SUPPORTED = MLM_HEAD + ("electra",)


class FillMaskError(config_lib.ConfigError):
  """Input fill-mask cannot use; the message names the fix."""


class Candidate(NamedTuple):
  piece: str
  probability: float
  token_id: int


@dataclasses.dataclass(frozen=True)
class Filled:
  """One text's result."""
  text: str  # as given
  filled: str  # each [MASK] replaced by its chosen (top-1) piece, decoded
  masks: list[list[Candidate]]  # per [MASK], the top-k, most probable first
  # Per forward pass: (the masks it predicted, every mask's piece after it).
  passes: list[tuple[tuple[int, ...], tuple[str, ...]]]


def encode(tokenizer: tok.Tokenizer, text: str, seq_len: int,
           index: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """[CLS] text [SEP] ids with MASK_ID at each [MASK], and those slots."""
  parts = text.split(MASK)
  if len(parts) == 1:
    raise FillMaskError(
        f"text {index + 1} has no {MASK}: {text!r}; write {MASK} where a "
        f"piece is to be predicted, e.g. 'Return the {MASK} of the array.'")
  ids, slots = [tok.CLS_ID], []
  for j, part in enumerate(parts):
    if j:
      slots.append(len(ids))
      ids.append(tok.MASK_ID)
    if part.strip():
      ids.extend((tokenizer.encode_following(part) if j
                  else tokenizer.encode([part])[0]).tolist())
  ids.append(tok.SEP_ID)
  if len(ids) > seq_len:
    raise FillMaskError(
        f"text {index + 1} is {len(ids)} pieces with [CLS] and [SEP], and "
        f"the model was pre-trained on data.seq_len = {seq_len}; shorten it "
        f"to at most {seq_len - 2} pieces around its masks.")
  return np.asarray(ids, np.int32), np.asarray(slots, np.int32)


def _generator_logits(module, tokens, segment_ids, positions, mask_positions,
                      *, document_ids=None):
  """ELECTRA's generator logits at `mask_positions` (as in its training)."""
  embedded = module.bert.embed(tokens, segment_ids, positions,
                               deterministic=True)
  bias = model_lib.encoder_bias(module.generator_cfg, tokens, document_ids,
                                positions=positions)
  hidden = module.generator(embedded, bias, True)
  return module.generator.mlm_head.logits(
      hidden, mask_positions, module.bert.embedding_table(hidden.dtype))


def logits_fn(model: pretrained.Pretrained):
  """jit(params, tokens, mask_positions) -> [B, P, V] float32 logits, for
  [B, L] tokens (a text per row, [PAD] after it) and [B, P] positions;
  compiled once per objective (and shapes), however many calls."""
  if model.objective.name not in SUPPORTED:
    raise FillMaskError(
        f"the checkpoint {model.path} was pre-trained with objective "
        f"{model.objective.name!r}, which predicts from the left context "
        "only and has no masked-token head to fill masks with; use a "
        f"checkpoint of {', '.join(SUPPORTED)}.")
  return _compiled(model.objective)


@functools.lru_cache(maxsize=8)
def _compiled(objective):
  if objective.name in MLM_HEAD:
    module = mlm.BertForMaskedLM(objective.encoder_config)
    method = "logits"
  else:
    module, method = objective.module(), _generator_logits

  @jax.jit
  def fn(params, tokens, mask_positions):
    # One document from position 0, as packing lays out an example's
    # first one; [PAD] after it (positions 0, document 0).
    real = (tokens != tok.PAD_ID).astype(jnp.int32)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32) * real
    return module.apply({"params": params}, tokens, jnp.zeros_like(tokens),
                        positions, mask_positions, document_ids=real,
                        method=method)
  return fn


def batch(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """`encode`d texts as [T, seq_len] tokens ([PAD] after each) and [T, P]
  mask slots (P: the most masks of a text; the others pad with slot 0,
  [CLS], whose predictions are ignored)."""
  tokens = np.zeros((len(encoded), seq_len), np.int32)
  slots = np.zeros((len(encoded), max(len(s) for _, s in encoded)),
                   np.int32)
  for i, (ids, s) in enumerate(encoded):
    tokens[i, :len(ids)], slots[i, :len(s)] = ids, s
  return tokens, slots


def _top(probs: np.ndarray, tokenizer: tok.Tokenizer,
         k: int) -> list[Candidate]:
  order = np.argsort(-probs[tok.NUM_SPECIAL_TOKENS:], kind="stable")[:k]
  return [Candidate(tokenizer.id_to_piece(i), float(probs[i]), int(i))
          for i in order + tok.NUM_SPECIAL_TOKENS]


def remask_counts(num_masks: int, iterations: int) -> list[int]:
  """Masks re-predicted at passes 1..T-1: floor(N (T - t) / T), the
  linear decay of Mask-Predict; zeros dropped (pass 0 predicts all N)."""
  counts = [num_masks * (iterations - t) // iterations
            for t in range(1, iterations)]
  return [n for n in counts if n]


def fill_mask(model: pretrained.Pretrained, texts: Sequence[str], *,
              top_k: int = 5, mode: str = "independent",
              iterations: int | None = None) -> list[Filled]:
  """The top-k pieces of each [MASK] of each text, and the filled text.

  Args:
    model: a checkpoint (`pretrained.load`) of an objective in SUPPORTED.
    texts: strings with one or more literal [MASK], each ONE piece.
    top_k: candidates per mask.
    mode: 'independent' or 'mask_predict' (see the module docstring).
    iterations: mask-predict's T, passes over each text (None: its number
      of masks; 1 is the independent mode).
  """
  if isinstance(texts, str):
    texts = [texts]
  if not texts:
    raise FillMaskError(f"no text given; give one with a {MASK}.")
  if mode not in MODES:
    raise FillMaskError(f"unknown mode {mode!r}; use one of "
                        f"{', '.join(MODES)}.")
  if top_k < 1 or (iterations is not None and iterations < 1):
    raise FillMaskError(f"top_k={top_k} and iterations={iterations} must "
                        "be at least 1.")
  fn = logits_fn(model)
  seq_len = model.config.data.seq_len
  encoded = [encode(model.tokenizer, t, seq_len, i)
             for i, t in enumerate(texts)]
  tokens, slots = batch(encoded, seq_len)
  counts = [len(s) for _, s in encoded]
  schedule = [remask_counts(n, 1 if mode == "independent"
                            else iterations or n) for n in counts]
  run = functools.partial(_probabilities, fn, model.params, slots=slots)

  chosen = np.zeros_like(slots)
  confidence = np.zeros(slots.shape)
  best: list[list] = [[None] * n for n in counts]
  passes: list[list] = [[] for _ in texts]
  todo = [list(range(n)) for n in counts]  # pass 0: every mask
  for t in range(1 + max(map(len, schedule))):
    if t:
      todo = [_least_confident(confidence[i, :counts[i]], s[t - 1])
              if t - 1 < len(s) else [] for i, s in enumerate(schedule)]
    current = tokens.copy()
    for i, masks in enumerate(todo):
      filled = np.setdiff1d(np.arange(counts[i]), masks)
      current[i, slots[i, filled]] = chosen[i, filled]
    probs = run(current)
    for i, masks in enumerate(todo):
      if not masks:
        continue
      for j in masks:
        p = probs[i, j].copy()
        p[:tok.NUM_SPECIAL_TOKENS] = 0.0
        best[i][j] = _top(probs[i, j], model.tokenizer, top_k)
        chosen[i, j] = int(np.argmax(p))
        confidence[i, j] = p[chosen[i, j]]
      passes[i].append((tuple(masks), tuple(
          model.tokenizer.id_to_piece(c) for c in chosen[i, :counts[i]])))
  out = []
  for i, text in enumerate(texts):
    ids, s = encoded[i]
    ids = ids.copy()
    ids[s] = chosen[i, :counts[i]]
    out.append(Filled(text=text, filled=model.tokenizer.decode(ids),
                      masks=best[i], passes=passes[i]))
  return out


def _probabilities(fn, params, tokens: np.ndarray, *,
                   slots: np.ndarray) -> np.ndarray:
  """[B, P, V] float64 softmax of the logits at the mask slots."""
  logits = np.asarray(jax.device_get(fn(params, tokens, slots)), np.float64)
  logits -= logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


def _least_confident(confidence: np.ndarray, n: int) -> list[int]:
  """The n masks of lowest confidence (the earlier one on a tie)."""
  return sorted(np.argsort(confidence, kind="stable")[:n].tolist())
