"""Converted checkpoints in the cache: an incomplete one is reported and converted again, and
staging directories of killed conversions are removed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from models import checkpoint, fetch, generate
from models.checkpoint import checkpoint_problem, load_checkpoint, save_checkpoint
from models.random_weights import random_params
from tests.models.conftest import load_reference
from tests.models.helpers import tiny_config


def _damage_empty_params(directory):
    shutil.rmtree(directory / "params")
    (directory / "params").mkdir()


def _damage_orbax_metadata(directory):
    (directory / "params" / "_METADATA").unlink()


@pytest.mark.parametrize(
    "damage,problem",
    [(_damage_empty_params, "params is empty"), (_damage_orbax_metadata, "no orbax metadata")],
    ids=["empty-params", "no-orbax-metadata"],
)
def test_incomplete_cached_conversion_is_reported_and_redone(
    tiny_hf_dir, tmp_path, monkeypatch, damage, problem
):
    monkeypatch.setenv("SHAREDSPARSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "fetch_gguf", lambda name: tiny_hf_dir / "llama")
    target = fetch.builtin_checkpoint("smollm2-135m-instruct")
    assert checkpoint_problem(target) is None
    damage(target)
    assert problem in checkpoint_problem(target)
    with pytest.warns(
        UserWarning, match=rf"{target} is unusable \(.*{problem}.*converting it again"
    ):
        assert fetch.builtin_checkpoint("smollm2-135m-instruct") == target
    assert checkpoint_problem(target) is None
    reference = load_reference(tiny_hf_dir / "llama")
    model = load_checkpoint(target).model
    logits = generate.prefill(model, reference["input_ids"], logit_positions="all").logits
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


def _save_tiny(directory):
    config = tiny_config()
    return save_checkpoint(
        directory,
        config=config,
        params=random_params(config, 0),
        tokenizer=None,
        conversion={"source": "random"},
    )


def test_loading_an_incomplete_checkpoint_says_what_is_missing(tmp_path):
    directory = _save_tiny(tmp_path / "ckpt")
    _damage_empty_params(directory)
    with pytest.raises(ValueError, match=rf"{directory} is not a complete checkpoint: .*is empty"):
        checkpoint.load_checkpoint(directory)


def _staging(parent, name, suffix, *, owner=None, age_s=0.0):
    staging = parent / f".{name}.{suffix}"
    (staging / "params").mkdir(parents=True)
    if owner is not None:
        (staging / ".owner").write_text(json.dumps(owner))
    stamp = time.time() - age_s
    os.utime(staging, (stamp, stamp))
    return staging


def test_stale_staging_directories_are_removed(tmp_path):
    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                              capture_output=True, text=True)  # fmt: skip
    dead_pid = int(finished.stdout)
    stale = [
        _staging(tmp_path, "ckpt", "killed", owner={"host": host, "pid": dead_pid}),
        _staging(tmp_path, "ckpt", "old", age_s=2 * 3600),
        _staging(tmp_path, "ckpt", "ancient", owner={"host": "elsewhere", "pid": 1}, age_s=8e5),
    ]
    kept = [
        _staging(tmp_path, "ckpt", "running", owner={"host": host, "pid": os.getpid()}),
        _staging(tmp_path, "ckpt", "young", age_s=60),
        _staging(tmp_path, "ckpt", "remote", owner={"host": "elsewhere", "pid": 1}),
        _staging(tmp_path, "other", "killed", owner={"host": host, "pid": dead_pid}),
    ]
    _save_tiny(tmp_path / "ckpt")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert checkpoint_problem(tmp_path / "ckpt") is None
    assert not (tmp_path / "ckpt" / ".owner").exists()
