"""Answer a prompt: prefill it with a chosen attention, decode greedily, time both.

This is the main job as a library call:

    from models import prefill_and_answer
    from models.sources import load_source
    loaded, name = load_source("smollm2-135m-instruct")
    answer = prefill_and_answer(loaded.model, loaded.tokenizer, "What is 2 + 2?",
                                attention="shareprefill")
    print(answer.text, answer.prefill_s, answer.stats.get("density"))

`attention` is a method name (`dense` is the model's dense attention; `shareprefill`,
`flexprefill`, `vertical_slash`, `streaming` plan with `sharedsparse_jax`) or any
`models.attention.PrefillAttention`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from models.attention import DenseAttention, PrefillAttention
from models.compile_time import compile_clock
from models.generate import SamplingConfig, decode, prefill
from models.llama import Transformer
from models.sharding import MODEL, ShardedAttention
from models.tokenizer import Tokenizer
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import METHODS, SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from sharedsparse_jax.stats import summarize_stats

__all__ = ["AnsweredPrompt", "prefill_and_answer", "prefill_attention", "prompt_token_ids"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnsweredPrompt:
    """A prompt's answer with its timings and the planner's statistics.

    Attributes:
      text: the decoded answer (special tokens skipped, whitespace stripped).
      new_token_ids: the generated token ids (up to and including a stop token).
      prompt_tokens: the prompt's length in tokens.
      prefill_s: prefill seconds: the median of the `repeats` timed calls after the first, or
        (no repeats) the first call minus its compile time.
      prefill_timed_from: how prefill_s was taken, in words.
      first_call_s: wall seconds of the first prefill, compilation included.
      compile_s: seconds JAX spent tracing and compiling during the first prefill.
      decode_s: wall seconds of the greedy decode.
      stats: for planned methods, `sharedsparse_jax.stats.summarize_stats` of the prefill
        (density, density_per_layer, num_<category> head counts, sharing); {} for dense.
    """

    text: str
    new_token_ids: tuple[int, ...]
    prompt_tokens: int
    prefill_s: float
    prefill_timed_from: str
    first_call_s: float
    compile_s: float
    decode_s: float
    stats: dict[str, Any]


def prefill_attention(
    method: str,
    *,
    config: SharePrefillConfig | None = None,
    table: SharingTable | None = None,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
    dense_implementation: str | None = None,
    mesh: Any = None,
) -> PrefillAttention:
    """The prefill attention of a method name.

    Args:
      method: `dense` (the model's DenseAttention: cuDNN or XLA) or a planned method of
        `sharedsparse_jax.config.METHODS`.
      config: planner knobs (its method is replaced by `method`); default SharePrefillConfig().
      table: the sharing table; only `shareprefill` uses it.
      implementation: block-sparse kernel implementation(s), in fall-through order.
      interpret: run Pallas kernels in interpret mode.
      dense_implementation: `xla` or `cudnn` for `dense` (default: per backend and dtype).
      mesh: a (data, model) mesh the model is sharded over: the attention then runs inside
        shard_map with each device's heads (`models.sharding.ShardedAttention`).

    Returns:
      The attention to pass to `models.prefill`.
    """
    if method == "dense":
        attention: PrefillAttention = DenseAttention(implementation=dense_implementation)
    elif method not in METHODS:
        raise ValueError(f"method {method!r} is not dense or one of {METHODS}")
    else:
        config = dataclasses.replace(config or SharePrefillConfig(), method=method)
        attention = SharePrefillAttention(
            config,
            table if method == "shareprefill" else None,
            implementation=implementation,
            interpret=interpret,
            head_axis=None if mesh is None else MODEL,
        )
    return attention if mesh is None else ShardedAttention(attention, mesh)


def prompt_token_ids(tokenizer: Tokenizer, prompt: str | Sequence[int], *, chat: bool) -> list[int]:
    """Token ids of a prompt: ids as given, text in the chat template (when `chat` and the
    tokenizer has one) or encoded as it is."""
    if not isinstance(prompt, str):
        return [int(i) for i in prompt]
    if chat and tokenizer.chat_template is not None:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, tokenize=True))
    return list(tokenizer.encode(prompt))


def prefill_and_answer(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    *,
    attention: str | PrefillAttention = "shareprefill",
    config: SharePrefillConfig | None = None,
    table: SharingTable | None = None,
    chat: bool = True,
    max_new_tokens: int = 16,
    repeats: int = 0,
) -> AnsweredPrompt:
    """Prefills a prompt with the given attention, decodes greedily and times both.

    Args:
      model: the decoder.
      tokenizer: its tokenizer (decodes the answer; encodes a text prompt).
      prompt: text, or token ids used as they are.
      attention: a method name (see `prefill_attention`) or a PrefillAttention.
      config: planner knobs when `attention` is a method name.
      table: the sharing table when `attention` is `shareprefill`.
      chat: wrap a text prompt in the tokenizer's chat template, when it has one.
      max_new_tokens: tokens to generate at most (generation also stops at EOS).
      repeats: timed prefills after the first; prefill_s is their median (0: the first call
        minus its compile time).

    Returns:
      The answer, timings and planner statistics.
    """
    if max_new_tokens < 1 or repeats < 0:
        raise ValueError(
            f"need max_new_tokens >= 1 and repeats >= 0, got {max_new_tokens}, {repeats}"
        )
    if isinstance(attention, str):
        attention = prefill_attention(attention, config=config, table=table)
    token_ids = prompt_token_ids(tokenizer, prompt, chat=chat)
    eos = tokenizer.eos_token_id
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, stop_tokens=() if eos is None else (eos,)
    )
    with compile_clock() as compiled:
        start = time.perf_counter()
        result = prefill(model, [token_ids], attention=attention)
        jax.block_until_ready((result.logits, result.cache))
        first_s = time.perf_counter() - start
    compile_s = compiled[0]
    run_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(prefill(model, [token_ids], attention=attention))
        run_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    decoded = decode(model, result, sampling=sampling)
    count = int(decoded.num_tokens[0])
    new_tokens = tuple(np.asarray(decoded.tokens[0, :count]).tolist())
    decode_s = time.perf_counter() - start
    stats = result.stats
    return AnsweredPrompt(
        text=tokenizer.decode(list(new_tokens), skip_special_tokens=True).strip(),
        new_token_ids=new_tokens,
        prompt_tokens=len(token_ids),
        prefill_s=float(np.median(run_s)) if run_s else max(first_s - compile_s, 0.0),
        prefill_timed_from=(
            f"median of {len(run_s)} calls after the first" if run_s else "first call minus compile"
        ),
        first_call_s=first_s,
        compile_s=compile_s,
        decode_s=decode_s,
        stats=summarize_stats(stats) if "density" in stats else {},
    )
