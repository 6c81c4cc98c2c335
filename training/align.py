"""Stage 1: align the query encoder to the doc encoder's space on unlabeled texts.

    accelerate launch training/align.py ...    (or the console script `era-align`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import align_main

if __name__ == "__main__":
    sys.exit(align_main())
