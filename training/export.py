"""Export an adapter as a sentence-transformers model.

    python training/export.py ...    (or the console script `era-export`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
