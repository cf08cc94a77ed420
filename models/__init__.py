"""Flax NNX decoders converted from real checkpoints, with dense or SharePrefill attention.

Typical use:

    from models import load_source, prefill_and_answer
    loaded, name = load_source("smollm2-135m-instruct")  # or an HF directory, a GGUF file, ...
    answer = prefill_and_answer(loaded.model, loaded.tokenizer, "Who wrote Emma?")

or, one level down:

    from models import SamplingConfig, generate, load_builtin
    loaded = load_builtin()                       # SmolLM2-135M-Instruct, fetched + converted once
    prompt = loaded.tokenizer.apply_chat_template(messages, tokenize=True)
    sampling = SamplingConfig(max_new_tokens=64, stop_tokens=(loaded.tokenizer.eos_token_id,))
    tokens, stats = generate.generate(loaded.model, [prompt], sampling=sampling)

(`models.generate` is the module; its `generate` function is not re-exported so the name keeps
meaning the module.)
"""

from models.answer import AnsweredPrompt, prefill_and_answer, prefill_attention
from models.attention import DenseAttention, PrefillAttention, decode_attention
from models.cache import cache_root
from models.checkpoint import LoadedCheckpoint, load_checkpoint, model_from_params
from models.config import ModelConfig, RopeConfig
from models.convert import convert_checkpoint
from models.fetch import BUILTIN_MODELS, builtin_checkpoint, fetch_gguf, load_builtin
from models.generate import (
    DecodeResult,
    PrefillResult,
    SamplingConfig,
    bucket_length,
    decode,
    prefill,
    prefill_chunked,
)
from models.llama import KVCache, Transformer, parameter_shapes
from models.sources import load_source, resolve_source
from models.tokenizer import Tokenizer

__all__ = [
    "AnsweredPrompt",
    "BUILTIN_MODELS",
    "DecodeResult",
    "DenseAttention",
    "KVCache",
    "LoadedCheckpoint",
    "ModelConfig",
    "PrefillAttention",
    "PrefillResult",
    "RopeConfig",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "bucket_length",
    "builtin_checkpoint",
    "cache_root",
    "convert_checkpoint",
    "decode",
    "decode_attention",
    "fetch_gguf",
    "load_builtin",
    "load_checkpoint",
    "load_source",
    "model_from_params",
    "parameter_shapes",
    "prefill",
    "prefill_and_answer",
    "prefill_attention",
    "prefill_chunked",
    "resolve_source",
]
