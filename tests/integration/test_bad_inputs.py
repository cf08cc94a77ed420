"""Every bad input the CLIs (sharedsparse-prefill, -calibrate, -evaluate) check, with the one line
each prints: checked before anything is loaded (or, for evaluate, logged), exit code 2, no
traceback. docs/usage.md lists the same inputs and messages."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

import evaluation.harness.run
from sharedsparse_cli import calibrate, evaluate, prefill
from tests.integration import helpers


@pytest.fixture(scope="module")
def scripts():
    return {"prefill": prefill, "calibrate": calibrate, "evaluate": evaluate}


def _write_gguf(path: Path, *, omit: tuple[str, ...] = ()) -> Path:
    """A small llama GGUF (metadata, tokenizer, one tensor): enough to reach the config checks."""
    writer = GGUFWriter(str(path), "llama")
    metadata = {
        "block_count": (writer.add_block_count, 2),
        "context_length": (writer.add_context_length, 256),
        "embedding_length": (writer.add_embedding_length, 32),
        "feed_forward_length": (writer.add_feed_forward_length, 64),
        "attention.head_count": (writer.add_head_count, 4),
        "attention.layer_norm_rms_epsilon": (writer.add_layer_norm_rms_eps, 1e-5),
    }
    for key, (add, value) in metadata.items():
        if key not in omit:
            add(value)
    writer.add_token_list([f"t{i}" for i in range(16)])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 32)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _hf_dir(path: Path, **changes) -> Path:
    """An HF checkpoint directory whose config.json is the tiny model's, changed."""
    path.mkdir()
    config = helpers.tiny_config().to_hf() | changes
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v != "-"}))
    helpers.byte_tokenizer().save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files and directories the bad command lines point at, by name."""
    root = tmp_path_factory.mktemp("inputs")
    checkpoint = helpers.save_tiny_checkpoint(root / "tiny-llama")
    incomplete = root / "incomplete"
    shutil.copytree(checkpoint, incomplete)
    shutil.rmtree(incomplete / "params")
    (incomplete / "params").mkdir()
    (root / "prompt.txt").write_text("What is the news?")
    (root / "empty.txt").write_text("  \n")
    helpers.write_tiny_table(root / "table.json")
    (root / "broken.json").write_text('{"clusters": ')
    (root / "a-directory").mkdir()
    (root / "a-file").write_text("x")
    whole = _write_gguf(root / "whole.gguf")
    (root / "truncated.gguf").write_bytes(whole.read_bytes()[:200])
    _write_gguf(root / "no-block-count.gguf", omit=("block_count",))
    _hf_dir(root / "hf-no-layers", num_hidden_layers="-")
    _hf_dir(root / "hf-mistral-no-window", model_type="mistral", sliding_window="-",
            max_position_embeddings=32768, attention_bias="-", mlp_bias="-")  # fmt: skip
    return root


# (script, command line with {name} for the fixture's paths, the line it prints)
PREFILL = "--checkpoint {tiny-llama} --prompt-file {prompt.txt}"
CALIBRATE = "--checkpoint {tiny-llama}"
EVALUATE = "--out-dir {results} --checkpoint tiny-random --tasks text --no-report"
CASES = [
    # sharedsparse-prefill
    ("prefill", "--checkpoint {nowhere}", "--checkpoint {nowhere}: not a built-in model"),
    ("prefill", "--checkpoint {incomplete}", r"--checkpoint {incomplete}: .*params is empty"),
    ("prefill", "--checkpoint {a-directory}", "neither params/ nor config.json in it"),
    ("prefill", "--checkpoint {a-file}", r"--checkpoint {a-file} is not a GGUF file"),
    (
        "prefill",
        "--checkpoint {truncated.gguf}",
        r"--checkpoint {truncated.gguf} is truncated or corrupt: its GGUF metadata",
    ),
    ("prefill", "--checkpoint {no-block-count.gguf}", "GGUF metadata lacks llama.block_count"),
    (
        "prefill",
        "--checkpoint {hf-no-layers}",
        r"config.json lacks the required key\(s\) \['num_hidden_layers'\]",
    ),
    ("prefill", "--checkpoint {hf-mistral-no-window}", "no sliding_window key, so"),
    ("prefill", PREFILL.replace("prompt.txt", "nowhere.txt"), "--prompt-file .*: no such file"),
    ("prefill", PREFILL.replace("prompt.txt", "empty.txt"), r"--prompt-file .*empty.txt is empty"),
    ("prefill", "--answer Paris", "--answer applies to --prompt-file"),
    ("prefill", PREFILL + " --table {nowhere.json}", r"--table .*: no such file"),
    ("prefill", PREFILL + " --table {broken.json}", r"--table .* is not a JSON file"),
    ("prefill", PREFILL + " --method dense --table {table.json}", "--table is a sharing table"),
    ("prefill", PREFILL + " --out-dir {a-file}", r"--out-dir .*a-file is a file"),
    ("prefill", PREFILL + " --out-dir {a-file}/run", r"--out-dir .*: .*a-file is a file, not"),
    ("prefill", PREFILL + " --method dense sparse", "--method sparse: unknown method"),
    ("prefill", PREFILL + " --repeats -3", "--repeats must be >= 0, got -3"),
    ("prefill", PREFILL + " --max-new-tokens 0", "--max-new-tokens must be >= 1, got 0"),
    ("prefill", "--needle-depth 1.5", r"--needle-depth must be in \[0, 1\], got 1.5"),
    ("prefill", "--context-tokens 0", "--context-tokens must be >= 1, got 0"),
    ("prefill", PREFILL + " --implementation fast", r"--implementation: unknown \['fast'\]"),
    ("prefill", PREFILL + " --block-size 0", "invalid planner settings: .*block_size"),
    ("prefill", PREFILL + " --gamma 1.5", "invalid planner settings: .*gamma"),
    ("prefill", PREFILL + " --yarn-factor 1", "--yarn-factor must be above 1, got 1"),
    # sharedsparse-calibrate
    ("calibrate", "--checkpoint {nowhere}", "--checkpoint .*nowhere: not a built-in model"),
    ("calibrate", "--checkpoint {incomplete}", "--checkpoint .*incomplete: .*params is empty"),
    ("calibrate", CALIBRATE + " --map-block-size 0", "--map-block-size must be >= 1, got 0"),
    ("calibrate", CALIBRATE + " --samples 0", "--samples must be >= 1, got 0"),
    ("calibrate", CALIBRATE + " --heldout 0", "--heldout must be >= 1, got 0"),
    ("calibrate", CALIBRATE + " --lengths 1000", "length 1000 must be a multiple of"),
    ("calibrate", CALIBRATE + " --second-length 4096", r"--second-length \(4096\) must be below"),
    ("calibrate", CALIBRATE + " --grid 6", "grid must be a positive multiple of 4, got 6"),
    ("calibrate", CALIBRATE + " --threshold -1", "distance_threshold must be > 0"),
    ("calibrate", CALIBRATE + " --linkage nearest", "linkage must be one of"),
    ("calibrate", CALIBRATE + " --min-coverage 2", r"min_coverage must be in \[0, 1\]"),
    ("calibrate", CALIBRATE + " --out-dir {a-file}", r"--out-dir .* is a file"),
    ("calibrate", CALIBRATE + " --implementation fast", r"--implementation: unknown \['fast'\]"),
    ("calibrate", CALIBRATE + " --yarn-factor 0.5", "--yarn-factor must be above 1, got 0.5"),
    # sharedsparse-evaluate (nothing appended to runs.jsonl)
    (
        "evaluate",
        "--out-dir {results} --checkpoint smollm3",
        "--checkpoint smollm3: not a built-in",
    ),
    ("evaluate", EVALUATE + " --method sparse", "--method sparse: unknown method"),
    ("evaluate", EVALUATE + " --tasks txt", "--tasks txt: unknown task; known: text, "),
    ("evaluate", EVALUATE + " --variants bogus", "--variants: unknown variant 'bogus'"),
    ("evaluate", EVALUATE + " --samples 0", "--samples '0': write N or TASK=N with N >= 1"),
    ("evaluate", EVALUATE + " --samples vt=5", r"--samples vt=\.\.\.: 'vt' is not among --tasks"),
    ("evaluate", EVALUATE + " --windows 0", "--windows must be >= 1, got 0"),
    ("evaluate", EVALUATE + " --yarn-factor 1", "--yarn-factor must be above 1, got 1"),
    ("evaluate", EVALUATE + " --yarn-factor -4", "--yarn-factor must be above 1, got -4"),
    ("evaluate", EVALUATE + " --table {nowhere.json}", r"--table .*: no such file"),
    ("evaluate", EVALUATE.replace("{results}", "{a-file}"), r"--out-dir .* is a file"),
    ("evaluate", "--report-only --out-dir {nowhere}", "--report-only: .* holds no results"),
    ("evaluate", "--checkpoint tiny-random", "--out-dir is required"),
]


_PLACEHOLDER = re.compile(r"\{([\w.-]+)\}")


def _command_line(template: str, root: Path) -> list[str]:
    """The words of a command line, each {name} replaced by the fixture's path of that name."""
    return [_PLACEHOLDER.sub(lambda m: str(root / m.group(1)), word) for word in template.split()]


