"""`echocxr tokenizer`: train the project BPE tokenizer on CXR-Phantom (+ IU X-ray) reports."""

from __future__ import annotations

import argparse
import json

from echocxr.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from echocxr.data.project_tokenizer import DEFAULT_PHANTOM_REPORTS, DEFAULT_VOCAB_SIZE

    parser.add_argument("--out", required=True, help="directory to save the tokenizer (Hugging Face format)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help=f"BPE vocabulary size (default {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--phantom-reports", type=int, default=DEFAULT_PHANTOM_REPORTS,
                        help=f"phantom studies to draw training reports from (default {DEFAULT_PHANTOM_REPORTS})")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed for the training reports")
    parser.add_argument("--no-iu", action="store_true", help="do not add the IU X-ray report texts")


def run(args: argparse.Namespace) -> int:
    from echocxr.data.iu_reports import iu_reports_path
    from echocxr.data.project_tokenizer import build_project_tokenizer

    if args.vocab_size < 300:
        raise UserError(f"--vocab-size must be at least 300 (256 bytes + special tokens), got {args.vocab_size}")
    if args.phantom_reports < 1:
        raise UserError(f"--phantom-reports must be at least 1, got {args.phantom_reports}")
    use_iu = not args.no_iu and iu_reports_path() is not None
    tok = build_project_tokenizer(args.out, n_phantom_reports=args.phantom_reports, seed=args.seed,
                                  vocab_size=args.vocab_size, use_iu=use_iu)
    print(json.dumps({"out": str(args.out), "vocab_size": len(tok), "mask_token_id": tok.mask_token_id,
                      "iu_reports": use_iu}))
    return 0
