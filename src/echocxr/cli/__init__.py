"""`echocxr <verb>`: each verb lives in its own module with `add_arguments(parser)` and `run(args) -> int`.

Verb modules are imported when the parser is built, so they must import heavy libraries (torch,
transformers) inside `run`, not at module level.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from echocxr.errors import UserError

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("echocxr.cli.demo", "generate a report with the built-in default model (the README's first command)"),
    "report": ("echocxr.cli.report", "write reports for chest X-ray images with a model directory"),
    "phantoms": ("echocxr.cli.phantoms", "render a CXR-Phantom benchmark set (images + manifests)"),
    "tokenizer": ("echocxr.cli.tokenizer", "train the project BPE tokenizer"),
    "data": ("echocxr.cli.data", "convert a real dataset (MIMIC-CXR, CheXpert-Plus, ...) to a manifest"),
    "eval": ("echocxr.cli.eval", "evaluate reports: text metrics, clinical F1, speed"),
    "train": ("echocxr.cli.train", "train a stage: ar, rad, dcd or a baseline"),
    "serve": ("echocxr.cli.serve", "serve reports over HTTP"),
    "bench": ("echocxr.cli.bench", "speed benchmarks"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="echocxr", description="Fast chest X-ray report generation.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # verb not built yet
            raise
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"echocxr {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echocxr {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, never a traceback
        if os.environ.get("ECHOCXR_DEBUG"):
            raise
        print(f"echocxr {args.verb}: internal error: {type(exc).__name__}: {exc} "
              "(set ECHOCXR_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
