"""`echocxr phantoms`: render a CXR-Phantom benchmark set (PNG images + manifests per split/language)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from echocxr.errors import UserError


def _views(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _splits(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (images/ and <split>_<lang>[_raw].json)")
    parser.add_argument("--n", type=int, default=2000, help="number of studies (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, byte-identical files")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--views", type=_views, default=("frontal",),
                        help="frontal or frontal,lateral (default frontal)")
    parser.add_argument("--splits", type=_splits, default=(0.8, 0.1, 0.1),
                        help="train,val,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--workers", type=int, help="rendering processes (default: one per CPU, at most 16)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from echocxr.data.phantom.generate import write_phantom_set

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    start = time.perf_counter()
    summary = write_phantom_set(args.out, n=args.n, seed=args.seed, image_size=args.image_size,
                                views=args.views, splits=args.splits, progress=not args.quiet,
                                workers=args.workers)
    seconds = time.perf_counter() - start
    sizes = summary["split_sizes"]
    print(json.dumps({"out": str(args.out), "n": args.n, "split_sizes": sizes,
                      "normal_fraction": summary["normal_fraction"], "seconds": round(seconds, 1)}),
          file=sys.stdout)
    return 0