def _pattern(message: str, root: Path) -> str:
    """A message's regular expression, each {name} replaced by that path, escaped."""
    return _PLACEHOLDER.sub(lambda m: re.escape(str(root / m.group(1))), message)


def _case_id(case: tuple[str, str, str]) -> str:
    script, _, message = case
    return f"{script}:" + re.sub(r"[^\w-]+", "_", _PLACEHOLDER.sub(r"\1", message))[:40]


@pytest.mark.parametrize("script,template,message", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_prints_one_line_and_loads_nothing(
    scripts, inputs, monkeypatch, capsys, script, template, message
):
    module = scripts[script]

    def refuse(*args, **kwargs):
        raise AssertionError("a bad command line got as far as loading or running")

    for name in ("load_builtin", "load_checkpoint", "cached_conversion", "load_source"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(evaluation.harness.run, "run_evaluation", refuse)
    with pytest.raises(SystemExit) as exited:
        module.main(_command_line(template, inputs))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sharedsparse-{script}: error: ")
    assert re.search(_pattern(message, inputs), err), err
    assert not (inputs / "results" / "runs.jsonl").exists()


def test_a_valid_evaluate_run_is_logged_once(scripts, tmp_path, monkeypatch):
    from evaluation.harness.options import RunReport

    calls = []
    monkeypatch.setattr(
        evaluation.harness.run, "run_evaluation", lambda *a, **k: calls.append(a) or RunReport()
    )
    results = tmp_path / "results"
    argv = ["--out-dir", str(results), "--checkpoint", "tiny-random", "--tasks", "text"]
    assert scripts["evaluate"].main([*argv, "--no-report"]) == 0
    assert len(calls) == 1
    (logged,) = (results / "runs.jsonl").read_text().splitlines()
    assert json.loads(logged)["argv"][:2] == ["--out-dir", str(results)]
    assert json.loads(logged)["program"] == "sharedsparse-evaluate"
