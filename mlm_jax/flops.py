"""Useful FLOPs: the matmuls a training step must compute, by name.

Each objective lists its step's matmuls (`Objective.matmuls`) from the
pieces here: the encoder's layers at every position and its heads where they
run. `train_flops_per_step` turns them into the FLOPs MFU counts; the
benchmark also times each alone for the MFU bound. Embedding lookups and
elementwise work are not counted.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mlm_jax import model as model_lib

if TYPE_CHECKING:  # objectives list their matmuls with this module
  from mlm_jax.objectives import base


@dataclasses.dataclass(frozen=True)
class Matmul:
  """`count` forward matmuls [batch, m, k] @ [batch, k, n] of a step."""
  name: str
  batch: int
  m: int
  k: int
  n: int
  count: int

  @property
  def flops(self) -> float:
    return 2.0 * self.count * self.batch * self.m * self.k * self.n


def encoder_matmuls(cfg: model_lib.EncoderConfig, batch: int, seq_len: int,
                    prefix: str = "", cls_only: bool = False) -> list[Matmul]:
  """The layers' matmuls at every position of `batch` sequences.

  Fused QKV, attention scores and weighted values per head, the attention
  output projection and the feed-forward block, `cfg.num_layers` times.
  `cls_only` (`model.Encoder`'s): the last layer at every position computes
  only keys and values; its queries, attention and output projection, and
  feed-forward run at position 0 alone.
  """
  if cls_only:
    full = dataclasses.replace(cfg, num_layers=cfg.num_layers - 1)
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // (
        cfg.num_heads)
    bn = batch * cfg.num_heads
    below = encoder_matmuls(full, batch, seq_len, prefix) if (
        full.num_layers) else []
    return below + [
        Matmul(f"{prefix}last kv", 1, batch * seq_len, h, 2 * h, 1),
        Matmul(f"{prefix}last q", 1, batch, h, h, 1),
        Matmul(f"{prefix}last attention scores", bn, 1, d, seq_len, 1),
        Matmul(f"{prefix}last attention values", bn, 1, seq_len, d, 1),
        Matmul(f"{prefix}last attention output", 1, batch, h, h, 1),
        Matmul(f"{prefix}last feed-forward in", 1, batch, h, f, 1),
        Matmul(f"{prefix}last feed-forward out", 1, batch, f, h, 1),
    ]
  b, l, layers, heads = batch, seq_len, cfg.num_layers, cfg.num_heads
  h, f, t = cfg.hidden_size, cfg.intermediate_size, batch * seq_len
  return [
      Matmul(f"{prefix}qkv", 1, t, h, 3 * h, layers),
      Matmul(f"{prefix}attention scores", b * heads, l, h // heads, l, layers),
      Matmul(f"{prefix}attention values", b * heads, l, l, h // heads, layers),
      Matmul(f"{prefix}attention output", 1, t, h, h, layers),
      Matmul(f"{prefix}feed-forward in", 1, t, h, f, layers),
      Matmul(f"{prefix}feed-forward out", 1, t, f, h, layers),
  ]


def mlm_head_matmuls(hidden: int, width: int, vocab_size: int,
                     predictions: int, prefix: str = "") -> list[Matmul]:
  """The MLM head at `predictions` gathered positions: the transform from
  `hidden` to the embedding `width`, then the tied vocabulary projection."""
  return [
      Matmul(f"{prefix}head transform", 1, predictions, hidden, width, 1),
      Matmul(f"{prefix}vocabulary projection", 1, predictions, width,
             vocab_size, 1),
  ]


def train_flops_per_step(objective: base.Objective, batch_size: int,
                         seq_len: int) -> float:
  """Useful FLOPs of one training step of `batch_size` sequences of
  `seq_len` tokens: the objective's forward matmuls, 3x for the forward
  and backward passes. MFU is these over the step time and the peak."""
  return 3.0 * sum(mm.flops for mm in objective.matmuls(batch_size, seq_len))
