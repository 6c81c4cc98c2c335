"""Stage 2: train the adapter further on a few labeled (query, document) pairs.

    accelerate launch training/adapt.py ...    (or the console script `era-adapt`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import adapt_main

if __name__ == "__main__":
    sys.exit(adapt_main())
