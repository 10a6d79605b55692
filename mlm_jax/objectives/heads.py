"""The MLM head that the masked- and causal-LM objectives share.

BERT's head, evaluated only at gathered positions: a dense transform, GELU,
LayerNorm, then the vocabulary projection tied to the word embeddings plus
an output bias. Gathering the P selected positions before the transform and
the projection matters: at all L positions they dominate the cost of small
models. Objectives whose parameters must sit at the top of their tree (as
BERT's do) attach it with `nn.share_scope`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax import model as model_lib
from mlm_jax.objectives import losses


def gather(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """[B, L, H] states at [B, P] positions -> [B, P, H]."""
  return jnp.take_along_axis(hidden, positions[..., None], axis=1)


class MLMHead(nn.Module):
  """Transform, GELU, LayerNorm and the tied projection at given positions.

  Attributes:
    cfg: the encoder whose states it reads (dtype, init, vocabulary).
    width: the embedding width it projects to (the tied table's), when it
      differs from `cfg.hidden_size` (ELECTRA's small generator).
  """
  cfg: model_lib.EncoderConfig
  width: int | None = None

  def setup(self):
    cfg = self.cfg
    self.transform = model_lib.dense(cfg, self.width or cfg.hidden_size,
                                     "transform")
    self.transform_norm = model_lib.layer_norm(cfg, "transform_LayerNorm")
    self.output_bias = self.param("output_bias", nn.initializers.zeros,
                                  (cfg.vocab_size,), jnp.float32)

  def features(self, hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, P, width] transformed states at `positions`."""
    h = gather(hidden, positions)
    return self.transform_norm(nn.gelu(self.transform(h), approximate=False))

  def logits(self, hidden: jax.Array, positions: jax.Array,
             table: jax.Array) -> jax.Array:
    """[B, P, V] float32 logits at `positions`.

    The projection accumulates in float32 even under bfloat16 compute:
    logits of large magnitude would otherwise lose the precision the
    softmax needs.
    """
    h = self.features(hidden, positions)
    return jnp.einsum("...h,vh->...v", h, table.astype(h.dtype),
                      preferred_element_type=jnp.float32) + self.output_bias

  def __call__(self, hidden: jax.Array, positions: jax.Array,
               table: jax.Array, labels: jax.Array, weights: jax.Array,
               exp_noise: jax.Array | None = None
               ) -> tuple[losses.Sums, jax.Array | None]:
    """Loss sums at `positions` (fused: logits never materialised).

    Args:
      hidden: [B, L, H] encoder states.
      positions: [B, P] int32 positions to predict; labels, weights: [B, P].
      table: [V, width] the tied embedding table.
      exp_noise: optional [B, P, V] Exp(1) noise to also sample a token
        from the predicted distribution at each position.
    Returns:
      `losses.fused_head`'s (sums, samples or None).
    """
    h = self.features(hidden, positions)
    return losses.fused_head(h, table.astype(h.dtype), self.output_bias,
                             labels, weights, exp_noise)
