"""``python -m pipelines <command>``: one thin command per pipeline stage.

Each command lives in its own module, which exposes ``add_parser(subparsers)``; that function
registers the sub-command and sets ``func`` to a callable taking the parsed namespace. Heavy
imports (torch, mmengine) stay inside those callables so that ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipelines.errors import UserError

# module path of each command family, in the order ``--help`` lists them
COMMAND_MODULES = (
    "pipelines.data.cli",
    "pipelines.stages.train",
    "pipelines.stages.evaluate",
    "pipelines.grid",
    "pipelines.tracking.ingest",
    "pipelines.reports.report",
    "pipelines.analysis.cli",
    "pipelines.stages.flops",
    "pipelines.stages.benchmark",
    "pipelines.stages.disk",
    "pipelines.eco_m2f",
    "pipelines.reports.figures",
    "pipelines.reports.html_report",
    "pipelines.search.cli",
    "pipelines.tracking.mlflow_ui",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # `--runs @FILE` reads one argument per line from FILE: the workflow passes thousands of
    # run.json paths that way (a single command-line argument is capped at 128 KiB)
    parser = _Parser(
        fromfile_prefix_chars="@",
        prog="python -m pipelines",
        description="Stages of the efficient-encoder ablation pipeline (each a thin CLI over "
        "mmengine / MMSegmentation).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every stage: a bad method declaration is said here
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
