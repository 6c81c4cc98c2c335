"""Embed tasks' documents and queries into the ERA embedding cache (resumable, distributed).

    accelerate launch training/embed.py ...    (or the console script `era-embed`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import embed_main

if __name__ == "__main__":
    sys.exit(embed_main())
