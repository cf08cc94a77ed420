"""SharePrefill in your own Flax NNX decoder: a small Llama-like model written here, not `models`.

Builds random weights, prefills two prompts of different lengths (end-padded to one length)
with dense attention and with SharePrefill (a toy sharing table, 16-token blocks), prints each
layer's block density and head categories per prompt, and checks that SharePrefill gives the
dense logits when its config keeps every block.

    python examples/own_decoder.py    # CPU: about 30 s on a busy 2-core machine, nearly all
                                      # of it compiling the two SharePrefill configs

The only SharePrefill-specific lines are the `attention` functions and the sharing state that
rides in the scan carry next to the hidden states (see docs/usage.md, "SharePrefill in your own
model").
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sharedsparse_jax as ssp

VOCAB, DIM, HIDDEN = 128, 64, 128
LAYERS, HEADS, KV_HEADS, HEAD_DIM = 4, 4, 2, 16  # GQA: two query heads per kv head
LENGTHS, PADDED = (200, 137), 256  # two prompts, end-padded to 256 tokens
BLOCK = 16


def rope(x: jax.Array, positions: jax.Array, theta: float = 10_000.0) -> jax.Array:
    """Rotary embedding (half-rotation layout): x [B, T, heads, H], positions int32[T]."""
    half = x.shape[-1] // 2
    angles = positions[:, None] * theta ** (-jnp.arange(half) / half)  # [T, H/2]
    cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def dense_attention(q, k, v, state, *, layer, lengths):
    """The baseline, with the signature SharePrefill has: causal dense attention, no state."""
    del layer, lengths  # end padding sits after the real tokens: causality hides it
    return jax.nn.dot_product_attention(q, k, v, is_causal=True), state, {}


class Block(nnx.Module):
    """One pre-norm decoder layer: GQA attention with RoPE, then a SwiGLU MLP."""

    def __init__(self, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(DIM, rngs=rngs)
        self.q_proj = nnx.Einsum("btd,dnh->btnh", (DIM, HEADS, HEAD_DIM), rngs=rngs)
        self.k_proj = nnx.Einsum("btd,dkh->btkh", (DIM, KV_HEADS, HEAD_DIM), rngs=rngs)
        self.v_proj = nnx.Einsum("btd,dkh->btkh", (DIM, KV_HEADS, HEAD_DIM), rngs=rngs)
        self.o_proj = nnx.Einsum("btnh,nhd->btd", (HEADS, HEAD_DIM, DIM), rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(DIM, rngs=rngs)
        self.gate = nnx.Linear(DIM, HIDDEN, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(DIM, HIDDEN, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(HIDDEN, DIM, use_bias=False, rngs=rngs)

    def __call__(self, x, attention_state, *, layer, lengths, attention):
        positions = jnp.arange(x.shape[1])
        h = self.attn_norm(x)
        q = rope(self.q_proj(h), positions)  # [B, T, N, H]
        k = rope(self.k_proj(h), positions)  # [B, T, K, H]
        v = self.v_proj(h)
        out, attention_state, stats = attention(
            q, k, v, attention_state, layer=layer, lengths=lengths
        )
        x = x + self.o_proj(out)
        h = self.mlp_norm(x)
        return x + self.down(jax.nn.silu(self.gate(h)) * self.up(h)), attention_state, stats


class Decoder(nnx.Module):
    """Embedding, LAYERS stacked blocks run by nnx.scan, tied output head."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)

        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make_blocks(rngs):
            return Block(rngs)

        self.blocks = make_blocks(rngs)  # every parameter has a leading [LAYERS] axis
        self.final_norm = nnx.RMSNorm(DIM, rngs=rngs)

    def __call__(self, tokens, lengths, attention, attention_state):
        """int32[B, T] tokens, int32[B] lengths -> float32[B, T, V] logits, stats [L, ...]."""

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def run_layers(carry, block, layer):
            x, attention_state = carry  # the sharing state rides in the carry
            x, attention_state, stats = block(
                x, attention_state, layer=layer, lengths=lengths, attention=attention
            )
            return (x, attention_state), stats

        carry = (self.embed(tokens), attention_state)
        (x, _), stats = run_layers(carry, self.blocks, jnp.arange(LAYERS, dtype=jnp.int32))
        return self.embed.attend(self.final_norm(x)).astype(jnp.float32), stats


@nnx.jit(static_argnames="attention")
def prefill(model, tokens, lengths, attention_state, attention):
    return model(tokens, lengths, attention, attention_state)


