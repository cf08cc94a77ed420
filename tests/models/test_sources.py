"""Model sources: the stored dtype of a conversion, conversion once into the cache, streaming
through memory-mapped scratch files, and `sharedsparse-convert`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from safetensors.numpy import load_file, save_file

from models import checkpoint, fetch, sources
from models.convert import convert_checkpoint, source_dtype
from models.convert.common import ParameterFiller
from models.convert.gguf import gguf_source_dtype
from sharedsparse_cli import convert as convert_cli
from tests.models.conftest import load_reference
from tests.models.helpers import tiny_config
from tests.models.test_conversion import write_tiny_gguf


def _bf16_copy(tiny_hf_dir: Path, tmp_path: Path) -> Path:
    """The tiny llama checkpoint with every tensor stored in bfloat16."""
    target = tmp_path / "llama-bf16"
    shutil.copytree(tiny_hf_dir / "llama", target)
    tensors = load_file(target / "model.safetensors")
    save_file(
        {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}, target / "model.safetensors"
    )
    return target


def test_auto_dtype_keeps_the_sources(tiny_hf_dir, tmp_path):
    assert source_dtype(tiny_hf_dir / "llama") == "float32"
    assert source_dtype(_bf16_copy(tiny_hf_dir, tmp_path)) == "bfloat16"
    assert source_dtype(write_tiny_gguf(tiny_hf_dir / "llama", tmp_path / "f32.gguf")) == "float32"

    def reader(*types):
        tensors = [SimpleNamespace(tensor_type=t, shape=np.array([64, 32])) for t in types]
        return SimpleNamespace(tensors=tensors)

    F16, Q4 = GGMLQuantizationType.F16, GGMLQuantizationType.Q4_K
    assert gguf_source_dtype(reader(F16, F16)) == "float16"
    assert gguf_source_dtype(reader(F16, Q4)) == "bfloat16"  # quantized: bfloat16


def test_bf16_checkpoint_converts_to_bf16_exactly(tiny_hf_dir, tmp_path):
    source = _bf16_copy(tiny_hf_dir, tmp_path)
    directory = convert_checkpoint(source, tmp_path / "converted")
    assert json.loads((directory / "conversion.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".converted-scratch.*"))  # the scratch files are gone
    loaded = checkpoint.load_checkpoint(directory)
    embed = np.asarray(loaded.model.embed[...])
    assert embed.dtype == ml_dtypes.bfloat16
    want = load_file(source / "model.safetensors")["model.embed_tokens.weight"]
    np.testing.assert_array_equal(embed.astype(np.float32), want.astype(np.float32))


def test_filler_streams_into_memory_mapped_files(tmp_path):
    config = tiny_config()
    filler = ParameterFiller(config, "bfloat16", scratch_dir=tmp_path)
    arrays = list(filler._arrays.values())
    assert all(isinstance(a, np.memmap) for a in arrays)
    assert len(list(tmp_path.glob("*.npy"))) == len(arrays)


def test_a_source_converts_once_into_the_cache(tiny_hf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDSPARSE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "My.Model-1.5"
    shutil.copytree(tiny_hf_dir / "llama", source)
    assert sources.source_name(str(source)) == "My.Model-1.5"
    target = sources.conversion_target(str(source))
    assert target.parent == tmp_path / "cache" / "checkpoints"
    assert target.name.startswith("My.Model-1.5-") and target.name.endswith("-float32-v1")
    assert sources.resolve_source(str(source)) == target
    assert checkpoint.checkpoint_problem(target) is None

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(fetch, "convert_checkpoint", refuse)
    loaded, name = sources.load_source(str(source))
    assert name == "My.Model-1.5" and loaded.config.num_layers > 0
    reference = load_reference(tiny_hf_dir / "llama")
    assert loaded.config.vocab_size == reference["logits"].shape[-1]
    # A converted directory is used as it is; an edited source converts again.
    assert sources.resolve_source(str(target)) == target
    config = source / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    assert sources.conversion_target(str(source)) != target


def test_source_problems_are_one_line(tmp_path):
    assert "not a built-in model" in sources.source_problem(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "neither params/ nor config.json" in sources.source_problem(str(tmp_path / "empty"))
    assert sources.source_problem("smollm2-135m-instruct") is None


def test_convert_cli_writes_the_directory_named(tiny_hf_dir, tmp_path, capsys):
    out_dir = tmp_path / "converted"
    assert (
        convert_cli.main(
            [
                "--checkpoint",
                str(tiny_hf_dir / "qwen2"),
                "--dtype",
                "bfloat16",
                "--out-dir",
                str(out_dir),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith(str(out_dir.absolute()))
    assert json.loads((out_dir / "conversion.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(SystemExit) as exited:
        convert_cli.main(["--checkpoint", str(tiny_hf_dir / "qwen2"), "--out-dir", str(out_dir)])
    assert exited.value.code == 2
    assert "already exists" in capsys.readouterr().err
