"""Score adapters and the zero-shot baselines on the same test queries.

    python training/evaluate.py ...    (or the console script `era-evaluate`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
