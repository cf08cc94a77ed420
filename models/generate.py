"""Prefill (any `PrefillAttention`) and dense decoding, jitted once per length bucket.

Prompts are padded at the end to a length bucket (a multiple of 128) so that a new prompt length
reuses a compiled program; attention receives the real lengths. A batch may hold prompts of
different lengths: each is end-padded to the bucket of the longest, its logits are read at its
own last token and decoding appends at its own position. With `score=True` prefill also gives
every next token's log-likelihood without ever holding [T, V] logits (text scoring at 128K
tokens of a 152K-token vocabulary). `prefill_chunked` runs a prompt chunk by chunk over a
growing cache instead (bounded activation memory). Decoding (greedy or
temperature / top-p sampling, stop tokens, a token budget) runs in one `jax.lax.while_loop`
over dense attention on the cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.attention import DenseAttention, PrefillAttention
from models.llama import SCORE_ROWS, KVCache, Transformer

BUCKET_MULTIPLE = 128


def bucket_length(length: int, buckets: Sequence[int] | None = None) -> int:
    """The padded length a prompt of `length` tokens runs at.

    Without explicit buckets: the next multiple of 128, coarsened to a quarter of the largest
    power of two not above `length` (at most ~25% padding, four buckets per octave).

    Args:
      length: real prompt length (>= 1).
      buckets: optional ascending padded lengths to choose from.

    Returns:
      The smallest bucket >= length.
    """
    if length < 1:
        raise ValueError(f"length={length} must be >= 1")
    if buckets is not None:
        for bucket in sorted(buckets):
            if bucket >= length:
                return int(bucket)
        raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}")
    step = max(BUCKET_MULTIPLE, (1 << (length.bit_length() - 1)) // 4)
    step = -(-step // BUCKET_MULTIPLE) * BUCKET_MULTIPLE
    return -(-length // step) * step


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillResult:
    """What prefill hands back.

    Attributes:
      logits: float32[B, P, V] next-token logits at `positions`.
      positions: int32[B, P] the prompt positions the logits belong to.
      log_likelihoods: with `score=True`, float32[B, T - 1] (T the longest prompt):
        log p(token t + 1 | tokens <= t); NaN at t >= the row's length - 1 (no real next
        token). None otherwise.
      cache: the KV cache, k / v [L, B, S, K, H] with S the padded (bucket) length, lengths
        int32[B] each prompt's real length.
      stats: the attention's per-layer stats, each [L, ...].
    """

    logits: jax.Array
    positions: jax.Array
    log_likelihoods: jax.Array | None
    cache: KVCache
    stats: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How decoding picks tokens.

    Attributes:
      max_new_tokens: tokens generated at most per sequence (>= 1).
      temperature: 0 means greedy (argmax); otherwise logits are divided by it.
      top_p: nucleus sampling mass in (0, 1]; 1 disables it.
      stop_tokens: ids that end a sequence (the stop token itself is emitted).
      pad_token: id written after a sequence has stopped.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_token: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Generated tokens.

    Attributes:
      tokens: int32[B, max_new_tokens]; after a stop token, `pad_token`.
      num_tokens: int32[B] tokens generated per sequence (a stop token included).
      logits: float32[B, max_new_tokens, V] the distribution each token was drawn from, or None.
      cache: the cache after the last appended token.
    """

    tokens: jax.Array
    num_tokens: jax.Array
    logits: jax.Array | None
    cache: KVCache


