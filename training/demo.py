"""The main job: ERA end to end on an embedded default (real models, real data, no network).

    python training/demo.py ...    (or the console script `era-demo`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
