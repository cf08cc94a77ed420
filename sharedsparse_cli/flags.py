"""The options the console scripts share: one name, one meaning and one check for each."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

import jax

from models.convert import STORED_DTYPES
from models.fetch import BUILTIN_MODELS, DEFAULT_MODEL
from models.sources import source_problem
from pallas_kernels.block_sparse_attention import IMPLEMENTATIONS

CHECKPOINT_HELP = (
    f"a built-in model ({', '.join(BUILTIN_MODELS)}), a converted checkpoint directory, an HF"
    " safetensors directory or a .gguf file (the last two are converted once into the cache)"
)
COMPUTE_DTYPES = ("auto", *STORED_DTYPES)


def new_parser(command: str, doc: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of `sharedsparse-<command>`, its module's docstring as the description."""
    return argparse.ArgumentParser(
        prog=f"sharedsparse-{command}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def fail(parser: argparse.ArgumentParser, problem: str) -> NoReturn:
    """Ends the run with one line on stderr and exit code 2, as argparse does."""
    parser.exit(2, f"{parser.prog}: error: {problem}\n")


def add_checkpoint(
    parser: argparse.ArgumentParser, *, many: bool = False, default: str | None = DEFAULT_MODEL
) -> None:
    """`--checkpoint SOURCE` (`many`: one or more sources)."""
    if many:
        parser.add_argument(
            "--checkpoint",
            nargs="+",
            default=None if default is None else [default],
            metavar="SOURCE",
            help=f"one or more models: each {CHECKPOINT_HELP} (default: %(default)s)",
        )
    else:
        parser.add_argument(
            "--checkpoint",
            default=default,
            metavar="SOURCE",
            help=f"the model: {CHECKPOINT_HELP} (default: %(default)s)",
        )


def checkpoint_problem(sources: str | list[str], *, needs_tokenizer: bool = True) -> str | None:
    """The first --checkpoint value that cannot be used, as one line (None: all can)."""
    for source in [sources] if isinstance(sources, str) else sources:
        problem = source_problem(source, needs_tokenizer=needs_tokenizer)
        if problem is not None:
            return f"--checkpoint {problem}"
    return None


def add_method(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    choices: tuple[str, ...],
    default: list[str],
    what: str = "",
) -> None:
    """`--method M [M ...]`: the attention methods to run, in order (check with method_problem)."""
    parser.add_argument(
        "--method",
        nargs="+",
        default=default,
        metavar="METHOD",
        help=f"attention methods to run, in order: {', '.join(choices)} (default:"
        f" {' '.join(default)}){what}",
    )


def method_problem(methods: list[str], choices: tuple[str, ...]) -> str | None:
    """The first --method value that is not a known method, as one line (None: all are)."""
    for method in methods:
        if method not in choices:
            return f"--method {method}: unknown method; known: {', '.join(choices)}"
    return None


def add_out_dir(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    """`--out-dir DIR`: where the command writes its files (created)."""
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=required,
        metavar="DIR",
        help=f"directory for {what} (created; nothing is written elsewhere"
        + (")" if required else "; default: write nothing)"),
    )


def out_dir_problem(path: Path | None) -> str | None:
    """What is wrong with an --out-dir value (None: nothing)."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        return f"--out-dir {path} is a file; give a directory"
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"--out-dir {path}: {existing} is a file, not a directory"
    return None


def add_dtype(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--dtype`: the parameter and activation dtype of a run."""
    parser.add_argument(
        "--dtype",
        choices=COMPUTE_DTYPES,
        default="auto",
        help="parameter and activation dtype; auto: float32 on CPU, bfloat16 on GPU and TPU"
        " (default: %(default)s)",
    )


def compute_dtype(name: str) -> str:
    """The --dtype value with `auto` decided for this machine's backend."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def add_table(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--table`: the sharing table of shareprefill."""
    parser.add_argument(
        "--table",
        default="builtin",
        help="sharing table for shareprefill: builtin (the table shipped for a built-in model,"
        " none for others), none, or a table JSON file (default: %(default)s)",
    )


def table_problem(table: str) -> str | None:
    """What is wrong with a --table value, read without loading a model (None: nothing)."""
    if table.lower() in ("none", "builtin"):
        return None
    path = Path(table)
    if not path.is_file():
        return f"--table {table}: no such file (or pass builtin, none)"

    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"--table {table} is not a JSON file ({error})"
    return None


def add_yarn_factor(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--yarn-factor FACTOR`: extend the models' context with YaRN (check with
    yarn_factor_problem)."""
    parser.add_argument(
        "--yarn-factor",
        type=float,
        metavar="FACTOR",
        help="extend each model's context FACTOR times with YaRN (4 takes Qwen2.5-Coder from"
        " 32K to 128K tokens; experimental, docs/models.md); default: the trained context",
    )


def yarn_factor_problem(factor: float | None) -> str | None:
    """What is wrong with a --yarn-factor value (None: nothing)."""
    if factor is not None and not factor > 1:
        return f"--yarn-factor must be above 1, got {factor:g}"
    return None


def add_kernels(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--implementation` and `--interpret`: which block-sparse kernels run."""
    parser.add_argument(
        "--implementation",
        help="block-sparse kernel implementation(s), comma-separated fall-through order"
        f" ({', '.join(IMPLEMENTATIONS)}; default: the best for the backend)",
    )
    parser.add_argument(
        "--interpret", action="store_true", help="run Pallas kernels in interpret mode"
    )


def implementation_problem(value: str | None) -> str | None:
    """What is wrong with an --implementation value (None: nothing)."""
    if value is None:
        return None
    unknown = [name for name in value.split(",") if name not in IMPLEMENTATIONS]
    if unknown:
        return f"--implementation: unknown {unknown}; known: {', '.join(IMPLEMENTATIONS)}"
    return None


def implementation(value: str | None) -> str | list[str] | None:
    """The --implementation value as `block_sparse_attention` takes it."""
    if value is None:
        return None
    names = value.split(",")
    return names[0] if len(names) == 1 else names
