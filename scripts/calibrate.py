"""Calibration from a checkout: `python scripts/calibrate.py [options]` is `sharedsparse-calibrate`
(the command line lives in `sharedsparse_cli.calibrate`)."""

from sharedsparse_cli.calibrate import main

if __name__ == "__main__":
    raise SystemExit(main())
