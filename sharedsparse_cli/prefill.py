"""Answer a long-context question with dense and SharePrefill prefill: the project's main job.

    sharedsparse-prefill            # built-in question on SmolLM2-135M-Instruct

With no options: fetch SmolLM2-135M-Instruct into the cache and convert it (both once), build
the built-in question (a five-digit pass key hidden near the end of a haystack of about 3,500
tokens), prefill it with dense attention and with SharePrefill, decode greedily, and print both
answers (and whether each is right), prefill times, block density and how many heads of each
kind the planner chose. Bring your own prompt, checkpoint and sharing table:

    sharedsparse-prefill --prompt-file question.txt --answer "Paris" \\
        --checkpoint path/to/hf-or-gguf --method dense shareprefill flexprefill \\
        --table my_table.json --gamma 0.9 --min-budget 512 --out-dir runs/

Qwen2.5-Coder beyond its trained 32K tokens, with YaRN (an experiment for this model,
docs/models.md): a pass key in 120,000 tokens,

    sharedsparse-prefill --checkpoint qwen2.5-coder-0.5b-instruct --yarn-factor 4 \\
        --context-tokens 120000

Each method runs through `models.prefill_and_answer`. docs/usage.md describes every option.
Every option is checked before anything is loaded; a bad one ends the run with one line on
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from evaluation.harness.store import model_label
from evaluation.tasks.passkey import PasskeyTask, generate_passkey
from evaluation.tasks.sample import PROMPT_FORMATS
from models import (
    LoadedCheckpoint,
    distributed,
    load_checkpoint,
    prefill_and_answer,
    prefill_attention,
)
from models.checkpoint import checkpoint_problem as converted_problem
from models.sharding import make_mesh, parse_mesh_shape
from models.sources import conversion_target, resolve_source, source_name, source_problem
from sharedsparse_cli import flags
from sharedsparse_jax import tables
from sharedsparse_jax.config import METHODS, SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from sharedsparse_jax.stats import describe_sharing

BUILTIN_CONTEXT_TOKENS = 3500
# The pass key sits 95% of the way into the haystack: SmolLM2-135M finds a pass key at ~1K
# tokens but not in the middle of 3K+ tokens (docs/usage.md); near the end, dense attention
# finds it at 3.5K, which keeps the question answerable while its context stays long.
BUILTIN_NEEDLE_DEPTH = 0.95
BUILTIN_SAMPLE_INDEX = 0
PREFILL_METHODS = ("dense", *(m for m in METHODS if m != "dense"))


@dataclasses.dataclass(frozen=True)
class Question:
    """A prompt as token ids, with the expected answer when known."""

    description: str
    token_ids: list[int]
    expected: str | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the command line; a bad option exits with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        flags.fail(parser, problem)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser("prefill", __doc__)
    source = parser.add_argument_group("model and prompt")
    flags.add_checkpoint(source)
    source.add_argument(
        "--prompt-file",
        type=Path,
        help="text file with the prompt (default: the built-in pass-key question)",
    )
    source.add_argument(
        "--raw-prompt",
        action="store_true",
        help="feed the prompt file as it is (default: wrap it in the model's chat template)",
    )
    source.add_argument(
        "--answer", help="expected answer of the prompt file; an answer is right if it contains it"
    )
    source.add_argument(
        "--context-tokens",
        type=int,
        default=BUILTIN_CONTEXT_TOKENS,
        help="length of the built-in question in tokens (default: %(default)s)",
    )
    source.add_argument(
        "--needle-depth",
        type=float,
        default=BUILTIN_NEEDLE_DEPTH,
        help="where the built-in pass key sits in its haystack, 0..1 (default: %(default)s)",
    )
    flags.add_dtype(source)
    flags.add_yarn_factor(source)

    methods = parser.add_argument_group("attention")
    flags.add_method(
        methods,
        choices=PREFILL_METHODS,
        default=["dense", "shareprefill"],
        what="; dense runs the model's dense attention (cuDNN / XLA), the others the planner"
        " and the block-sparse kernels",
    )
    flags.add_table(methods)
    flags.add_kernels(methods)
    methods.add_argument(
        "--dense-implementation",
        choices=("xla", "cudnn"),
        help="implementation of the dense method (default: cuDNN for bf16/f16 on GPU, else XLA)",
    )

    defaults = SharePrefillConfig()
    knobs = parser.add_argument_group("planner (SharePrefillConfig)")
    for name, kind, what in (
        ("block_size", int, "tokens per block"),
        ("gamma", float, "cumulative-mass coverage (pattern threshold)"),
        ("tau_sim", float, "similarity bound for sharing"),
        ("tau_fb", float, "a cluster whose pivot vertical-slash coverage reaches this won't share"),
        ("tau_qa", float, "query-aware bound"),
        ("min_budget", int, "vertical / slash budget floor, tokens"),
        ("max_budget", int, "vertical / slash budget cap, tokens"),
        ("streaming_sink", int, "sink tokens of `streaming`"),
        ("streaming_window", int, "local window tokens of `streaming`"),
    ):
        knobs.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=getattr(defaults, name),
            help=f"{what} (default: %(default)s)",
        )
    knobs.add_argument(
        "--dense-below",
        type=int,
        default=None,
        help="prompts shorter than this run dense (default: the crossover measured on this"
        " device by `sharedsparse-bench crossover` and stored in the sharing table, else"
        f" {defaults.dense_below})",
    )
    knobs.add_argument(
        "--reference-quirks",
        action="store_true",
        help="reproduce the reference implementation's quirks exactly",
    )

    run = parser.add_argument_group("generation, timing and output")
    run.add_argument(
        "--max-new-tokens", type=int, default=16, help="tokens to generate (default: %(default)s)"
    )
    run.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed prefills after the first call, whose median is reported (default: 0: the"
        " first call only, from which compile time is subtracted)",
    )
    flags.add_out_dir(run, required=False, what="the results as prefill.json")
    distributed.add_arguments(parser)
    return parser


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, checked without loading anything (None: nothing).

    Reads the prompt file into `args.prompt_text` and builds the planner config into
    `args.planner`.
    """
    problem = (
        flags.checkpoint_problem(args.checkpoint)
        or flags.method_problem(args.method, PREFILL_METHODS)
        or flags.yarn_factor_problem(args.yarn_factor)
    )
    if problem is not None:
        return problem
    args.prompt_text = None
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            return f"--prompt-file {args.prompt_file}: no such file"
        try:
            args.prompt_text = args.prompt_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            return f"--prompt-file {args.prompt_file}: cannot be read as text ({error})"
        if not args.prompt_text.strip():
            return f"--prompt-file {args.prompt_file} is empty"
    else:
        for option, given in (("--answer", args.answer), ("--raw-prompt", args.raw_prompt)):
            if given:
                return f"{option} applies to --prompt-file (the built-in question has its own)"
    if args.context_tokens < 1:
        return f"--context-tokens must be >= 1, got {args.context_tokens}"
    if not 0.0 <= args.needle_depth <= 1.0:
        return f"--needle-depth must be in [0, 1], got {args.needle_depth}"
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if args.repeats < 0:
        return f"--repeats must be >= 0, got {args.repeats}"
    problem = flags.out_dir_problem(args.out_dir)
    if problem is not None:
        return problem
    if args.table.lower() not in ("none", "builtin") and "shareprefill" not in args.method:
        return "--table is a sharing table for --method shareprefill, which is not run"
    problem = flags.table_problem(args.table) or flags.implementation_problem(args.implementation)
    if problem is not None:
        return problem
    try:
        args.planner = planner_config(args)
    except ValueError as error:
        return f"invalid planner settings: {error}"
    try:
        args.mesh_shape = parse_mesh_shape(args.mesh or "")
        args.distributed = distributed.from_arguments(args, os.environ)
    except ValueError as error:
        return f"--mesh or process options: {error}"
    if args.mesh_shape["data"] != 1:
        return f"--mesh {args.mesh}: the main job answers one prompt, so data must be 1"
    return None


