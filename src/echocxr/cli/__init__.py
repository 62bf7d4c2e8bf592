"""`echocxr <verb>`: each verb lives in its own module with `add_arguments(parser)` and `run(args) -> int`.

Verb modules are imported when the parser is built, so they must import heavy libraries (torch,
transformers) inside `run`, not at module level.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys

from echocxr import __version__
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
    "dicom-listen": ("echocxr.cli.dicom_listen", "a DICOM node: receive chest radiographs, send back SR reports"),
    "bench": ("echocxr.cli.bench", "speed benchmarks"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), not the whole usage block, and a
    mistyped choice gets the closest valid one suggested."""

    def error(self, message: str):
        m = _INVALID_CHOICE.search(message)
        if m:
            hint = _closest(m.group("bad"), re.findall(r"'([^']*)'", m.group("choices")))
            message += f"; did you mean {hint!r}?" if hint else ""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<bad>[^']*)' \(choose from (?P<choices>.*)\)")


def _closest(word: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every long option of a verb, its sub-commands' too (bench decode, data convert)."""
    out = []
    for action in parser._actions:
        out += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _option_strings(sub)
    return out


def unknown_arguments_error(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    """argparse's 'unrecognized arguments', naming the first unknown flag and the closest real one."""
    flags = [x for x in extra if x.startswith("-")]
    if not flags:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    bad = flags[0].split("=", 1)[0]
    hint = _closest(bad, _option_strings(parser))
    more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
    parser.error(f"unrecognized argument {bad}{more}" + (f"; did you mean {hint}?" if hint else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="echocxr", description="Fast chest X-ray report generation.")
    parser.add_argument("--version", action="version", version=f"echocxr {__version__}")
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
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # what parse_args would refuse, with the verb's own flags to suggest from
        unknown_arguments_error(getattr(args, "_parser", parser), extra)
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
