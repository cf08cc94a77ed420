"""Model calls of the harness: load a model with its tokenizer and table, score a text window,
answer a retrieval prompt, and turn an attention's per-layer stats into plain numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evaluation.harness.compare import ComparedAttention
from evaluation.harness.settings import Setting
from evaluation.harness.store import model_label
from models.attention import DenseAttention, PrefillAttention
from models.generate import SamplingConfig, decode, prefill
from models.llama import Transformer
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.sharing import SharingTable
from sharedsparse_jax.stats import sharing_summary
from sharedsparse_jax.tables import BUILTIN_TABLES, resolve_table

__all__ = [
    "TINY_MODEL",
    "EvalModel",
    "TextScore",
    "Answer",
    "answer_prompt",
    "load_eval_model",
    "score_window",
    "stats_record",
    "tiny_random_model",
]

TINY_MODEL = "tiny-random"


@dataclasses.dataclass(eq=False)
class EvalModel:
    """A model with what the harness needs around it.

    Attributes:
      name: the model's name in results (a built-in model name, or `tiny-random`; with its
        YaRN factor when its context is extended, `store.model_label`).
      model: the decoder.
      encode: text -> token ids (no special tokens added).
      decode: token ids -> text.
      prompt_format: chat wrapper with one `{prompt}` marker.
      stop_tokens: ids that end a reply.
      table: the SharePrefill sharing table, or None (no head shares).
      table_source: where the table came from, or why there is none (for the report).
      dtype: the parameter / compute dtype's name.
    """

    name: str
    model: Transformer
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    prompt_format: str
    stop_tokens: tuple[int, ...]
    table: SharingTable | None
    table_source: str
    dtype: str
    _attentions: dict[tuple[str, bool], PrefillAttention] = dataclasses.field(
        default_factory=dict, repr=False
    )

    @property
    def num_layers(self) -> int:
        return self.model.config.num_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_heads

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    def prompt_length(self, length: int, max_new_tokens: int) -> int:
        """The prompt length of a retrieval cell of `length` tokens: the cell's length, less
        what the reply needs at the context limit."""
        return min(length, self.context - max_new_tokens)

    def attention(self, setting: Setting, *, compare: bool = False) -> PrefillAttention:
        """The prefill attention of a setting, built once (so jitted programs are reused).

        Args:
          setting: the method and variant.
          compare: wrap it in `ComparedAttention` (per-layer error to dense in the stats).

        Returns:
          DenseAttention for dense, else SharePrefillAttention (shareprefill gets the table).
        """
        key = (setting.label, compare)
        if key not in self._attentions:
            if setting.is_dense:
                attention: PrefillAttention = DenseAttention()
            else:
                config = setting.config()
                table = self.table if setting.method == "shareprefill" else None
                attention = SharePrefillAttention(config=config, table=table)
            self._attentions[key] = ComparedAttention(attention) if compare else attention
        return self._attentions[key]


def _resolve_dtype(dtype: str) -> Any:
    if dtype == "auto":
        dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def _resolve_table(
    choice: str, name: str, num_layers: int, num_heads: int
) -> tuple[SharingTable | None, str]:
    """The sharing table `choice` names (as for load_eval_model) and where it came from.

    The source line is recorded in every shareprefill cell's parameters, and a resumed run is
    checked against them: keep its wording.
    """
    table, origin = resolve_table(choice, name, num_layers=num_layers, num_heads=num_heads)
    if origin == "off":
        return None, "none: disabled (--table none)"
    if origin == "unshipped" and name == TINY_MODEL:
        return None, "none: no table for the tiny model"
    if origin == "unshipped":
        known = sorted(BUILTIN_TABLES)
        return None, f"none: no built-in sharing table for {name!r}; known: {known}"
    if origin == "shipped":
        return table, f"sharedsparse_jax.tables builtin_table({name!r}), {table.num_shared} shared"
    return table, f"{choice}, {table.num_shared} shared"


def load_eval_model(
    name: str,
    *,
    dtype: str = "auto",
    table: str = "builtin",
    yarn_factor: float | None = None,
) -> EvalModel:
    """Loads a model from any source (converted once) or the tiny random test model.

    Args:
      name: a model source (`models.sources.resolve_source`: a built-in model, a converted
        checkpoint directory, an HF safetensors directory or a GGUF file), or `tiny-random`.
      dtype: `auto` (bfloat16 on GPU/TPU, float32 on CPU), `float32`, `bfloat16`, `float16`.
      table: `builtin` (the model's shipped table, if any), `none`, or a table JSON path.
      yarn_factor: extend the context this many times with YaRN
        (`models.config.extend_context`); None: the context the model was trained for.

    Returns:
      The model with its tokenizer functions, prompt format and table.
    """
    dtype = _resolve_dtype(dtype)
    model_name = name
    if name == TINY_MODEL:
        evaluated = tiny_random_model(dtype=dtype, yarn_factor=yarn_factor)
    else:
        from models.sources import load_source

        loaded, model_name = load_source(name, dtype=jnp.dtype(dtype), yarn_factor=yarn_factor)
        tokenizer = loaded.tokenizer
        stops = set(loaded.config.eos_token_ids)
        if tokenizer.eos_token is not None:
            stops.add(tokenizer.eos_token_id)
        prompt_format = "{prompt}"  # a model without a chat template reads the bare prompt
        if tokenizer.chat_template is not None:
            prompt_format = tokenizer.apply_chat_template([{"role": "user", "content": "{prompt}"}])
        evaluated = EvalModel(
            name=model_label(model_name, yarn_factor),
            model=loaded.model,
            encode=functools.partial(tokenizer.encode, add_special_tokens=False),
            decode=tokenizer.decode,
            prompt_format=prompt_format,
            stop_tokens=tuple(sorted(stops)),
            table=None,
            table_source="none",
            dtype=dtype,
        )
    evaluated.table, evaluated.table_source = _resolve_table(
        table, model_name, evaluated.num_layers, evaluated.num_heads
    )
    return evaluated


def tiny_random_model(
    *, dtype: str = "float32", seed: int = 0, yarn_factor: float | None = None
) -> EvalModel:
    """A 2-layer random decoder over bytes, for tests and smoke runs of the harness.

    Args:
      dtype: parameter dtype.
      seed: initialisation seed.
      yarn_factor: extend its 8K context this many times with YaRN (None: 8K).

    Returns:
      The model with a byte tokenizer (ids 0..255 are bytes, 256 ends a reply).
    """
    from models.config import ModelConfig, extend_context
    from models.random_weights import random_model

    config = ModelConfig(
        model_type="llama",
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    )
    if yarn_factor is not None:
        config = extend_context(config, yarn_factor)
    model = random_model(config, seed, dtype=jnp.dtype(dtype))

    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    return EvalModel(
        name=model_label(TINY_MODEL, yarn_factor),
        model=model,
        encode=encode,
        decode=decode,
        prompt_format="{prompt}",
        stop_tokens=(256,),
        table=None,
        table_source="none",
        dtype=dtype,
    )


@dataclasses.dataclass(frozen=True)
class TextScore:
    """One window under one attention.

    Attributes:
      log_likelihoods: float64[T - 1], log p(token t + 1 | tokens <= t).
      last_logits: float32[Q, V] next-token logits of the window's last Q positions.
      stats: per-layer stats as NumPy arrays [L, ...] (batch axis dropped).
      seconds: wall time of the forward pass and the scoring.
    """

    log_likelihoods: np.ndarray
    last_logits: np.ndarray
    stats: dict[str, np.ndarray]
    seconds: float


def score_window(
    evaluated: EvalModel,
    ids: np.ndarray,
    attention: PrefillAttention,
    *,
    kl_positions: int,
) -> TextScore:
    """Runs one window and scores every next token.

    The log-likelihoods come from inside the prefill, a slice of positions at a time
    (`models.generate.prefill(score=True)`); only the last Q positions' logits are kept, so
    memory stays bounded whatever the window's length (Qwen's [T, V] logits at 128K would be
    80 GB).

    Args:
      evaluated: the model.
      ids: int32[T] the window's tokens.
      attention: the prefill attention.
      kl_positions: Q, how many final positions' logits to keep for KL.

    Returns:
      The window's scores.
    """
    start = time.perf_counter()
    length = int(ids.shape[0])
    result = prefill(
        evaluated.model,
        ids[None],
        attention=attention,
        logit_positions=np.arange(length - min(kl_positions, length), length, dtype=np.int32),
        score=True,
    )
    log_likelihoods = np.asarray(result.log_likelihoods[0], np.float64)
    last_logits = np.asarray(result.logits[0], np.float32)
    stats = {key: np.asarray(value)[:, 0] for key, value in result.stats.items()}
    return TextScore(log_likelihoods, last_logits, stats, time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A reply to one retrieval prompt.

    Attributes:
      text: the generated text (stop tokens removed).
      num_tokens: tokens generated (a stop token included).
      stats: the prefill's per-layer stats as NumPy arrays [L, ...].
      seconds: wall time of prefill and decoding.
    """

    text: str
    num_tokens: int
    stats: dict[str, np.ndarray]
    seconds: float


