"""A BERT encoder in Flax (linen): tokens in, hidden states out.

Parameter names follow Hugging Face's BertModel one-to-one where the layout
allows (embeddings/word_embeddings, .../LayerNorm, attention, intermediate,
output), so that import/export is a table of renames and reshapes. Two
deliberate differences, both cheap to map: Q, K and V are one fused kernel
[hidden, 3, heads, head_dim] (one matmul instead of three), and under
`scan_layers` the layer parameters are stacked on a leading [num_layers] axis
(one compiled layer instead of N).

Heads live with the objectives that train them (`mlm_jax/objectives/`).
Which keys a query may attend to is an input: padding is always hidden,
other documents of a packed example optionally, and later positions for the
causal and prefix language models (`prefix_lengths`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mlm_jax import dropout as dropout_lib
from mlm_jax import tokenizer as tok


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Static model hyper-parameters (hashable, so modules can hold it)."""
  vocab_size: int
  num_layers: int
  hidden_size: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  dropout: float = 0.1
  attention_dropout: float = 0.1
  pre_layer_norm: bool = False
  layer_norm_eps: float = 1e-12
  init_std: float = 0.02
  dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"
  attend_across_documents: bool = True
  dropout_rng: str = "hash"
  position_encoding: str = "learned"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> EncoderConfig:
    """Builds it from a run config (`config.model` plus `config.vocab_size`)."""
    m = config.model
    return cls(
        vocab_size=config.vocab_size, num_layers=m.num_layers,
        hidden_size=m.hidden_size, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_positions=m.max_positions,
        type_vocab_size=m.type_vocab_size, dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        pre_layer_norm=m.pre_layer_norm, layer_norm_eps=m.layer_norm_eps,
        init_std=m.init_std, dtype=m.dtype, scan_layers=m.scan_layers,
        remat=m.remat, attend_across_documents=m.attend_across_documents,
        dropout_rng=m.dropout_rng, position_encoding=m.position_encoding)

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)


class FlatDense(nn.Module):
  """`nn.DenseGeneral` over trailing axes, computed as one 2-D matmul.

  Same parameters (`kernel` of shape in_shape + features, `bias` of shape
  features), same initialisation and same result as DenseGeneral, but the
  input and kernel are flattened to [tokens, in] @ [in, out] first. Given a
  multi-axis kernel, XLA:CPU lays out the kernel gradient transposed and
  every optimizer pass over it then reads it with a stride. From [B, L, H]
  inputs it transposed the feed-forward gradients before their weight
  gradient. The flattening is a free reshape.
  """
  cfg: EncoderConfig
  features: tuple[int, ...]
  in_axes: int = 1

  @nn.compact
  def __call__(self, x, part: slice | None = None):
    """x @ kernel + bias; `part` slices the first output axis (both the
    kernel and the bias), e.g. only K and V of a fused QKV kernel."""
    cfg = self.cfg
    in_shape = x.shape[x.ndim - self.in_axes:]
    size_in, size_out = math.prod(in_shape), math.prod(self.features)
    init = nn.initializers.truncated_normal(cfg.init_std)
    kernel = self.param(
        "kernel", lambda k, s, d: init(k, (size_in, size_out), d).reshape(s),
        in_shape + self.features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, self.features,
                      jnp.float32)
    if part is not None:
      kernel = kernel[(slice(None),) * self.in_axes + (part,)]
      bias = bias[part]
    features = bias.shape
    lead = x.shape[:x.ndim - self.in_axes]
    y = jnp.dot(x.reshape(-1, size_in).astype(cfg.compute_dtype),
                kernel.reshape(size_in, -1).astype(cfg.compute_dtype))
    return y.reshape(lead + features) + bias.astype(cfg.compute_dtype)


def dense(cfg: EncoderConfig, features: int, name: str) -> nn.Module:
  return FlatDense(cfg, (features,), name=name)


def layer_norm(cfg: EncoderConfig, name: str) -> nn.Module:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                      param_dtype=jnp.float32, name=name)


