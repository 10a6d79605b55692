"""Hugging Face's PyTorch BertForMaskedLM trained as its Trainer does.

The peer `peers` times as 'torch':
`DataCollatorForLanguageModeling.torch_mask_tokens` on the host, fused
`torch.optim.AdamW` (Trainer's default on torch >= 2.8) without decay on
biases and LayerNorm, `clip_grad_norm_`, a linear warm-up schedule, float32,
all cores. torch and transformers are imported only when a peer is built.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from mlm_jax import synthetic
from mlm_jax import tokenizer as tok
from mlm_jax.bench import hf
from mlm_jax.bench import timing



class TorchPeer(NamedTuple):
  """BertForMaskedLM and what transformers' Trainer would train it with."""
  model: Any
  optimizer: Any
  scheduler: Any
  collator: Any


def _word_level_tokenizer(vocab_size: int) -> Any:
  """A fast tokenizer over our ids, made offline: the collator needs one."""
  tokenizers = hf.require("tokenizers")
  transformers = hf.require("transformers")
  vocab = {piece: i for i, piece in enumerate(tok.SPECIAL_PIECES)}
  vocab.update({f"piece{i}": i
                for i in range(tok.NUM_SPECIAL_TOKENS, vocab_size)})
  backend = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def build_hf_torch(config: ml_collections.ConfigDict) -> TorchPeer:
  """A freshly initialised BertForMaskedLM with Trainer's default training."""
  if config.model.dtype != "float32":
    raise ValueError("The torch peer runs float32 only; set "
                     "model.dtype='float32' to compare.")
  torch = hf.require("torch")
  transformers = hf.require("transformers")
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(config.seed)
  model = transformers.BertForMaskedLM(hf.bert_config(config))
  model.train()
  o = config.optim
  # Trainer.get_decay_parameter_names: no decay on biases and LayerNorm.
  decay, no_decay = [], []
  for name, param in model.named_parameters():
    plain = "bias" in name or "LayerNorm" in name
    (no_decay if plain else decay).append(param)
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": o.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=True)
  scheduler = transformers.get_linear_schedule_with_warmup(
      optimizer, o.warmup_steps, config.train.num_steps)
  k = config.masking
  collator = transformers.DataCollatorForLanguageModeling(
      _word_level_tokenizer(config.vocab_size), mlm_probability=k.rate,
      mask_replace_prob=k.mask_prob, random_replace_prob=k.random_prob)
  return TorchPeer(model, optimizer, scheduler, collator)


def torch_batch(peer: TorchPeer, tokens: Any, special_mask: Any
                ) -> dict[str, Any]:
  """The collator's masking of [B, L] long `tokens` (not modified)."""
  torch = hf.require("torch")
  input_ids, labels = peer.collator.torch_mask_tokens(
      tokens.clone(), special_tokens_mask=special_mask)
  return {"input_ids": input_ids, "attention_mask": torch.ones_like(tokens),
          "token_type_ids": torch.zeros_like(tokens), "labels": labels}


def torch_train_step(peer: TorchPeer, batch: dict[str, Any],
                     grad_clip: float) -> Any:
  """One step as Trainer takes it (no accumulation); returns the loss."""
  torch = hf.require("torch")
  loss = peer.model(**batch).loss
  loss.backward()
  if grad_clip > 0:
    torch.nn.utils.clip_grad_norm_(peer.model.parameters(), grad_clip)
  peer.optimizer.step()
  peer.scheduler.step()
  peer.model.zero_grad()
  return loss.detach()



def time_hf_torch(config: ml_collections.ConfigDict, *, steps: int = 10,
                  repeats: int = 5, peak_flops: float | None = None
                  ) -> timing.StepTiming:
  """Times HF PyTorch BERT's MLM step, host masking included; medians.

  Eager PyTorch compiles nothing: lower and compile seconds are 0.
  Its peak host memory is this process's: see `peers.run_in_subprocess`.
  """
  torch = hf.require("torch")
  peer = build_hf_torch(config)
  tokens = torch.from_numpy(
      synthetic.batch(config)["tokens"].astype(np.int64))
  special = torch.from_numpy(hf.special_tokens_mask(tokens.numpy()))
  clip = config.optim.grad_clip
  torch_train_step(peer, torch_batch(peer, tokens, special), clip)  # warm-up

  def run(steps):
    for _ in range(steps):
      loss = torch_train_step(peer, torch_batch(peer, tokens, special), clip)
    loss.item()

  times, peaks = timing.time_repeats(run, steps=steps, repeats=repeats,
                                        sample_peak=peak_flops is None)
  return timing.step_timing(config, times, 0.0, 0.0, peak_flops,
                               peak_samples=peaks)