def toy_table() -> ssp.SharingTable:
    """Heads 0 and 1 of every layer form two shared clusters; heads 2 and 3 of layers 1-3 a
    cluster that does not share; the rest are in none."""
    clusters = {
        "a": [[layer, 0] for layer in range(LAYERS)],
        "b": [[layer, 1] for layer in range(LAYERS)],
        "c": [[layer, head] for layer in range(1, LAYERS) for head in (2, 3)],
    }
    return ssp.SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": ["a", "b"]}, num_layers=LAYERS, num_heads=HEADS
    )


def run_shareprefill(model, tokens, lengths, config, table):
    attention = functools.partial(ssp.shareprefill_attention, config=config, table=table)
    state = ssp.init_sharing_state(tokens.shape[0], tokens.shape[1], config=config, table=table)
    return prefill(model, tokens, lengths, state, attention)


def random_decoder(seed: int) -> Decoder:
    """A Decoder with random weights drawn by NumPy (on a CPU, initialising with JAX's RNG
    compiles it for every parameter shape, which takes seconds). q and k are drawn large, so
    heads attend sharply and the planner has blocks to skip."""
    std = {"q_proj": 0.3, "k_proj": 0.3, "o_proj": (HEADS * HEAD_DIM) ** -0.5, "down": HIDDEN**-0.5}
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [str(key.key) for key in path if hasattr(key, "key")]  # module path, no .value
        if names[-1] == "scale":  # RMSNorm
            return jnp.ones(leaf.shape, leaf.dtype)
        scale = 1.0 if names[0] == "embed" else std.get(names[-2], DIM**-0.5)
        return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(draw, state))


def real_rows(x, lengths) -> np.ndarray:
    """The real (unpadded) positions of a [B, T, ...] array, stacked: [sum(lengths), ...]."""
    is_real = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return np.asarray(x)[is_real]


def main() -> int:
    model = random_decoder(seed=0)
    rng = np.random.default_rng(0)
    tokens = np.zeros((len(LENGTHS), PADDED), np.int32)
    for row, length in enumerate(LENGTHS):
        tokens[row, :length] = rng.integers(0, VOCAB, length)
    lengths = jnp.asarray(LENGTHS, jnp.int32)
    table = toy_table()

    dense_logits, _ = prefill(model, tokens, lengths, (), dense_attention)
    dense_logits = real_rows(dense_logits, LENGTHS)
    logit_scale = float(np.abs(dense_logits).max())

    config = ssp.SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=2 * BLOCK)
    logits, stats = run_shareprefill(model, tokens, lengths, config, table)
    stats = jax.device_get(stats)  # each [L, B, ...]
    for row, length in enumerate(LENGTHS):
        print(f"prompt {row} ({length} tokens):")
        for layer in range(LAYERS):
            heads = " ".join(
                f"{name}={int(stats[f'num_{name}'][layer, row])}"
                for name in ssp.CATEGORIES
                if stats[f"num_{name}"][layer, row]
            )
            print(f"  layer {layer}: density {stats['density'][layer, row]:.3f}  {heads}")
    # Random heads are not sparse the way trained ones are: skipped blocks do change logits.
    agree = np.mean(real_rows(logits, LENGTHS).argmax(-1) == dense_logits.argmax(-1))
    print(f"sparse: mean density {ssp.summarize_stats(stats)['density']:.3f}")
    print(f"sparse: next-token argmax equals dense at {agree:.0%} of positions")

    keep_all = ssp.SharePrefillConfig(
        block_size=BLOCK,
        dense_below=BLOCK,
        gamma=1.0,  # pivot patterns and budgets cover all the mass
        tau_qa=0.0,  # no head is query-aware
        tau_sim=1.0,  # later cluster members share their pivot's (full) pattern
        tau_fb=1.0,
        min_budget=PADDED,  # vertical-slash heads keep every column
    )
    kept_logits, kept_stats = run_shareprefill(model, tokens, lengths, keep_all, table)
    kept_density = float(np.asarray(kept_stats["density"]).min())
    relative = np.abs(real_rows(kept_logits, LENGTHS) - dense_logits).max() / logit_scale
    print(
        f"every block kept: density {kept_density:.3f}, max |logit - dense| / max |logit|"
        f" {relative:.2e}"
    )
    if kept_density < 1 or relative > 1e-4:
        print("FAILED: with every block kept, SharePrefill should equal dense attention")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