def attention_bias(tokens: jax.Array, document_ids: jax.Array | None = None,
                   prefix_lengths: jax.Array | None = None,
                   dtype=jnp.float32) -> jax.Array:
  """Additive attention bias that hides padding (and what else is asked).

  Args:
    tokens: [B, L] int token ids; [PAD] keys are masked out.
    document_ids: [B, L] int document of each token within its packed
      example, or None to let tokens attend across documents.
    prefix_lengths: [B] int, or None for bidirectional attention. Given, a
      query at position q sees the keys k < prefix (the bidirectional
      prefix) and k <= q: a prefix language model; 0 makes it causal.
  Returns:
    [B, 1, 1, L] (padding only) or [B, 1, L, L] array: 0 where a query may
    attend to a key, a large negative number where it may not.
  """
  keep = (tokens != tok.PAD_ID)[:, None, None, :]
  if document_ids is not None:
    keep = keep & (document_ids[:, None, :, None]
                   == document_ids[:, None, None, :])
  if prefix_lengths is not None:
    index = jnp.arange(tokens.shape[1])
    earlier = index[None, :] <= index[:, None]  # [query, key]
    in_prefix = index[None, None, :] < prefix_lengths[:, None, None]
    keep = keep & (earlier[None] | in_prefix)[:, None]
  return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
  """[N] ALiBi's per-head slopes: the geometric sequence 2^(-8 i / N)."""
  return 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1) / num_heads)


def alibi_bias(positions: jax.Array, num_heads: int) -> jax.Array:
  """[B, N, L, L] float32 linear distance penalty -slope_n * |q - k| (ALiBi
  made symmetric for a bidirectional encoder, as in MosaicBERT), from the
  [B, L] positions of the tokens."""
  distance = jnp.abs(positions[:, :, None] - positions[:, None, :])
  return (-alibi_slopes(num_heads)[None, :, None, None]
          * distance[:, None].astype(jnp.float32))


def encoder_bias(cfg: EncoderConfig, tokens: jax.Array,
                 document_ids: jax.Array | None = None,
                 prefix_lengths: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
  """`attention_bias` as `cfg` asks: other documents hidden only when
  `cfg.attend_across_documents` is False; plus ALiBi's distance penalty
  (from `positions`) when `cfg.position_encoding` is 'alibi'."""
  if cfg.attend_across_documents:
    document_ids = None
  bias = attention_bias(tokens, document_ids, prefix_lengths)
  if cfg.position_encoding == "alibi":
    bias = bias + alibi_bias(positions, cfg.num_heads)
  return bias


class SelfAttention(nn.Module):
  """Multi-head self-attention with a fused QKV projection.

  With `cls_only`, only position 0 queries: the output is [B, 1, H] (keys
  and values still at every position), for a head that reads [CLS] alone.
  """
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool, cls_only: bool = False):
    cfg = self.cfg
    head_dim = cfg.hidden_size // cfg.num_heads
    qkv = FlatDense(cfg, (3, cfg.num_heads, head_dim), name="qkv")
    if cls_only:
      kv = qkv(x, slice(1, 3))
      q, k, v = qkv(x[:, :1], slice(0, 1))[:, :, 0], kv[:, :, 0], kv[:, :, 1]
      bias = bias[:, :, :1]  # the bias row of query 0 (if it has rows)
    else:
      qkv = qkv(x)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, N, D] each
    q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
    # Softmax in float32 whatever the compute dtype.
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k,
                        preferred_element_type=jnp.float32) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    drop = dropout_lib.make(cfg.dropout_rng, cfg.attention_dropout)
    probs = drop(probs, deterministic).astype(v.dtype)
    out = jnp.einsum("bnqk,bknd->bqnd", probs, v)
    return FlatDense(cfg, (cfg.hidden_size,), in_axes=2, name="output")(out)


class TransformerLayer(nn.Module):
  """One encoder layer: attention and feed-forward, each with a residual.

  Post-LN (BERT): x = LN(x + f(x)). Pre-LN: x = x + f(LN(x)).
  With `cls_only` it returns position 0 alone, [B, 1, H]: the attention's
  keys and values read every position, all else runs at position 0.
  """
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool, cls_only: bool = False):
    cfg = self.cfg
    drop = dropout_lib.make(cfg.dropout_rng, cfg.dropout)
    # The residual stream past attention: position 0, or all of them.
    rows = (lambda h: h[:, :1]) if cls_only else (lambda h: h)

    def block(x, fn, norm_name):
      if cfg.pre_layer_norm:
        h = fn(layer_norm(cfg, norm_name)(x))
        return rows(x) + drop(h, deterministic)
      return layer_norm(cfg, norm_name)(rows(x) + drop(fn(x), deterministic))

    x = block(x, lambda h: SelfAttention(cfg, name="attention")(
        h, bias, deterministic, cls_only), "attention_norm")

    def feed_forward(h):
      h = dense(cfg, cfg.intermediate_size, "intermediate")(h)
      return dense(cfg, cfg.hidden_size, "output")(nn.gelu(h, approximate=False))

    return block(x, feed_forward, "output_norm")


