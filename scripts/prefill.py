"""Answer a long-context question with dense and SharePrefill prefill: the project's main job.

    python scripts/prefill.py            # built-in question on SmolLM2-135M-Instruct

With no arguments: fetch SmolLM2-135M-Instruct into the cache and convert it (both once), build
the built-in question (a five-digit pass key hidden near the end of a haystack of about 3,500
tokens), prefill it with dense attention and with SharePrefill, decode greedily, and print both
answers (and whether each is right), prefill times, block density and how many heads of each
kind the planner chose. Bring your own prompt, checkpoint and sharing table:

    python scripts/prefill.py --prompt-file question.txt --answer "Paris" \
        --checkpoint qwen2.5-coder-0.5b-instruct --method dense shareprefill flexprefill \
        --table my_table.json --gamma 0.9 --min-budget 512

`--checkpoint` takes a built-in name, a converted checkpoint directory, an HF safetensors
directory or a GGUF file (the last two are converted into the cache once). docs/usage.md
describes every option. Every option is checked before anything is loaded; a bad one ends the
run with one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prefill_latency import compile_clock  # noqa: E402
from evaluation.tasks.passkey import PasskeyTask, generate_passkey  # noqa: E402
from evaluation.tasks.sample import PROMPT_FORMATS  # noqa: E402
from models import (  # noqa: E402
    BUILTIN_MODELS,
    DenseAttention,
    LoadedCheckpoint,
    SamplingConfig,
    cache_dir,
    decode,
    load_builtin,
    load_checkpoint,
    prefill,
)
from models.checkpoint import checkpoint_problem  # noqa: E402
from models.config import ModelConfig, read_config_json  # noqa: E402
from models.convert import CONVERTER_VERSION  # noqa: E402
from models.convert.gguf import hf_config_from_gguf, open_gguf  # noqa: E402
from models.fetch import DEFAULT_MODEL, cached_conversion  # noqa: E402
from pallas_kernels.block_sparse_attention import IMPLEMENTATIONS  # noqa: E402
from sharedsparse_jax import tables  # noqa: E402
from sharedsparse_jax.attention import SharePrefillAttention  # noqa: E402
from sharedsparse_jax.config import METHODS, SharePrefillConfig  # noqa: E402
from sharedsparse_jax.sharing import SharingTable  # noqa: E402
from sharedsparse_jax.stats import describe_sharing, summarize_stats  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")
BUILTIN_CONTEXT_TOKENS = 3500
# The pass key sits 95% of the way into the haystack: SmolLM2-135M finds a pass key at ~1K
# tokens but not in the middle of 3K+ tokens (docs/usage.md); near the end, dense attention
# finds it at 3.5K, which keeps the question answerable while its context stays long.
BUILTIN_NEEDLE_DEPTH = 0.95
BUILTIN_SAMPLE_INDEX = 0


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
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    source = parser.add_argument_group("model and prompt")
    source.add_argument(
        "--checkpoint",
        default=DEFAULT_MODEL,
        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), a converted checkpoint directory,\n"
        "an HF safetensors directory or a .gguf file (default: %(default)s)",
    )
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
    source.add_argument(
        "--dtype",
        choices=DTYPES,
        help="parameter and activation dtype (default: float32 on CPU, bfloat16 otherwise)",
    )

    methods = parser.add_argument_group("attention")
    methods.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        default=["dense", "shareprefill"],
        help="prefill methods to run, in order (default: dense shareprefill); `dense` runs the\n"
        "model's dense attention (cuDNN / XLA), the others the planner + block-sparse kernels",
    )
    methods.add_argument(
        "--table",
        help="sharing table JSON for shareprefill, or `none` (default: the table shipped for a\n"
        "built-in model, if there is one)",
    )
    methods.add_argument(
        "--implementation",
        help="block-sparse kernel implementation(s), comma-separated fall-through order\n"
        "(reference, xla, triton, mosaic_gpu, mosaic_tpu; default: the best for the backend)",
    )
    methods.add_argument(
        "--interpret", action="store_true", help="run Pallas kernels in interpret mode"
    )
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
        " device by benchmarks.crossover and stored in the sharing table, else"
        f" {defaults.dense_below})",
    )
    knobs.add_argument(
        "--reference-quirks",
        action="store_true",
        help="reproduce the reference implementation's quirks exactly",
    )

    run = parser.add_argument_group("generation and timing")
    run.add_argument(
        "--max-new-tokens", type=int, default=16, help="tokens to generate (default: %(default)s)"
    )
    run.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed prefills after the first call, whose median is reported (default: 0: the\n"
        "first call only, from which compile time is subtracted)",
    )
    run.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, checked without loading anything (None: nothing).

    Reads the prompt file into `args.prompt_text` and builds the planner config into
    `args.planner`.
    """
    problem = _checkpoint_problem(args.checkpoint)
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
    if args.json is not None:
        if args.json.is_dir():
            return f"--json {args.json} is a directory; give the path of a file to write"
        existing = next((p for p in args.json.absolute().parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            return f"--json {args.json}: {existing} is a file, not a directory"
    if args.table is not None and args.table.lower() not in ("none", "builtin"):
        if "shareprefill" not in args.method:
            return "--table is a sharing table for --method shareprefill, which is not run"
        table = Path(args.table)
        if not table.is_file():
            return f"--table {args.table}: no such file (or pass none)"
        try:
            json.loads(table.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"--table {args.table} is not a JSON file ({error})"
    if args.implementation is not None:
        unknown = [n for n in args.implementation.split(",") if n not in IMPLEMENTATIONS]
        if unknown:
            return f"--implementation: unknown {unknown}; known: {', '.join(IMPLEMENTATIONS)}"
    try:
        args.planner = planner_config(args)
    except ValueError as error:
        return f"invalid planner settings: {error}"
    return None


def _checkpoint_problem(source: str) -> str | None:
    """What is wrong with a --checkpoint value, without loading it (None: nothing)."""
    if source in BUILTIN_MODELS:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return (
            f"--checkpoint {source}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no"
            " such file or directory"
        )
    try:
        if path.is_dir():
            if (path / "params").is_dir():
                problem = checkpoint_problem(path)
                if problem is not None:
                    return f"--checkpoint {source}: {problem}"
            elif not (path / "config.json").is_file():
                return f"--checkpoint {source}: neither params/ nor config.json in it"
            else:
                read_config_json(path / "config.json")
            if not (path / "tokenizer.json").is_file():
                return (
                    f"--checkpoint {source}: no tokenizer.json in it, so no prompt can be encoded"
                )
            return None
        # The GGUF's metadata (not its tensors) is read here, so that a damaged file is named now.
        ModelConfig.from_hf(
            hf_config_from_gguf(open_gguf(path), source=str(path)), source="its GGUF metadata"
        )
    except (OSError, ValueError) as error:
        # Errors about the file name it already; the option is named for the rest.
        named = str(error).startswith(str(path))
        return f"--checkpoint: {error}" if named else f"--checkpoint {source}: {error}"
    return None


def resolve_checkpoint(source: str, dtype: jnp.dtype) -> tuple[LoadedCheckpoint, str]:
    """Loads a built-in model, a converted checkpoint, or converts an HF / GGUF source once.

    Args:
      source: the --checkpoint value.
      dtype: parameter dtype after loading.

    Returns:
      The loaded checkpoint and the model's name (a built-in name, else the source's name).
    """
    if source in BUILTIN_MODELS:
        return load_builtin(source, dtype=dtype), source
    path = Path(source).expanduser()
    if (path / "params").is_dir():
        # A built-in model's converted directory (<name>-<dtype>-v<n>) keeps its shipped table.
        name = next((b for b in BUILTIN_MODELS if path.name.startswith(f"{b}-")), path.name)
        return load_checkpoint(path, dtype=dtype), name
    if not path.exists():
        raise SystemExit(
            f"--checkpoint {source}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no"
            " such file or directory"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise SystemExit(f"--checkpoint {source}: neither params/ nor config.json in it")
    converted = cache_dir() / "checkpoints" / f"{path.stem}-{_source_digest(path)}"
    converted = converted.with_name(f"{converted.name}-float32-v{CONVERTER_VERSION}")
    if checkpoint_problem(converted) is not None:
        print(f"converting {path} into {converted} (once)", flush=True)
    try:
        cached_conversion(path, converted, dtype="float32")
    except (OSError, ValueError) as error:
        raise SystemExit(f"--checkpoint {source}: cannot be converted: {error}") from error
    return load_checkpoint(converted, dtype=dtype), path.stem


def _source_digest(path: Path) -> str:
    """A short digest of a source's absolute path, sizes and modification times."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(str(path.absolute()).encode())
    for file in files:
        info = file.stat()
        digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


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
    return table, f"{where}: {len(table.cluster_ids)} clusters, {table.num_shared} shared"


def measured_dense_below(
    args: argparse.Namespace, planner: SharePrefillConfig, table: SharingTable | None
) -> tuple[SharePrefillConfig, str]:
    """The planner with the crossover measured on this device (unless --dense-below is given),
    and a line saying where its dense_below came from."""
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
    return planner, (
        f"dense below {planner.dense_below} tokens: the crossover measured on {device_kind}"
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


def make_attention(
    method: str, args: argparse.Namespace, config: SharePrefillConfig, table: SharingTable | None
):
    """The model's DenseAttention for `dense`, else SharePrefillAttention with the knobs."""
    if method == "dense":
        return DenseAttention(implementation=args.dense_implementation)
    implementation = args.implementation.split(",") if args.implementation else None
    if implementation is not None and len(implementation) == 1:
        implementation = implementation[0]
    return SharePrefillAttention(
        dataclasses.replace(config, method=method),
        table if method == "shareprefill" else None,
        implementation=implementation,
        interpret=args.interpret,
    )


def run_method(method, attention, loaded, question, args, sampling) -> dict:
    """Prefills, times and decodes one method; returns its record."""
    with compile_clock() as compiled:
        start = time.perf_counter()
        result = prefill(loaded.model, [question.token_ids], attention=attention)
        jax.block_until_ready((result.logits, result.cache))
        first_s = time.perf_counter() - start
    compile_s = sum(compiled)
    run_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(prefill(loaded.model, [question.token_ids], attention=attention))
        run_s.append(time.perf_counter() - start)
    prefill_s = float(np.median(run_s)) if run_s else max(first_s - compile_s, 0.0)
    start = time.perf_counter()
    decoded = decode(loaded.model, result, sampling=sampling)
    count = int(decoded.num_tokens[0])
    new_tokens = np.asarray(decoded.tokens[0, :count]).tolist()
    decode_s = time.perf_counter() - start
    answer = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    record = {
        "method": method,
        "prefill_s": prefill_s,
        "prefill_timed_from": (
            f"median of {len(run_s)} calls after the first" if run_s else "first call minus compile"
        ),
        "first_call_s": first_s,
        "compile_s": compile_s,
        "decode_s": decode_s,
        "new_tokens": len(new_tokens),
        "answer": answer,
        "correct": None if question.expected is None else question.expected in answer,
    }
    if method != "dense":
        record |= summarize_stats(result.stats)
    return record


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
    on_cpu = jax.default_backend() == "cpu"
    dtype_name = args.dtype or ("float32" if on_cpu else "bfloat16")
    loaded, model_name = resolve_checkpoint(args.checkpoint, jnp.dtype(dtype_name))
    config = loaded.config
    question = build_question(args, loaded)
    if len(question.token_ids) + args.max_new_tokens > config.max_position_embeddings:
        raise SystemExit(
            f"the prompt ({len(question.token_ids)} tokens) plus --max-new-tokens"
            f" {args.max_new_tokens} exceeds the model's context of"
            f" {config.max_position_embeddings} tokens"
        )
    try:
        table, table_line = resolve_table(
            args.table, model_name, config.num_layers, config.num_heads
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"--table {args.table}: {error}") from error
    eos = loaded.tokenizer.eos_token_id
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, stop_tokens=() if eos is None else (eos,)
    )
    planner, dense_line = measured_dense_below(args, planner, table)
    heads = config.num_layers * config.num_heads
    print(
        f"model: {model_name} ({config.model_type}, {config.num_layers} layers,"
        f" {config.num_heads}/{config.num_kv_heads} heads, {dtype_name}) on"
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
        attention = make_attention(method, args, planner, table)
        record = run_method(method, attention, loaded, question, args, sampling)
        records.append(record | {"model": model_name, "prompt_tokens": len(question.token_ids)})
    print_report(records, question, {"tau_fb": planner.tau_fb, "tau_sim": planner.tau_sim})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "question": question.description,
            "expected": question.expected,
            "table": table_line,
        }
        args.json.write_text(json.dumps({"run": meta, "records": records}, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
