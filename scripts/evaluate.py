"""Evaluation from a checkout: `python scripts/evaluate.py [options]` is `sharedsparse-evaluate`
(the command line lives in `sharedsparse_cli.evaluate`)."""

from sharedsparse_cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
