"""The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5, SmolLM2) as one Flax NNX module.

The whole forward pass is in this file. Layers are stacked (every per-layer parameter has a
leading L axis) and run by `jax.lax.scan`, so one layer body is compiled whatever the depth.
Attention is a parameter of each call (`models.attention.PrefillAttention`); its state rides in
the scan carry and its per-layer stats come back stacked to [L, ...].
Prefill returns the logits of chosen positions and, given target tokens, the log-likelihood of
every position's target, computed a slice of positions at a time (never [T, V] logits).

Parameter tree (see `parameter_shapes`), dim letters as in DESIGN.md:
  embed [V, D]; final_norm [D]; lm_head [D, V] (untied models only)
  layers/attn_norm [L, D], q_proj [L, D, N, H], k_proj / v_proj [L, D, K, H], o_proj [L, N, H, D],
  layers/mlp_norm [L, D], gate_proj / up_proj [L, D, F], down_proj [L, F, D],
  optional biases q_bias [L, N, H], k_bias / v_bias [L, K, H], o_bias [L, D],
  gate_bias / up_bias [L, F], down_bias [L, D].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import PrefillAttention, bucket_attention, decode_attention
from models.config import ModelConfig
from models.rope import apply_rope, inverse_frequencies, rope_tables

PyTree = Any

# Positions per row scored at a time by `Transformer._log_likelihoods`: each step holds
# float32[B, SCORE_ROWS, V] logits (1.2 GB per row for Qwen's 151,936 tokens), never [B, T, V].
SCORE_ROWS = 2048


def parameter_shapes(config: ModelConfig) -> dict[str, Any]:
    """The nested parameter tree of a model, as shapes.

    Args:
      config: the model config.

    Returns:
      {"embed": (V, D), "layers": {name: (L, ...)}, "final_norm": (D,), ["lm_head": (D, V)]}.
    """
    V, D, F = config.vocab_size, config.hidden_size, config.intermediate_size
    L, N, K, H = config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim
    layers = {
        "attn_norm": (L, D),
        "q_proj": (L, D, N, H),
        "k_proj": (L, D, K, H),
        "v_proj": (L, D, K, H),
        "o_proj": (L, N, H, D),
        "mlp_norm": (L, D),
        "gate_proj": (L, D, F),
        "up_proj": (L, D, F),
        "down_proj": (L, F, D),
    }
    if config.qkv_bias:
        layers |= {"q_bias": (L, N, H), "k_bias": (L, K, H), "v_bias": (L, K, H)}
    if config.o_bias:
        layers["o_bias"] = (L, D)
    if config.mlp_bias:
        layers |= {"gate_bias": (L, F), "up_bias": (L, F), "down_bias": (L, D)}
    shapes: dict[str, Any] = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer, after RoPE.

    Attributes:
      k, v: [L, B, S, K, H]; entries at or past `lengths` are padding.
      lengths: int32[B] valid positions per sequence (the next token is written there).
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, stacked along a leading L axis."""

    def __init__(self, config: ModelConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        for name, shape in parameter_shapes(config)["layers"].items():
            if name.endswith("_norm"):
                value = jnp.ones(shape, dtype)
            else:
                value = init(rngs.params(), shape, dtype)
            setattr(self, name, nnx.Param(value))


class Transformer(nnx.Module):
    """Decoder-only transformer of the Llama family with pluggable prefill attention."""

    def __init__(self, config: ModelConfig, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        """Builds a randomly initialised model (real weights come from `models.checkpoint`).

        Args:
          config: the model config.
          dtype: parameter and compute dtype (activations follow it; softmax, norms and
            logits are float32).
          rngs: random streams for initialisation.
        """
        self.config = config
        shapes = parameter_shapes(config)
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Param(init(rngs.params(), shapes["embed"], dtype))
        self.layers = DecoderLayers(config, dtype=dtype, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones(shapes["final_norm"], dtype))
        if "lm_head" in shapes:
            self.lm_head = nnx.Param(init(rngs.params(), shapes["lm_head"], dtype))

    @property
    def dtype(self) -> jnp.dtype:
        return self.embed[...].dtype

    def _rope_tables(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        inv_freq, attention_scale = inverse_frequencies(self.config.rope, self.config.head_dim)
        return rope_tables(positions, inv_freq, attention_scale)

    def _bucket_attention(self, attention, lengths, num_queries: int, num_keys: int):
        """`bucket_attention` for this model: the attention its layer loop runs over T queries
        and S keys, and the stats of every layer where known before the loop."""
        return bucket_attention(
            attention,
            lengths,
            num_layers=self.config.num_layers,
            num_heads=self.config.num_heads,
            num_queries=num_queries,
            num_keys=num_keys,
        )

    def _layer_params(self) -> dict[str, jax.Array]:
        return {
            name: param[...]
            for name, param in vars(self.layers).items()
            if isinstance(param, nnx.Param)
        }

    def _logits(self, x: jax.Array) -> jax.Array:
        """Final norm and output head: [B, P, D] -> float32[B, P, V]."""
        x = rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)
        if self.config.tie_word_embeddings:
            return jnp.einsum("bpd,vd->bpv", x, self.embed[...], preferred_element_type=jnp.float32)
        return jnp.einsum("bpd,dv->bpv", x, self.lm_head[...], preferred_element_type=jnp.float32)

    def _log_likelihoods(self, x: jax.Array, targets: jax.Array, rows: int) -> jax.Array:
        """log p(targets) under the head's next-token distribution, `rows` positions at a time.

        Final norm, output head and log-softmax run on one slice of positions per step of a
        `jax.lax.map`, so only float32[B, rows, V] logits are ever live.

        Args:
          x: [B, T, D] the last layer's output.
          targets: int32[B, T] the token each position's distribution is scored on.
          rows: positions per step (T need not be a multiple).

        Returns:
          float32[B, T] log-likelihoods.
        """
        batch, length, dim = x.shape
        rows = min(rows, length)
        num_steps = -(-length // rows)
        pad = num_steps * rows - length
        # [B, T, D] -> [steps, B, rows, D]; padded positions are zeros (their norm stays finite).
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(batch, num_steps, rows, dim)
        targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, num_steps, rows)

        def score_step(step_inputs):
            x, targets = step_inputs
            logits = self._logits(x)  # float32[B, rows, V]
            picked = jnp.take_along_axis(logits, targets[:, :, None], axis=-1)[:, :, 0]
            return picked - jax.nn.logsumexp(logits, axis=-1)

        scores = jax.lax.map(score_step, (x.swapaxes(0, 1), targets.swapaxes(0, 1)))
        return scores.swapaxes(0, 1).reshape(batch, num_steps * rows)[:, :length]

    def _head(
        self,
        x: jax.Array,
        logit_positions: jax.Array,
        targets: jax.Array | None,
        score_rows: int,
    ) -> tuple[jax.Array, jax.Array | None]:
        """The outputs of a prefill from the last layer's [B, T, D].

        Args:
          x: [B, T, D] the last layer's output.
          logit_positions: int32[B, P] indices into T whose logits are wanted.
          targets: optional int32[B, T] tokens to score every position on.
          score_rows: positions per scoring step (see `_log_likelihoods`).

        Returns:
          logits float32[B, P, V] and log-likelihoods float32[B, T] (None without targets).
        """
        with jax.named_scope("head"):
            logits = self._logits(jnp.take_along_axis(x, logit_positions[:, :, None], axis=1))
            if targets is None:
                return logits, None
            return logits, self._log_likelihoods(x, targets, score_rows)

    def prefill(
        self,
        tokens: jax.Array,
        lengths: jax.Array,
        logit_positions: jax.Array,
        attention: PrefillAttention,
        targets: jax.Array | None = None,
        score_rows: int = SCORE_ROWS,
    ) -> tuple[jax.Array, jax.Array | None, KVCache, dict[str, jax.Array]]:
        """Runs the prompt through every layer, keeping the KV cache.

        Args:
          tokens: int32[B, T] prompt ids padded at the end.
          lengths: int32[B] real tokens per sequence.
          logit_positions: int32[B, P] positions whose next-token logits are wanted.
          attention: the prefill attention (dense or sparse).
          targets: optional int32[B, T], the token each position's next-token distribution is
            scored on (tokens shifted by one for a language model's log-likelihoods).
          score_rows: positions per scoring step; float32[B, score_rows, V] logits at most.

        Returns:
          logits float32[B, P, V], log-likelihoods float32[B, T] of `targets` (None without
          them), the cache (k, v [L, B, T, K, H]), stats {name: [L, ...]}.
        """
        config = self.config
        attention.check_model(config.num_layers, config.num_heads)
        batch, length = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        cos, sin = self._rope_tables(positions)
        x = self.embed[...][tokens]
        attention, known_stats = self._bucket_attention(attention, lengths, length, length)

        def layer_body(carry, layer_inputs):
            x, attention_state = carry
            params, layer = layer_inputs
            with jax.named_scope("attention"):
                h = rms_norm(x, params["attn_norm"], config.rms_norm_eps)
                q, k, v = _project_qkv(params, h, cos, sin)
                out, attention_state, stats = attention(
                    q, k, v, attention_state, layer=layer, lengths=lengths
                )
                x = x + _project_out(params, out)
            with jax.named_scope("mlp"):
                x = x + _mlp(params, rms_norm(x, params["mlp_norm"], config.rms_norm_eps))
            return (x, attention_state), (k, v, stats)

        state = attention.init_state(batch, length)  # num_queries: T, the padded length
        layer_index = jnp.arange(config.num_layers, dtype=jnp.int32)
        (x, _), (k_cache, v_cache, stats) = jax.lax.scan(
            layer_body, (x, state), (self._layer_params(), layer_index)
        )
        logits, log_likelihoods = self._head(x, logit_positions, targets, score_rows)
        stats = stats if known_stats is None else known_stats
        return logits, log_likelihoods, KVCache(k=k_cache, v=v_cache, lengths=lengths), stats

    def prefill_chunk(
        self,
        tokens: jax.Array,
        start: int,
        cache: KVCache,
        logit_positions: jax.Array,
        attention: PrefillAttention,
        targets: jax.Array | None = None,
        score_rows: int = SCORE_ROWS,
    ) -> tuple[jax.Array, jax.Array | None, KVCache, dict[str, jax.Array]]:
        """Runs one chunk of a prompt through every layer over the keys cached before it.

        The chunk's keys and values are written into the cache at [start, start + C); its
        queries attend to every key before them (the cache's first `start` positions) and to
        their own causal part, so chunk after chunk gives a whole prompt's prefill.

        Args:
          tokens: int32[B, C] the chunk's ids (end padding in the last chunk).
          start: the chunk's first position (static; a multiple of the planner's block size).
          cache: k, v [L, B, S, K, H] with S >= start + C; `lengths` the prompts' real tokens.
          logit_positions: int32[B, P] positions (absolute) inside the chunk whose logits are
            wanted.
          attention: the prefill attention (its state covers this chunk only).
          targets: optional int32[B, C], the token each chunk position's next-token
            distribution is scored on (the last one's is the next chunk's first token).
          score_rows: positions per scoring step; float32[B, score_rows, V] logits at most.

        Returns:
          logits float32[B, P, V], log-likelihoods float32[B, C] of `targets` (None without
          them), the cache with the chunk written, stats {name: [L, ...]}.
        """
        config = self.config
        attention.check_model(config.num_layers, config.num_heads)
        batch, chunk = tokens.shape
        end = start + chunk
        if end > cache.k.shape[2]:
            raise ValueError(f"the chunk ends at {end}, past the cache's {cache.k.shape[2]}")
        positions = jnp.broadcast_to(start + jnp.arange(chunk, dtype=jnp.int32), (batch, chunk))
        cos, sin = self._rope_tables(positions)
        x = self.embed[...][tokens]
        visible = jnp.minimum(cache.lengths, end)  # real tokens among the keys so far
        attention, known_stats = self._bucket_attention(attention, visible, chunk, end)

        def layer_body(carry, layer_inputs):
            x, attention_state, k_all, v_all = carry
            params, layer = layer_inputs
            with jax.named_scope("attention"):
                h = rms_norm(x, params["attn_norm"], config.rms_norm_eps)
                q, k, v = _project_qkv(params, h, cos, sin)
                k_all = jax.lax.dynamic_update_slice(k_all, k[None], (layer, 0, start, 0, 0))
                v_all = jax.lax.dynamic_update_slice(v_all, v[None], (layer, 0, start, 0, 0))
                out, attention_state, stats = attention(
                    q,
                    k_all[layer, :, :end],
                    v_all[layer, :, :end],
                    attention_state,
                    layer=layer,
                    lengths=visible,
                )
                x = x + _project_out(params, out)
            with jax.named_scope("mlp"):
                x = x + _mlp(params, rms_norm(x, params["mlp_norm"], config.rms_norm_eps))
            return (x, attention_state, k_all, v_all), stats

        state = attention.init_state(batch, chunk, end)
        layer_index = jnp.arange(config.num_layers, dtype=jnp.int32)
        (x, _, k_cache, v_cache), stats = jax.lax.scan(
            layer_body, (x, state, cache.k, cache.v), (self._layer_params(), layer_index)
        )
        logits, log_likelihoods = self._head(x, logit_positions - start, targets, score_rows)
        cache = KVCache(k=k_cache, v=v_cache, lengths=cache.lengths)
        stats = stats if known_stats is None else known_stats
        return logits, log_likelihoods, cache, stats

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Appends one token per sequence at position `cache.lengths` with dense attention.

        Args:
          tokens: int32[B] the newest token of each sequence.
          cache: k, v [L, B, S, K, H] with room at `lengths` (S > lengths).

        Returns:
          float32[B, V] next-token logits and the cache with the token appended.
        """
        config = self.config
        positions = cache.lengths[:, None]  # [B, 1]
        cos, sin = self._rope_tables(positions)
        x = self.embed[...][tokens[:, None]]  # [B, 1, D]
        batch_index = jnp.arange(tokens.shape[0])
        new_lengths = cache.lengths + 1

        def layer_body(carry, layer_inputs):
            x, k_all, v_all = carry
            params, layer = layer_inputs
            with jax.named_scope("attention"):
                h = rms_norm(x, params["attn_norm"], config.rms_norm_eps)
                q, k, v = _project_qkv(params, h, cos, sin)
                k_all = k_all.at[layer, batch_index, cache.lengths].set(k[:, 0])
                v_all = v_all.at[layer, batch_index, cache.lengths].set(v[:, 0])
                out = decode_attention(q, k_all[layer], v_all[layer], new_lengths)
                x = x + _project_out(params, out)
            with jax.named_scope("mlp"):
                x = x + _mlp(params, rms_norm(x, params["mlp_norm"], config.rms_norm_eps))
            return (x, k_all, v_all), None

        layer_index = jnp.arange(config.num_layers, dtype=jnp.int32)
        (x, k_all, v_all), _ = jax.lax.scan(
            layer_body, (x, cache.k, cache.v), (self._layer_params(), layer_index)
        )
        logits = self._logits(x)[:, 0]
        return logits, KVCache(k=k_all, v=v_all, lengths=new_lengths)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMS norm computed in float32, scaled by `weight` in x's dtype (as transformers does).

    Args:
      x: [..., D]; weight: [D].

    Returns:
      [..., D] in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def _project_qkv(
    params: dict[str, jax.Array], h: jax.Array, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, T, D] -> q [B, T, N, H], k and v [B, T, K, H]; RoPE applied to q and k."""
    q = jnp.einsum("btd,dnh->btnh", h, params["q_proj"])
    k = jnp.einsum("btd,dkh->btkh", h, params["k_proj"])
    v = jnp.einsum("btd,dkh->btkh", h, params["v_proj"])
    if "q_bias" in params:
        q, k, v = q + params["q_bias"], k + params["k_bias"], v + params["v_bias"]
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _project_out(params: dict[str, jax.Array], out: jax.Array) -> jax.Array:
    """Attention output [B, T, N, H] -> residual update [B, T, D]."""
    y = jnp.einsum("btnh,nhd->btd", out, params["o_proj"])
    if "o_bias" in params:
        y = y + params["o_bias"]
    return y


def _mlp(params: dict[str, jax.Array], h: jax.Array) -> jax.Array:
    """SwiGLU feed-forward: [B, T, D] -> [B, T, D]."""
    gate = jnp.einsum("btd,df->btf", h, params["gate_proj"])
    up = jnp.einsum("btd,df->btf", h, params["up_proj"])
    if "gate_bias" in params:
        gate, up = gate + params["gate_bias"], up + params["up_bias"]
    y = jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, params["down_proj"])
    if "down_bias" in params:
        y = y + params["down_bias"]
    return y
