"""Distillation (no labels): train the adapter to rank like the strong encoder, on unlabeled queries.

    accelerate launch training/distill.py ...    (or the console script `era-distill`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import distill_main

if __name__ == "__main__":
    sys.exit(distill_main())