def answer_prompt(
    evaluated: EvalModel, ids: Sequence[int], attention: PrefillAttention, *, max_new_tokens: int
) -> Answer:
    """Prefills a prompt with `attention`, then decodes greedily (dense over the cache).

    Args:
      evaluated: the model.
      ids: the prompt's token ids.
      attention: the prefill attention.
      max_new_tokens: the generation budget.

    Returns:
      The reply.
    """
    start = time.perf_counter()
    prefilled = prefill(evaluated.model, np.asarray(ids, np.int32)[None], attention=attention)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_tokens=evaluated.stop_tokens)
    result = decode(evaluated.model, prefilled, sampling=sampling)
    count = int(np.asarray(result.num_tokens)[0])
    tokens = [
        t for t in np.asarray(result.tokens)[0, :count].tolist() if t not in evaluated.stop_tokens
    ]
    stats = {key: np.asarray(value)[:, 0] for key, value in prefilled.stats.items()}
    return Answer(evaluated.decode(tokens), count, stats, time.perf_counter() - start)


def stats_record(stats: dict[str, np.ndarray], num_layers: int, num_heads: int) -> dict[str, Any]:
    """Per-layer stats as JSON-ready lists.

    Args:
      stats: {name: [L, ...]} from a prefill (batch axis dropped); empty for dense attention.
      num_layers, num_heads: L and N, to fill in a dense run's density and head counts.

    Returns:
      {"density": [L], "heads": {category: [L]}}, for SharePrefill "sharing"
      (stats.sharing_summary) and "share_reason": [L][N], plus "attn_rel_error": [L] and
      "attn_rel_error_head": [L][N] when the run was compared with dense.
    """
    if "density" in stats:
        record: dict[str, Any] = {
            "density": [round(float(x), 6) for x in stats["density"]],
            "heads": {
                key.removeprefix("num_"): [int(x) for x in value]
                for key, value in stats.items()
                if key.startswith("num_")
            },
        }
        if "share_reason" in stats:
            # Why shared-cluster heads shared or not: counts and compared values, and each
            # (layer, head)'s reason (an index into planner.SHARE_REASONS).
            record["sharing"] = sharing_summary({k: v[:, None] for k, v in stats.items()})
            record["share_reason"] = np.asarray(stats["share_reason"]).tolist()
    else:
        record = {"density": [1.0] * num_layers, "heads": {"dense": [num_heads] * num_layers}}
    if "attn_rel_error" in stats:
        record["attn_rel_error"] = [float(f"{x:.6g}") for x in stats["attn_rel_error"]]
        record["attn_rel_error_head"] = [
            [float(f"{x:.6g}") for x in row] for row in stats["attn_rel_error_head"]
        ]
    return record
