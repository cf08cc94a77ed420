"""GPU checks (run with SHAREDSPARSE_TEST_PLATFORM=gpu pytest -m gpu tests/models): the cuDNN
dense prefill in bf16 against the XLA float32 path on the real SmolLM2 weights, and decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import DenseAttention, SamplingConfig, generate, load_builtin
from tests.models import real_models

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_models():
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)")
    return load_builtin(), load_builtin(dtype=jnp.bfloat16)


def test_cudnn_bf16_prefill_matches_xla_f32(gpu_models):
    f32, bf16 = gpu_models
    ids = f32.tokenizer.encode(real_models.PASSAGE * 8)[:2000]
    reference = generate.prefill(
        f32.model, [ids], logit_positions="all", attention=DenseAttention(implementation="xla")
    )
    cudnn = generate.prefill(
        bf16.model, [ids], logit_positions="all", attention=DenseAttention(implementation="cudnn")
    )
    reference, cudnn = np.asarray(reference.logits[0]), np.asarray(cudnn.logits[0])
    nll_f32 = real_models.mean_nll(reference, ids)
    nll_bf16 = real_models.mean_nll(cudnn, ids)
    assert abs(nll_bf16 - nll_f32) < 0.05, (nll_f32, nll_bf16)
    assert np.mean(reference.argmax(-1) == cudnn.argmax(-1)) > 0.95


def test_generation_on_gpu(gpu_models):
    _, bf16 = gpu_models
    tokenizer = bf16.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=True
    )
    sampling = SamplingConfig(max_new_tokens=16, stop_tokens=(tokenizer.eos_token_id,))
    tokens, _ = generate.generate(bf16.model, [prompt], sampling=sampling)
    assert "Paris" in tokenizer.decode(tokens[0])
