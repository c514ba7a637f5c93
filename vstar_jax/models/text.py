"""CLIP text transformer in Flax: OpenCLIP's text tower and transformers' ``CLIPTextModel``.

Token embedding + learned positions, pre-LN residual blocks (causal self-attention, MLP with
exact GELU or quick-GELU), ``ln_final``; an optional projection of the end-token feature.

``layer="penultimate"`` runs every block but the last, then ``ln_final`` (VideoCrafter2's
``FrozenOpenCLIPEmbedder``); ``layer="last"`` runs them all (ModelScope's 23-layer
``CLIPTextModel`` last_hidden_state). The pooled output always uses every block.

Param tree: ``token_embedding/embedding``, ``positional_embedding``, ``resblocks_{i}`` with
``ln_1``, ``attn/{q,k,v,out}``, ``ln_2``, ``mlp/{c_fc,c_proj}``; ``ln_final``; ``text_projection``
(width, output_dim) when ``output_dim`` > 0.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.compile_options import jit
from vstar_jax.models.attention import attention

LAYERS = ("last", "penultimate")


def _activation(name: str):
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name in ("gelu_tanh", "gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    raise ValueError(f"unknown text activation {name!r}")


def causal_mask(length: int):
    """Bool (1, 1, L, L): position i attends to j <= i."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


class SelfAttention(nn.Module):
    heads: int
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, x, mask):
        b, length, width = x.shape
        if width % self.heads:
            raise ValueError(f"text width {width} not divisible by {self.heads} heads")
        d = width // self.heads
        proj = lambda name: nn.Dense(width, dtype=self.dtype, name=name)  # noqa: E731
        q, k, v = (proj(n)(x).reshape(b, length, self.heads, d) for n in ("q", "k", "v"))
        out = attention(q, k, v, mask=mask, backend=self.backend)
        return proj("out")(out.reshape(b, length, width))


class ResidualBlock(nn.Module):
    heads: int
    mlp_dim: int
    act: str = "gelu"
    eps: float = 1e-5
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, x, mask):
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=jnp.float32, name=name)  # noqa: E731
        h = ln("ln_1")(x.astype(jnp.float32)).astype(x.dtype)
        x = x + SelfAttention(self.heads, self.dtype, self.backend, name="attn")(h, mask)
        h = ln("ln_2")(x.astype(jnp.float32)).astype(x.dtype)
        return x + _Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(h)


class _Mlp(nn.Module):
    mlp_dim: int
    act: str = "gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="c_fc")(x)
        h = _activation(self.act)(h)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="c_proj")(h)


class TextTransformer(nn.Module):
    """``apply({"params": p}, tokens)`` -> hidden states (n, L, width) of ``config.layer``.

    ``return_pooled=True`` also returns the end-token feature after every block and ``ln_final``,
    projected by ``text_projection`` if the model has one: (n, output_dim or width).
    ``layer`` overrides ``config.layer``.
    """

    config: Any
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, tokens, *, layer: Optional[str] = None, return_pooled: bool = False):
        cfg = self.config
        layer = layer or cfg.layer
        if layer not in LAYERS:
            raise ValueError(f"unknown text layer {layer!r}; choose one of {LAYERS}")
        if tokens.ndim != 2 or tokens.shape[1] > cfg.context_length:
            raise ValueError(f"tokens must be (n, <= {cfg.context_length}), got {tokens.shape}")
        length = tokens.shape[1]
        x = nn.Embed(cfg.vocab_size, cfg.width, name="token_embedding")(tokens)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01), (cfg.context_length, cfg.width))
        x = (x + pos[:length]).astype(self.dtype)
        mask = causal_mask(length)
        blocks = [
            ResidualBlock(cfg.heads, cfg.mlp_dim, cfg.act, cfg.layer_norm_eps, self.dtype, self.backend,
                          name=f"resblocks_{i}")
            for i in range(cfg.layers)
        ]
        ln_final = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name="ln_final")
        stop = cfg.layers - (1 if layer == "penultimate" else 0)
        for block in blocks[:stop]:
            x = block(x, mask)
        hidden = ln_final(x.astype(jnp.float32))
        need_all = return_pooled or self.is_initializing()
        if not need_all:
            return hidden
        full = x
        for block in blocks[stop:]:
            full = block(full, mask)
        full = ln_final(full.astype(jnp.float32)) if stop < cfg.layers else hidden
        pooled = full[jnp.arange(full.shape[0]), eot_positions(tokens, cfg.get("eot_token_id"))]
        if cfg.output_dim:
            proj = self.param("text_projection", nn.initializers.normal(cfg.width ** -0.5), (cfg.width, cfg.output_dim))
            pooled = pooled @ proj
        return (hidden, pooled) if return_pooled else hidden


def eot_positions(tokens, eot_token_id: Optional[int] = None):
    """Index of the end token per row: argmax of the ids (OpenCLIP; the end id is the largest)
    or, with ``eot_token_id``, the first position holding it (transformers' newer rule)."""
    if eot_token_id is None:
        return jnp.argmax(tokens, axis=-1)
    return jnp.argmax((tokens == eot_token_id).astype(jnp.int32), axis=-1)


def text_param_shapes(config, dtype=jnp.float32):
    """ShapeDtypeStruct pytree of the text params (for converters; nothing is allocated)."""
    model = TextTransformer(config, dtype=dtype)
    tokens = jax.ShapeDtypeStruct((1, config.context_length), jnp.int32)
    return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)["params"]


@functools.lru_cache(maxsize=8)
def _jitted_apply(text_model: TextTransformer):
    return jit(text_model.apply, static_argnames=("layer", "return_pooled"))


def _apply(text_model: TextTransformer, params, tokens, **kw):
    """``text_model.apply``, jitted and cached when the module is hashable (FrozenConfigDict config)."""
    try:
        fn = _jitted_apply(text_model)
    except TypeError:
        fn = text_model.apply
    return fn({"params": params}, jnp.asarray(tokens), **kw)


def encode_tokens(text_model: TextTransformer, params, tokens, *, layer: Optional[str] = None):
    """Hidden states (n, L, width) of token ids (n, L)."""
    return _apply(text_model, params, tokens, layer=layer)


def encode_prompts(text_model: TextTransformer, params, tokenizer, prompts: Sequence[str] | str, *,
                   layer: Optional[str] = None):
    """Context embeddings (n, 77, width) of prompts; the unconditional one is ``encode_prompts([""])``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("encode_prompts needs at least one prompt")
    tokens = np.asarray(tokenizer(list(prompts)))
    return encode_tokens(text_model, params, tokens, layer=layer)


def encode_pooled(text_model: TextTransformer, params, tokens):
    """Projected end-token features (n, output_dim) (CLIP text embedding, unnormalized)."""
    _, pooled = _apply(text_model, params, tokens, return_pooled=True)
    return pooled
