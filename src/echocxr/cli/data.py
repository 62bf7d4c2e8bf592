"""`echocxr data convert`: a real dataset's published layout -> an echocxr manifest."""

from __future__ import annotations

import argparse

LOADERS = ("mimic-cxr-jpg", "chexpert-plus", "rexgradient", "iu-xray", "echo-json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("convert", help="read a dataset in its published layout and write a manifest")
    c.add_argument("name", help=f"dataset: {', '.join(LOADERS)}")
    c.add_argument("root", help="the dataset's root directory")
    c.add_argument("--out", required=True, metavar="FILE.json", help="manifest to write (image paths relative to it)")
    c.add_argument("--split", help="train | val | test (default: every split)")
    c.add_argument("--lang", choices=["en", "zh"], help="keep only this language (default: the dataset's own)")
    c.add_argument("--image-check", default="open", choices=["none", "exists", "open", "decode"],
                   help="how hard to check images before keeping a study (default: open)")
    c.add_argument("--limit", type=int, help="stop after this many studies")
    c.add_argument("--dedup", type=float, metavar="COSINE", help="drop near-duplicate reports above this cosine")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, e.g. reports=/data/mimic-cxr-reports.zip (repeatable)")


def run(args: argparse.Namespace) -> int:
    import warnings

    from echocxr.data.loaders import convert_dataset
    from echocxr.errors import UserError

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option takes KEY=VALUE, got {item!r}")
        options[key.strip()] = value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            samples = convert_dataset(args.name, args.root, args.out, split=args.split, language=args.lang,
                                      image_check=args.image_check, limit=args.limit, dedup_threshold=args.dedup,
                                      **options)
        except TypeError as exc:  # an option the loader does not take
            raise UserError(f"bad option for {args.name}: {exc}") from None
    for w in caught:
        print(f"echocxr data: warning: {w.message}")
    print(f"wrote {len(samples)} studies to {args.out}")
    return 0
