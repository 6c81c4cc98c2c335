"""Check a data folder before training: counts, roles, the split the stages will use, and problems.

    python training/validate_data.py DIR [--tasks ...]    (or the console script `era-validate`)
"""
import sys

from era_adapters.cli import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