def resolve_checkpoint(
    source: str, dtype: jnp.dtype, mesh: Any = None, yarn_factor: float | None = None
) -> tuple[LoadedCheckpoint, str]:
    """Loads the --checkpoint model, converting an HF directory or GGUF file once (said so).

    Args:
      source: the --checkpoint value.
      dtype: parameter dtype after loading.
      mesh: restore the parameters sharded over this mesh (None: one device).
      yarn_factor: extend the model's context this many times with YaRN (None: as trained).

    Returns:
      The loaded checkpoint and the model's name (a built-in name, else the source's name).
    """
    problem = source_problem(source)
    if problem is not None:
        raise SystemExit(f"--checkpoint {problem}")
    try:
        target = conversion_target(source)
        if target is not None and converted_problem(target) is not None:
            print(f"converting {source} into {target} (once)", flush=True)
        directory = resolve_source(source)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--checkpoint {source}: cannot be converted: {error}") from error
    try:
        loaded = load_checkpoint(directory, dtype=dtype, mesh=mesh, yarn_factor=yarn_factor)
    except ValueError as error:  # e.g. --yarn-factor on a rope that is scaled already
        raise SystemExit(f"--checkpoint {source}: cannot be loaded: {error}") from error
    return loaded, source_name(source)


def build_question(args: argparse.Namespace, loaded: LoadedCheckpoint) -> Question:
    """The prompt file (chat-wrapped unless --raw-prompt) or the built-in pass-key question."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise SystemExit("the checkpoint has no tokenizer (tokenizer.json); cannot encode text")
    uses_chatml = "<|im_start|>" in (tokenizer.chat_template or "")
    if args.prompt_file is None:
        sample = generate_passkey(
            PasskeyTask(),
            length=args.context_tokens,
            encode=tokenizer.encode,
            index=BUILTIN_SAMPLE_INDEX,
            depths=[args.needle_depth],
            prompt_format=PROMPT_FORMATS["chatml" if uses_chatml else "base"],
        )
        description = (
            f"built-in: a {PasskeyTask().digits}-digit pass key hidden at"
            f" {args.needle_depth:.0%} depth of a repeated-sentence haystack; the prompt ends"
            " with 'The pass key is'"
        )
        return Question(description, tokenizer.encode(sample.prompt), sample.answers[0])
    text = args.prompt_text
    if args.raw_prompt or tokenizer.chat_template is None:
        ids = tokenizer.encode(text)
        how = "as it is" if args.raw_prompt else "as it is (the tokenizer has no chat template)"
    else:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True)
        how = "in the chat template"
    return Question(f"{args.prompt_file} ({how})", list(ids), args.answer)


def resolve_table(
    arg: str | None, model_name: str, num_layers: int, num_heads: int
) -> tuple[SharingTable | None, str]:
    """The sharing table for shareprefill and a line saying where it came from."""
    table, origin = tables.resolve_table(
        arg, model_name, num_layers=num_layers, num_heads=num_heads
    )
    if origin == "off":
        return None, "none (--table none): SharePrefill shares nothing"
    if origin == "unshipped":
        return None, (
            f"none: no sharing table is shipped for {model_name}; SharePrefill runs with no shared"
            " clusters (no pivot or shared heads, so it plans like FlexPrefill); pass --table"
        )
    where = arg if origin == "file" else f"shipped for {model_name}"
    line = f"{where}: {len(table.cluster_ids)} clusters, {table.num_shared} shared"
    metadata = dict(table.metadata)
    if "model" in metadata and "lengths" in metadata:
        lengths = ", ".join(str(length) for length in metadata["lengths"])
        line += f" (calibrated on {metadata['model']} at {lengths} tokens)"
    return table, line


def measured_dense_below(
    args: argparse.Namespace, planner: SharePrefillConfig, table: SharingTable | None
) -> tuple[SharePrefillConfig, str]:
    """The planner with the crossover measured on this device, or on another GPU of its maker
    where none was (unless --dense-below is given), and a line saying where it came from."""
    device_kind = jax.devices()[0].device_kind
    if args.dense_below is not None:
        return planner, f"dense below {planner.dense_below} tokens (--dense-below)"
    measured = None if table is None else table.measured_dense_below(device_kind)
    if measured is None:
        return planner, (
            f"dense below {planner.dense_below} tokens (the default: no crossover measured on"
            f" {device_kind})"
        )
    planner = dataclasses.replace(planner, dense_below=measured["tokens"])
    where = measured["device"]
    if where != device_kind:
        where += (
            f", none measured on {device_kind} (`python -m benchmarks.crossover --write-tables`"
            " measures it)"
        )
    return planner, (
        f"dense below {planner.dense_below} tokens: the crossover measured on {where}"
        f" ({measured['date']}, {measured['command']})"
    )


def planner_config(args: argparse.Namespace) -> SharePrefillConfig:
    """The planner knobs as a config (its method is set per run); bad values raise ValueError."""
    return SharePrefillConfig(
        block_size=args.block_size,
        gamma=args.gamma,
        tau_sim=args.tau_sim,
        tau_fb=args.tau_fb,
        tau_qa=args.tau_qa,
        min_budget=args.min_budget,
        max_budget=args.max_budget,
        dense_below=SharePrefillConfig().dense_below
        if args.dense_below is None
        else args.dense_below,
        streaming_sink=args.streaming_sink,
        streaming_window=args.streaming_window,
        reference_quirks=args.reference_quirks,
    )


def run_method(method, args, planner, table, loaded, question) -> dict:
    """Prefills, times and decodes one method (`models.prefill_and_answer`); returns its record."""
    attention = prefill_attention(
        method,
        config=planner,
        table=table,
        implementation=flags.implementation(args.implementation),
        interpret=args.interpret,
        dense_implementation=args.dense_implementation,
        mesh=args.device_mesh,
    )
    answer = prefill_and_answer(
        loaded.model,
        loaded.tokenizer,
        question.token_ids,
        attention=attention,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
    )
    return {
        "method": method,
        "prefill_s": answer.prefill_s,
        "prefill_timed_from": answer.prefill_timed_from,
        "first_call_s": answer.first_call_s,
        "compile_s": answer.compile_s,
        "decode_s": answer.decode_s,
        "new_tokens": len(answer.new_token_ids),
        "answer": answer.text,
        "correct": None if question.expected is None else question.expected in answer.text,
    } | answer.stats


def print_report(records: list[dict], question: Question, thresholds: dict[str, float]) -> None:
    """The answers, one line per method, then why SharePrefill's heads shared or not."""
    for record in records:
        verdict = {None: "", True: "  [correct]", False: "  [wrong]"}[record["correct"]]
        print(f"\n{record['method']:>14} answer: {record['answer']!r}{verdict}")
    if question.expected is not None:
        print(f"{'expected':>14} answer: {question.expected!r}")
    header = (
        f"\n{'method':>14}  {'prefill s':>9}  {'compile s':>9}  {'density':>7}  {'pivot':>5}"
        f"  {'shared':>6}  {'q-aware':>7}  {'v-slash':>7}  {'dense':>5}  {'stream':>6}  correct"
    )
    print(header)
    for r in records:
        counts = [
            r.get(f"num_{name}", "-")
            for name in ("pivot", "shared", "query_aware", "vertical_slash", "dense", "streaming")
        ]
        density = f"{r['density']:.3f}" if "density" in r else "1 (all)"
        correct = {None: "?", True: "yes", False: "no"}[r["correct"]]
        print(
            f"{r['method']:>14}  {r['prefill_s']:>9.2f}  {r['compile_s']:>9.2f}  {density:>7}"
            f"  {counts[0]:>5}  {counts[1]:>6}  {counts[2]:>7}  {counts[3]:>7}  {counts[4]:>5}"
            f"  {counts[5]:>6}  {correct}"
        )
    timed_from = records[0]["prefill_timed_from"]
    print(
        f"prefill s: {timed_from} (seconds); compile s: JAX tracing and compiling of the prefill;"
        " head counts: (layer, head) pairs"
    )
    for r in records:
        if r["method"] != "shareprefill":
            continue
        lines = describe_sharing(r["sharing"], thresholds)
        print("\nshareprefill: why shared-cluster heads did or did not share, (layer, head) pairs:")
        for line in lines or ["no head of the table's shared clusters (the table shares none)"]:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    planner = args.planner
    args.device_mesh = None
    if args.mesh is not None:
        distributed.initialize(args.distributed)
        args.device_mesh = make_mesh(args.mesh_shape)
    dtype_name = flags.compute_dtype(args.dtype)
    loaded, model_name = resolve_checkpoint(
        args.checkpoint, jnp.dtype(dtype_name), args.device_mesh, args.yarn_factor
    )
    config = loaded.config
    question = build_question(args, loaded)
    if len(question.token_ids) + args.max_new_tokens > config.max_position_embeddings:
        longer = "" if args.yarn_factor is not None else " (--yarn-factor extends it)"
        raise SystemExit(
            f"the prompt ({len(question.token_ids)} tokens) plus --max-new-tokens"
            f" {args.max_new_tokens} exceeds the model's context of"
            f" {config.max_position_embeddings} tokens{longer}"
        )
    try:
        table, table_line = resolve_table(
            args.table, model_name, config.num_layers, config.num_heads
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"--table {args.table}: {error}") from error
    planner, dense_line = measured_dense_below(args, planner, table)
    heads = config.num_layers * config.num_heads
    label = model_label(model_name, args.yarn_factor)
    context = ""
    if args.yarn_factor is not None:
        context = f", YaRN x{args.yarn_factor:g}: context {config.max_position_embeddings} tokens"
    print(
        f"model: {label} ({config.model_type}, {config.num_layers} layers,"
        f" {config.num_heads}/{config.num_kv_heads} heads, {dtype_name}{context}) on"
        f" {jax.devices()[0].device_kind}"
    )
    print(f"prompt: {question.description}: {len(question.token_ids)} tokens")
    if "shareprefill" in args.method:
        print(f"sharing table: {table_line}")
    print(dense_line)
    print(
        f"head counts below are (layer, head) pairs, {config.num_layers} x {config.num_heads} ="
        f" {heads}; density is the share of causal blocks computed, averaged over layers",
        flush=True,
    )
    records = []
    for method in args.method:
        print(f"prefilling with {method} ...", flush=True)
        record = run_method(method, args, planner, table, loaded, question)
        records.append(record | {"model": label, "prompt_tokens": len(question.token_ids)})
    print_report(records, question, {"tau_fb": planner.tau_fb, "tau_sim": planner.tau_sim})
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "question": question.description,
            "expected": question.expected,
            "table": table_line,
        }
        out = args.out_dir / "prefill.json"
        out.write_text(json.dumps({"run": meta, "records": records}, indent=1) + "\n")
        print(f"\nwrote {out}")
    return records


def console() -> int:
    """The console script: the main job, exit status 0."""
    main(sys.argv[1:])
    return 0