def prompt_batch(
    model: Transformer, tokens: Any, lengths: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validates a batch of prompts of any lengths and returns it end-padded, with its lengths.

    Args:
      model: the model (for vocabulary size).
      tokens: int array [B, T] or [T], or a list of token-id lists (or 1-D arrays) of any
        lengths.
      lengths: optional int[B], the real tokens of each row of an end-padded [B, T] array
        (None: every row is T tokens long). Lists carry their own lengths.

    Returns:
      int32[B, T'] with T' the longest length, each row's padding set to 0, and int32[B]
      lengths, on the host.
    """
    is_rows = (
        isinstance(tokens, (list, tuple))
        and len(tokens) > 0
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in tokens)
    )
    if is_rows:
        if lengths is not None:
            raise ValueError("lengths is for an end-padded array; a list of prompts has its own")
        rows = [np.asarray(row) for row in tokens]
        if any(row.ndim != 1 for row in rows):
            raise ValueError(
                f"each prompt must be a 1-D list of ids, got shapes {[row.shape for row in rows]}"
            )
        row_lengths = np.array([row.size for row in rows], np.int64)
        if row_lengths.min() == 0:
            raise ValueError(
                f"empty prompt: at least one token is needed to prefill (prompt lengths"
                f" {row_lengths.tolist()})"
            )
        dtypes = {row.dtype for row in rows}
        array = np.zeros((len(rows), int(row_lengths.max())), np.result_type(*dtypes))
        for index, row in enumerate(rows):
            array[index, : row.size] = row
    else:
        array = np.asarray(tokens)
        if array.ndim == 1:
            array = array[None]
        row_lengths = None
    if array.ndim != 2:
        raise ValueError(f"prompt tokens must be [B, T], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("empty batch: no prompts given")
    if array.shape[1] == 0:
        raise ValueError("empty prompt: at least one token is needed to prefill")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"prompt tokens must be integers, got dtype {array.dtype}")
    if row_lengths is None:
        row_lengths = _check_lengths(lengths, array.shape)
    is_real = np.arange(array.shape[1])[None, :] < row_lengths[:, None]
    real = array[is_real]
    vocab = model.config.vocab_size
    if real.min() < 0 or real.max() >= vocab:
        raise ValueError(
            f"token ids must be in [0, {vocab}), got min {real.min()} max {real.max()}"
        )
    array = np.where(is_real, array, 0)[:, : int(row_lengths.max())]
    return array.astype(np.int32), row_lengths.astype(np.int32)


def _check_lengths(lengths: Any, shape: tuple[int, int]) -> np.ndarray:
    """int64[B] lengths of an end-padded [B, T] array; ValueError unless 1 <= lengths <= T."""
    batch, length = shape
    if lengths is None:
        return np.full((batch,), length, np.int64)
    values = np.asarray(lengths)
    if values.shape != (batch,) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"lengths must be int[B] = int[{batch}], got {values.dtype}{list(values.shape)}"
        )
    if (values < 1).any() or (values > length).any():
        raise ValueError(
            f"lengths must be in [1, T={length}] (real tokens of each end-padded prompt), got"
            f" {values.tolist()}"
        )
    return values.astype(np.int64)


def prompt_array(model: Transformer, tokens: Any) -> np.ndarray:
    """Validates a batch of equal-length prompts (what block-map collection needs) as [B, T].

    Args:
      model: the model (for vocabulary size).
      tokens: int array [B, T] or [T], or a list of equal-length token-id lists.

    Returns:
      int32[B, T] on the host.
    """
    array, lengths = prompt_batch(model, tokens)
    if (lengths != array.shape[1]).any():
        raise ValueError(
            f"ragged batch: prompt lengths {lengths.tolist()} differ; this needs a batch of"
            " equal-length prompts"
        )
    return array


def _check_context(model: Transformer, total: int, what: str) -> None:
    limit = model.config.max_position_embeddings
    if total > limit:
        raise ValueError(
            f"{what} ({total} tokens) is longer than the model's context of "
            f"max_position_embeddings={limit} tokens"
        )


def _check_score_rows(score_rows: int) -> None:
    if score_rows < 1:
        raise ValueError(f"score_rows must be >= 1, got {score_rows}")


def _next_tokens(padded_tokens: np.ndarray) -> np.ndarray:
    """int32[B, S] -> int32[B, S]: the token after each position (0 after the last)."""
    targets = np.zeros_like(padded_tokens)
    targets[:, :-1] = padded_tokens[:, 1:]
    return targets


def _real_log_likelihoods(scores: jax.Array, lengths: np.ndarray, length: int) -> jax.Array:
    """float32[B, S] scores of `_next_tokens` -> float32[B, length - 1], NaN where the target
    is padding (t >= the row's length - 1)."""
    has_target = np.arange(length - 1)[None, :] < (lengths - 1)[:, None]
    return jnp.where(has_target, scores[:, : length - 1], jnp.nan)


def _split_attention(attention: Any) -> tuple[Any, list[Any]]:
    """Separates an attention object into a hashable static part and its array leaves."""
    leaves, treedef = jax.tree.flatten(attention)
    is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    static = tuple(None if flag else leaf for leaf, flag in zip(leaves, is_array, strict=True))
    try:
        hash((treedef, static))
    except TypeError as error:
        raise TypeError(
            "the attention object must be hashable apart from its array leaves (use a frozen "
            "dataclass, registered as a pytree if it holds arrays)"
        ) from error
    return (treedef, static, is_array), [
        leaf for leaf, f in zip(leaves, is_array, strict=True) if f
    ]


def _merge_attention(spec: Any, dynamic: list[Any]) -> Any:
    treedef, static, is_array = spec
    dynamic_iter = iter(dynamic)
    leaves = [
        next(dynamic_iter) if flag else leaf for leaf, flag in zip(static, is_array, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnums=(0, 5), static_argnames=("score_rows",))
def _prefill_jit(
    graphdef,
    state,
    tokens,
    lengths,
    logit_positions,
    attention_spec,
    dynamic,
    targets=None,
    score_rows=SCORE_ROWS,
):
    model = nnx.merge(graphdef, state)
    attention = _merge_attention(attention_spec, dynamic)
    return model.prefill(tokens, lengths, logit_positions, attention, targets, score_rows)


def prefill(
    model: Transformer,
    tokens: Any,
    *,
    lengths: Any = None,
    attention: PrefillAttention | None = None,
    logit_positions: Any = None,
    buckets: Sequence[int] | None = None,
    score: bool = False,
    score_rows: int = SCORE_ROWS,
) -> PrefillResult:
    """Runs a batch of prompts, of equal or different lengths, through the model.

    Every prompt is end-padded to the bucket of the longest; attention gets each one's length.

    Args:
      model: the decoder.
      tokens: [B, T] (or [T]) prompt ids, or a list of token-id lists of any lengths.
      lengths: optional int[B] real tokens per row when `tokens` is an end-padded array.
      attention: prefill attention; dense by default.
      logit_positions: None for each prompt's last position, "all" for every position of the
        longest prompt (rows past their own length hold the padding's logits), or int [P] /
        [B, P] positions, each below its own row's length.
      buckets: optional padded lengths to choose from (default: `bucket_length`).
      score: also return every next token's log-likelihood (`PrefillResult.log_likelihoods`),
        computed `score_rows` positions at a time inside the prefill's program.
      score_rows: positions per scoring step (>= 1): float32[B, score_rows, V] logits at most.

    Returns:
      logits float32[B, P, V], with `score` the log-likelihoods float32[B, T - 1], the KV
      cache (S = padded length, per-row lengths), the attention's stats.
    """
    _check_score_rows(score_rows)
    array, lengths = prompt_batch(model, tokens, lengths)
    batch, length = array.shape  # length: the longest prompt
    _check_context(model, length, "the prompt")
    padded = bucket_length(length, buckets)
    padded_tokens = np.zeros((batch, padded), np.int32)
    padded_tokens[:, :length] = array

    if logit_positions is None:
        positions = (lengths - 1)[:, None]
    elif isinstance(logit_positions, str):
        if logit_positions != "all":
            raise ValueError(f"logit_positions={logit_positions!r}: use None, 'all' or an array")
        positions = np.broadcast_to(np.arange(padded, dtype=np.int32), (batch, padded))
    else:
        positions = np.asarray(logit_positions)
        if positions.ndim == 1:
            positions = np.broadcast_to(positions, (batch, positions.shape[0]))
        if positions.ndim != 2 or positions.shape[0] != batch or positions.size == 0:
            raise ValueError(
                f"logit_positions must be [P] or [B={batch}, P], got {positions.shape}"
            )
        if positions.min() < 0 or (positions >= lengths[:, None]).any():
            raise ValueError(
                f"logit_positions must lie in [0, length) of their row (lengths"
                f" {lengths.tolist()}), got {positions.tolist()}"
            )
        positions = positions.astype(np.int32)

    attention = DenseAttention() if attention is None else attention
    spec, dynamic = _split_attention(attention)
    graphdef, state = nnx.split(model)
    logits, scores, cache, stats = _prefill_jit(
        graphdef,
        state,
        padded_tokens,
        lengths,
        np.ascontiguousarray(positions),
        spec,
        dynamic,
        _next_tokens(padded_tokens) if score else None,
        score_rows=score_rows,
    )
    if isinstance(logit_positions, str):
        logits, positions = logits[:, :length], positions[:, :length]
    return PrefillResult(
        logits=logits,
        positions=jnp.asarray(positions),
        log_likelihoods=_real_log_likelihoods(scores, lengths, length) if score else None,
        cache=cache,
        stats=stats,
    )


@functools.partial(
    jax.jit, static_argnums=(0, 3, 6), static_argnames=("score_rows",), donate_argnums=(4,)
)
def _chunk_jit(
    graphdef,
    state,
    tokens,
    start,
    cache,
    positions,
    attention_spec,
    dynamic,
    targets=None,
    score_rows=SCORE_ROWS,
):
    model = nnx.merge(graphdef, state)
    attention = _merge_attention(attention_spec, dynamic)
    return model.prefill_chunk(tokens, start, cache, positions, attention, targets, score_rows)


def prefill_chunked(
    model: Transformer,
    tokens: Any,
    *,
    chunk_tokens: int,
    attention: PrefillAttention | None = None,
    lengths: Any = None,
    logit_positions: str | None = None,
    score: bool = False,
    score_rows: int = SCORE_ROWS,
) -> PrefillResult:
    """Prefills prompts (of equal or different lengths) chunk by chunk over a growing KV cache.

    Chunk i writes its keys and values into the cache at [i C, (i + 1) C) and its queries
    attend to every cached key before them plus their own causal part
    (`Transformer.prefill_chunk`), so activation memory is one chunk's; with dense attention
    the result is the whole prompt's prefill. SharePrefill plans each chunk over all keys so
    far and starts its sharing state afresh in each chunk (docs/design.md, "Chunked prefill").

    Args:
      model: the decoder.
      tokens: [B, T] (or [T]) ids, or a list of token-id lists of any lengths.
      chunk_tokens: C, tokens per chunk (a multiple of the planner's block size for
        SharePrefill); prompts are end-padded to a multiple of C.
      attention: prefill attention (dense by default); each chunk starts its state afresh.
      lengths: optional int[B] real tokens per row when `tokens` is an end-padded array.
      logit_positions: None for each prompt's last position, "all" for every position of the
        longest prompt.
      score: also return every next token's log-likelihood (`PrefillResult.log_likelihoods`);
        a chunk's last position is scored on the next chunk's first token.
      score_rows: positions per scoring step (>= 1): float32[B, score_rows, V] logits at most.

    Returns:
      logits float32[B, P, V], with `score` the log-likelihoods float32[B, T - 1], the KV
      cache (S = the padded length), and the stats of every chunk stacked along a leading
      axis ({name: [chunks, L, B, ...]}).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    _check_score_rows(score_rows)
    if logit_positions not in (None, "all"):
        raise ValueError(f"logit_positions={logit_positions!r}: use None or 'all'")
    array, lengths = prompt_batch(model, tokens, lengths)
    batch, length = array.shape
    _check_context(model, length, "the prompt")
    num_chunks = -(-length // chunk_tokens)
    padded = num_chunks * chunk_tokens
    padded_tokens = np.zeros((batch, padded), np.int32)
    padded_tokens[:, :length] = array
    attention = DenseAttention() if attention is None else attention
    spec, dynamic = _split_attention(attention)
    graphdef, state = nnx.split(model)
    config = model.config
    shape = (config.num_layers, batch, padded, config.num_kv_heads, config.head_dim)
    cache = KVCache(
        k=jnp.zeros(shape, model.dtype),
        v=jnp.zeros(shape, model.dtype),
        lengths=jnp.asarray(lengths, jnp.int32),
    )
    targets = _next_tokens(padded_tokens) if score else None
    last = np.asarray(lengths) - 1
    logits, scores, chunk_stats = [], [], []
    for index in range(num_chunks):
        start, end = index * chunk_tokens, (index + 1) * chunk_tokens
        if logit_positions == "all":
            positions = np.broadcast_to(np.arange(start, end, dtype=np.int32), (batch, end - start))
        else:
            positions = np.clip(last, start, end - 1).astype(np.int32)[:, None]
        chunk_logits, chunk_scores, cache, stats = _chunk_jit(
            graphdef,
            state,
            padded_tokens[:, start:end],
            start,
            cache,
            np.ascontiguousarray(positions),
            spec,
            dynamic,
            None if targets is None else np.ascontiguousarray(targets[:, start:end]),
            score_rows=score_rows,
        )
        scores.append(chunk_scores)
        if logit_positions == "all":
            logits.append(chunk_logits)
        else:  # keep each row's logits from the chunk holding its last token
            holds_last = jnp.asarray((last >= start) & (last < end))[:, None, None]
            logits = [
                chunk_logits if not logits else jnp.where(holds_last, chunk_logits, logits[0])
            ]
        chunk_stats.append(stats)
    if logit_positions == "all":
        all_logits = jnp.concatenate(logits, axis=1)[:, :length]
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
        result_logits = all_logits
    else:
        result_logits, positions = logits[0], last[:, None].astype(np.int32)
    stats = jax.tree.map(lambda *xs: jnp.stack(xs), *chunk_stats) if chunk_stats[0] else {}
    log_likelihoods = (
        _real_log_likelihoods(jnp.concatenate(scores, axis=1), lengths, length) if score else None
    )
    return PrefillResult(
        logits=result_logits,
        positions=jnp.asarray(positions),
        log_likelihoods=log_likelihoods,
        cache=cache,
        stats=stats,
    )


def _sample(logits: jax.Array, rng: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Draws one token per row: float32[B, V] -> int32[B]."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest kept logit: the last one whose preceding mass is still below top_p.
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _decode_jit(graphdef, state, cache, first_logits, rng, sampling, return_logits):
    model = nnx.merge(graphdef, state)
    batch, vocab = first_logits.shape
    max_new = sampling.max_new_tokens
    stop_tokens = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
    out_tokens = jnp.full((batch, max_new), sampling.pad_token, jnp.int32)
    out_logits = jnp.zeros((batch, max_new, vocab), jnp.float32) if return_logits else None
    num_tokens = jnp.zeros((batch,), jnp.int32)
    is_done = jnp.zeros((batch,), bool)

    def keep_going(carry):
        step, *_, is_done = carry
        return (step < max_new) & ~jnp.all(is_done)

    def decode_one(carry):
        step, logits, cache, rng, out_tokens, out_logits, num_tokens, is_done = carry
        rng, key = jax.random.split(rng)
        token = _sample(logits, key, sampling.temperature, sampling.top_p)
        token = jnp.where(is_done, sampling.pad_token, token)
        out_tokens = out_tokens.at[:, step].set(token)
        if out_logits is not None:
            out_logits = out_logits.at[:, step].set(logits)
        num_tokens = num_tokens + (~is_done).astype(jnp.int32)
        is_done = is_done | jnp.isin(token, stop_tokens)
        next_logits, next_cache = model.decode_step(token, cache)
        # A sequence that is done stops growing its cache.
        lengths = jnp.where(is_done, cache.lengths, next_cache.lengths)
        cache = KVCache(k=next_cache.k, v=next_cache.v, lengths=lengths)
        return step + 1, next_logits, cache, rng, out_tokens, out_logits, num_tokens, is_done

    carry = (0, first_logits, cache, rng, out_tokens, out_logits, num_tokens, is_done)
    carry = jax.lax.while_loop(keep_going, decode_one, carry)
    _, _, cache, _, out_tokens, out_logits, num_tokens, _ = carry
    return DecodeResult(tokens=out_tokens, num_tokens=num_tokens, logits=out_logits, cache=cache)


def decode(
    model: Transformer,
    prefilled: PrefillResult,
    *,
    sampling: SamplingConfig,
    rng: jax.Array | None = None,
    return_logits: bool = False,
) -> DecodeResult:
    """Generates tokens after a prefill with dense attention over the KV cache.

    Each sequence appends at its own length. Greedy tokens of a sequence do not depend on the
    rest of the batch; sampled ones depend on the key and on the sequence's row.

    Args:
      model: the decoder that ran the prefill.
      prefilled: its result; the last logit position of every row must be the last prompt token.
      sampling: how tokens are chosen and when to stop.
      rng: PRNG key, needed when temperature > 0.
      return_logits: also return float32[B, max_new_tokens, V] logits.

    Returns:
      tokens int32[B, max_new_tokens], per-row counts, optional logits, the grown cache.
    """
    cache = prefilled.cache
    lengths = np.asarray(cache.lengths)
    if not np.array_equal(np.asarray(prefilled.positions)[:, -1], lengths - 1):
        raise ValueError(
            "decode needs the logits of the last prompt token: prefill with logit_positions "
            "whose last column is the last prompt position (the default)"
        )
    if sampling.temperature > 0 and rng is None:
        raise ValueError(f"temperature={sampling.temperature} > 0 needs an rng key")
    total = int(lengths.max()) + sampling.max_new_tokens
    _check_context(model, total, "the prompt plus max_new_tokens")
    capacity = -(-total // BUCKET_MULTIPLE) * BUCKET_MULTIPLE
    if capacity > cache.k.shape[2]:
        grow = [(0, 0), (0, 0), (0, capacity - cache.k.shape[2]), (0, 0), (0, 0)]
        cache = KVCache(k=jnp.pad(cache.k, grow), v=jnp.pad(cache.v, grow), lengths=cache.lengths)
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    return _decode_jit(
        graphdef, state, cache, prefilled.logits[:, -1], rng, sampling, bool(return_logits)
    )


def generate(
    model: Transformer,
    tokens: Any,
    *,
    sampling: SamplingConfig,
    lengths: Any = None,
    attention: PrefillAttention | None = None,
    rng: jax.Array | None = None,
) -> tuple[list[list[int]], dict[str, jax.Array]]:
    """Prefills a batch of prompts (equal or different lengths), then decodes.

    Args:
      model: the decoder.
      tokens: [B, T] prompt ids, or a list of token-id lists of any lengths.
      sampling: decoding settings.
      lengths: optional int[B] real tokens per row when `tokens` is an end-padded array.
      attention: prefill attention (dense by default); decoding is always dense.
      rng: PRNG key for sampling.

    Returns:
      Each sequence's new tokens (up to and including a stop token) and the prefill stats.
    """
    array, lengths = prompt_batch(model, tokens, lengths)
    _check_context(
        model, int(lengths.max()) + sampling.max_new_tokens, "the prompt plus max_new_tokens"
    )
    prefilled = prefill(model, array, lengths=lengths, attention=attention)
    result = decode(model, prefilled, sampling=sampling, rng=rng)
    out_tokens, counts = np.asarray(result.tokens), np.asarray(result.num_tokens)
    return [row[:count].tolist() for row, count in zip(out_tokens, counts, strict=True)], (
        prefilled.stats
    )