class _ScannedLayer(nn.Module):
  """Adapts TransformerLayer to nn.scan's (carry, x) -> (carry, y) form."""
  cfg: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, bias):
    return TransformerLayer(self.cfg, name="layer")(
        x, bias, self.deterministic), None


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class TransformerStack(nn.Module):
  """The N layers: one scanned layer with stacked parameters, or a loop.

  `cls_only` returns [B, 1, H], position 0 of the last layer. The loop runs
  that layer at position 0 only (`TransformerLayer`); a scanned stack runs
  every layer in full and slices (one body for all layers).
  """
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool, cls_only: bool = False):
    cfg = self.cfg
    if cfg.scan_layers:
      layer_cls = _ScannedLayer
      if cfg.remat != "none":
        layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat],
                             prevent_cse=False)
      stack = nn.scan(layer_cls, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=nn.broadcast, length=cfg.num_layers)
      x, _ = stack(cfg, deterministic, name="layers")(x, bias)
      return x[:, :1] if cls_only else x
    layer_cls = TransformerLayer
    if cfg.remat != "none":
      layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat],
                           static_argnums=(3, 4))
    for i in range(cfg.num_layers):
      last = cls_only and i == cfg.num_layers - 1
      x = layer_cls(cfg, name=f"layer_{i}")(x, bias, deterministic, last)
    return x


class Encoder(nn.Module):
  """Embeddings and the stack of Transformer layers.

  Returns hidden states [B, L, H] for tokens [B, L] with segment ids and
  positions [B, L]. `embed` alone gives the normalised embeddings, which
  ELECTRA's generator shares.
  """
  cfg: EncoderConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.truncated_normal(cfg.init_std)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init,
                                     dtype=cfg.compute_dtype,
                                     param_dtype=jnp.float32, name=name)
    self.word_embeddings = embed(cfg.vocab_size, "word_embeddings")
    # ALiBi encodes positions in attention only (no embedding).
    self.position_embeddings = (embed(cfg.max_positions, "position_embeddings")
                                if cfg.position_encoding == "learned" else None)
    self.token_type_embeddings = embed(cfg.type_vocab_size,
                                       "token_type_embeddings")
    self.embedding_norm = layer_norm(cfg, "embeddings_LayerNorm")
    self.embedding_dropout = dropout_lib.make(cfg.dropout_rng, cfg.dropout)
    self.stack = TransformerStack(cfg, name="encoder")
    self.final_norm = (layer_norm(cfg, "final_LayerNorm")
                       if cfg.pre_layer_norm else None)

  def embed(self, tokens, segment_ids, positions, *, deterministic: bool):
    """[B, L, H] embeddings: word + position (learned encoding only) +
    segment, normalised, dropout."""
    x = self.word_embeddings(tokens) + self.token_type_embeddings(segment_ids)
    if self.position_embeddings is not None:
      x = x + self.position_embeddings(positions)
    x = self.embedding_norm(x.astype(self.cfg.compute_dtype))
    return self.embedding_dropout(x, deterministic)

  def __call__(self, tokens, segment_ids, positions, *, deterministic: bool,
               document_ids=None, prefix_lengths=None, cls_only: bool = False):
    """Hidden states [B, L, H], or [B, 1, H] at [CLS] alone (`cls_only`).

    Args:
      tokens, segment_ids, positions: [B, L] int32.
      deterministic: disables dropout when True.
      document_ids: [B, L] int32 document of each token in its packed
        example; used only when `cfg.attend_across_documents` is False.
      prefix_lengths: [B] int32 for a prefix (0: causal) language model's
        attention; None for bidirectional (see `attention_bias`).
      cls_only: only position 0 of the output, for a head that reads [CLS]
        alone: the last layer then runs its queries, attention output and
        feed-forward at position 0 only (unscanned stacks; see
        `TransformerStack`). The same values, fewer FLOPs.
    """
    x = self.embed(tokens, segment_ids, positions, deterministic=deterministic)
    x = self.stack(x, encoder_bias(self.cfg, tokens, document_ids,
                                   prefix_lengths, positions), deterministic,
                   cls_only)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x

  def embedding_table(self, dtype) -> jax.Array:
    """The [V, H] word-embedding matrix, which output heads tie to."""
    return self.word_embeddings.embedding.astype(dtype)
