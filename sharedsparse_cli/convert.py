"""Convert a model once: an HF safetensors directory or a GGUF file into a checkpoint directory.

    sharedsparse-convert --checkpoint path/to/Llama-3.1-8B-Instruct          # into the cache
    sharedsparse-convert --checkpoint model.gguf --dtype float32 --out-dir converted/

Without --out-dir the checkpoint goes into the cache, where every other command
(`--checkpoint path/to/source`) finds it again instead of converting; with --out-dir it is
written there (and the other commands take that directory as --checkpoint). The stored dtype is
the source's own by default (bfloat16 for quantized GGUF files). Conversion is strict (every
source tensor used once, every parameter filled once) and streams tensor by tensor.
"""

from __future__ import annotations

import argparse
import sys

from models.checkpoint import checkpoint_problem
from models.convert import STORED_DTYPES, convert_checkpoint, source_dtype
from models.fetch import BUILTIN_MODELS
from models.sources import conversion_target, resolve_source
from sharedsparse_cli import flags


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser("convert", __doc__)
    flags.add_checkpoint(parser, default=None)
    parser.add_argument(
        "--dtype",
        choices=("auto", *STORED_DTYPES),
        default="auto",
        help="stored parameter dtype; auto: the source's own float dtype, bfloat16 for quantized"
        " GGUF files (default: %(default)s)",
    )
    flags.add_out_dir(
        parser,
        required=False,
        what="the converted checkpoint (must not exist yet; default: the cache, where the other"
        " commands find it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        flags.fail(parser, "--checkpoint is required: the model to convert")
    problem = flags.checkpoint_problem(args.checkpoint, needs_tokenizer=False)
    if problem is None and args.out_dir is not None and args.out_dir.exists():
        problem = f"--out-dir {args.out_dir} already exists; give a new directory"
    if problem is not None:
        flags.fail(parser, problem)
    try:
        if args.out_dir is not None:
            if args.checkpoint in BUILTIN_MODELS or conversion_target(args.checkpoint) is None:
                flags.fail(parser, "--out-dir: --checkpoint is a built-in or converted model")
            dtype = source_dtype(args.checkpoint) if args.dtype == "auto" else args.dtype
            print(f"converting {args.checkpoint} ({dtype}) into {args.out_dir}", flush=True)
            directory = convert_checkpoint(args.checkpoint, args.out_dir, dtype=dtype)
        else:
            target = conversion_target(args.checkpoint, dtype=args.dtype)
            if target is not None and checkpoint_problem(target) is not None:
                print(f"converting {args.checkpoint} into {target}", flush=True)
            directory = resolve_source(args.checkpoint, dtype=args.dtype)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--checkpoint {args.checkpoint}: cannot be converted: {error}") from error
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
