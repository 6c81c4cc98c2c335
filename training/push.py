"""Upload a saved adapter folder to the Hugging Face Hub.

    python training/push.py ...    (or the console script `era-push`; `--help` lists the settings)
"""
import sys

from era_adapters.cli import push_main

if __name__ == "__main__":
    sys.exit(push_main())
