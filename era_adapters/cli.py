"""The command lines: `era-embed`, `era-align`, `era-distill`, `era-adapt`, `era-evaluate`, `era-push`, `era-export`,
`era-demo` and `era-validate` (console scripts), also run as `python training/<stage>.py` or `accelerate
launch training/<stage>.py`. Each parses its arguments and calls the library; the training stages' settings
are the dataclasses of their modules (`era_adapters.arguments`), so defaults and help live there.

A bad setting or bad input data ends the program with `error: <message>` and exit status 2; an adapter
below the index with `era-adapt --fail-below-index`, with status 1 (the adapter is saved).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from era_adapters.arguments import parse_arguments
from era_adapters.data import DataError

__all__ = ["adapt_main", "align_main", "demo_main", "distill_main", "embed_main", "evaluate_main", "export_main",
           "push_main", "validate_main"]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level if _is_main_process() else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")


def _parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _reporting_errors(run: Callable[[], Any]) -> int:
    """Run a command; input and setting errors (files and models that are missing, unreadable or corrupt
    included: OSError) become one `error:` line and exit status 2."""
    try:
        run()
    except (DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def embed_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import embed

    (args,) = parse_arguments([embed.EmbedArguments], argv, embed.__doc__)
    _configure_logging()

    def run() -> None:
        rows = embed.run_embedding(args)
        if _is_main_process():
            for row in rows:
                if "source" in row:  # stored vectors: checked, not embedded
                    print(f"{row['flag']} {row['source']} vs {row['task']} {row['what']}: {row['rows']} vectors "
                          f"({row['dim']}-d, {'unit length' if row['normalized'] else 'not normalised'}), "
                          f"{row['missing']} of {row['ids']} {row['what']} without a vector, {row['unused']} vectors "
                          f"not used; fingerprint {row['fingerprint']}")
                    continue
                print(f"{row['model']} {row['task']} {row['what']}: {row['unique']} texts, {row['cached']} cached, "
                      f"{row['encoded']} encoded ({row['shards_written']} shards, {row['corrupt_shards']} corrupt "
                      f"replaced) in {row['seconds']:.1f}s")
            print("EMBED_SUMMARY " + json.dumps(rows))

    return _reporting_errors(run)


def align_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import align

    (args,) = parse_arguments([align.AlignArguments], argv, align.__doc__)
    _configure_logging()
    return _reporting_errors(lambda: align.run_alignment(args))


def distill_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import distill
    from era_adapters.teacher import TeacherSettings

    args, settings, teacher = parse_arguments([distill.DistillArguments, distill.DistillSettings, TeacherSettings],
                                              argv, distill.__doc__)
    _configure_logging()
    return _reporting_errors(lambda: distill.run_distillation(args, settings, teacher))


def adapt_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import adapt
    from era_adapters.model_selection import BelowIndexError
    from era_adapters.teacher import TeacherSettings

    args, settings, teacher = parse_arguments([adapt.AdaptArguments, adapt.AdaptSettings, TeacherSettings], argv,
                                              adapt.__doc__)
    _configure_logging()
    try:
        return _reporting_errors(lambda: adapt.run_adaptation(args, settings, teacher=teacher))
    except BelowIndexError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def validate_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import data_check

    parser = _parser("era-validate", data_check.__doc__)
    parser.add_argument("data", help="a folder of task folders, one task folder, or MAIR task names")
    parser.add_argument("--tasks", nargs="+", help="task names to check (default: all)")
    for role in ("train", "dev", "test"):
        parser.add_argument(f"--{role}-qrels", help=f"the {role} qrels file of a BEIR task (as the stages take it)")
    parser.add_argument("--test-fraction", type=float, default=0.5, help="as the stages' --test-fraction")
    parser.add_argument("--split-seed", type=int, default=0, help="as the stages' --split-seed")
    args = parser.parse_args(argv)
    qrels = {"train": args.train_qrels, "dev": args.dev_qrels, "test": args.test_qrels}
    checks = data_check.check_data(args.data, args.tasks, qrels=qrels, test_fraction=args.test_fraction,
                                   seed=args.split_seed)
    print(data_check.format_checks(checks))
    return 0 if all(check.usable for check in checks) else 2


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import evaluate
    from era_adapters.reports import markdown_table

    (args,) = parse_arguments([evaluate.EvaluateArguments], argv, evaluate.__doc__)
    _configure_logging()

    def run() -> None:
        report = evaluate.run_evaluation(args)
        print(markdown_table(report))
        print(f"results: {Path(args.output) / 'results.json'}")

    return _reporting_errors(run)


def push_main(argv: Sequence[str] | None = None) -> int:
    from huggingface_hub import get_token

    from era_adapters import push

    parser = _parser("era-push", push.__doc__)
    parser.add_argument("folder", help="the adapter folder a training stage saved (config.json, model.safetensors, ...)")
    parser.add_argument("--repo-id", required=True, help="target repo, e.g. your-name/era-mpnet-to-minilm")
    parser.add_argument("--private", action="store_true",
                        help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--revision", help="branch to push to (created if missing); default: main")
    parser.add_argument("--token-env", metavar="VAR", help="read the token from this environment variable "
                                                           "(default: HF_TOKEN or the cached `hf auth login`)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--update-card", action="store_true",
                        help="re-render README.md for --repo-id before uploading (the folder itself is not changed)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the files, upload nothing")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    try:
        push.validate_adapter_folder(folder)
    except push.AdapterFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = push.files_to_upload(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    print(f"{folder}: a valid ERA adapter; {len(files)} files to upload: {', '.join(files)}")
    if args.repo_id not in card and not args.update_card:
        print(f"warning: the model card does not mention {args.repo_id} (its usage snippet names another repo); "
              "pass --update-card to re-render it for this repo id.", file=sys.stderr)
    if args.dry_run:
        print("dry run: nothing uploaded.")
        return 0
    token = os.environ.get(args.token_env) if args.token_env else get_token()
    if not token:
        where = f"the environment variable {args.token_env} is not set or empty" if args.token_env else \
            "no Hugging Face token found: run `hf auth login`, set HF_TOKEN, or pass --token-env VAR"
        print(f"error: {where}.", file=sys.stderr)
        return 2
    try:
        commit = push.push_adapter(folder, args.repo_id, private=True if args.private else None,
                                   revision=args.revision, token=token, commit_message=args.commit_message,
                                   update_card=args.update_card)
    except Exception as error:  # noqa: BLE001 - report any Hub failure in one line, token scrubbed
        print(f"error: upload to {args.repo_id} failed: {push.scrub(f'{type(error).__name__}: {error}', token)}",
              file=sys.stderr)
        return 1
    where = getattr(commit, "commit_url", None) or getattr(commit, "repo_url", None) or commit
    print(f"uploaded to {args.repo_id}{'@' + args.revision if args.revision else ''}: {where}")
    print(f'load it with AutoModel.from_pretrained("{args.repo_id}", trust_remote_code=True'
          f'{", revision=" + repr(args.revision) if args.revision else ""})')
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import export

    parser = _parser("era-export", export.__doc__)
    parser.add_argument("adapter", help="adapter folder or Hub id")
    parser.add_argument("output", help="folder to write the SentenceTransformer to")
    parser.add_argument("--doc-encoder", help="local copy of the doc encoder (default: the one the adapter names)")
    parser.add_argument("--query-encoder", help="local copy of the query encoder (default: the one the adapter names)")
    parser.add_argument("--cache-dir", help="ERA cache (packaged offline models)")
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        out = export.export_sentence_transformer(args.adapter, args.output, args.doc_encoder,
                                                 query_encoder_path=args.query_encoder, era_cache_dir=args.cache_dir)
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported to {out}: SentenceTransformer({str(out)!r}).encode_query(...) / .encode_document(...)")
    return 0


def demo_main(argv: Sequence[str] | None = None) -> int:
    from era_adapters import demo

    parser = _parser("era-demo", demo.__doc__)
    parser.add_argument("--data", help="MAIR/BEIR folder(s) or MAIR task names instead of the embedded default")
    parser.add_argument("--quick", action="store_true", help="reduced size (CI): 300 functions instead of 1,000")
    parser.add_argument("--cache-dir", help="ERA cache (default: $ERA_CACHE_DIR or ~/.cache/era)")
    parser.add_argument("--output", default="runs/demo", help="where the adapters and the report go")
    args = parser.parse_args(argv)
    _configure_logging(logging.WARNING)
    return _reporting_errors(lambda: demo.run(args.data, args.quick, args.cache_dir, Path(args.output)))
