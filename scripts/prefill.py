"""The main job from a checkout: `python scripts/prefill.py [options]` is `sharedsparse-prefill`.

The command line lives in `sharedsparse_cli.prefill` (installed with the project); each method
runs through the library call `models.prefill_and_answer` (docs/usage.md, "From Python").
"""

from sharedsparse_cli.prefill import console

if __name__ == "__main__":
    raise SystemExit(console())
