"""`echocxr train <stage>`: AR SFT, RAD, DCD and the paper's baseline distillations."""

from __future__ import annotations

import argparse
from pathlib import Path

from echocxr.backbones.settings import TIE_BREAKS
from echocxr.training.config import RECIPES, STAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="vision (label pretraining of the tower) | ar | rad | dcd | dparallel | cd4lm | d3llm | t3d")
    p.add_argument("--config", default="phantom-tiny",
                   help=f"a named recipe ({', '.join(RECIPES)}) or a YAML file (default: phantom-tiny)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, final/); one that holds "
                   "a run is refused unless --resume or --overwrite")
    p.add_argument("--from", dest="from_dir", help="start model: a model dir or a finished run dir (its final/); AR "
                   "for rad; Base (also the teacher) for dcd/baselines")
    p.add_argument("--data", help="directory with <split>_<lang>.json manifests (default: the recipe renders "
                   "CXR-Phantom data once into the cache, $ECHOCXR_CACHE_DIR or ~/.cache/echocxr/phantoms/)")
    p.add_argument("--lang", default="en", help="languages to train on, comma-separated (en,zh)")
    p.add_argument("--block-length", type=int, help="block length L (default: the config's)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--layout", choices=["rad", "full"], help="RAD layout or full-sequence duplication (prior work)")
    p.add_argument("--no-sw", action="store_true", help="DCD ablation: no step-wise weighting")
    p.add_argument("--eos-ce", type=float, help="DCD: weight of the extra <eos> CE (0 = off)")
    p.add_argument("--rkl", action="store_true", help="DCD ablation: reverse KL")
    p.add_argument("--trajectory-remasking", choices=["low_confidence_dynamic", "sequential"],
                   help="DCD/baselines: the teacher's commit order within a block (default: the config's)")
    p.add_argument("--max-examples", type=int,
                   help="train on the first N studies per language only (0: all; default: the config's)")
    p.add_argument("--trajectory-tie-ratio", type=float,
                   help="DCD/baselines: the teacher's greedy tie-break (0: plain argmax, the paper; r: of the tokens "
                        "at least r times as likely as the top one, the lowest id)")
    p.add_argument("--trajectory-tie-ratio-for", action="append", metavar="LANG=R",
                   help="DCD/baselines: a tie ratio for one language's trajectories, replacing --trajectory-tie-ratio "
                        "there (repeatable, e.g. en=0.3)")
    p.add_argument("--trajectory-batch-size", type=int,
                   help="DCD/baselines: studies the teacher decodes together (default 128; speed only)")
    p.add_argument("--trajectory-tie-break", choices=list(TIE_BREAKS),
                   help="DCD/baselines: which near-top token a teacher tie goes to: lowest_id, one_step (the one "
                        "the block's all-masked first forward ranks highest) or image (lowest_id among the tokens the "
                        "image does not tell apart; the teacher decodes twice); default: the config's")
    p.add_argument("--trajectory-tie-break-for", action="append", metavar="LANG=RULE",
                   help="DCD/baselines: a tie-break for one language's trajectories, replacing --trajectory-tie-break "
                        "there (repeatable, e.g. en=image)")
    p.add_argument("--trajectory-tie-margin", type=float, metavar="NATS",
                   help="DCD/baselines: the image tie-break's margin (default: the config's, 2.0)")
    p.add_argument("--grow-layers", type=int,
                   help="DCD/baselines: append N identity decoder layers to the student before it trains (a deeper "
                        "one-step student than its teacher; default: the config's, 0)")
    p.add_argument("--dcd-target", choices=["soft", "hard"],
                   help="DCD: the teacher's distribution (soft, the paper) or its committed token (hard)")
    p.add_argument("--t3d-form", choices=["ddo", "dpo"],
                   help="T3D: ddo (its code, the default) or dpo (per-block DPO, as the ECHO paper describes it)")
    p.add_argument("--label-weight", type=float,
                   help="AR, DCD: weight of the finding-label BCE on the language model's states (DCD: at the masked slots; 0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int, help="optimizer steps between checkpoints (0: the final one only; "
                   "default: the config's)")
    p.add_argument("--keep-checkpoints", type=int,
                   help="checkpoints kept in --out, the newest (0: every one, e.g. to evaluate each later; "
                        "default 2); each checkpoint directory is a loadable model directory")
    p.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the processes (torchrun/accelerate launch)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out (checkpoints, final/, logs) and start again")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from echocxr.errors import UserError
    from echocxr.training.config import load_config
    from echocxr.training.stages import StageRequest, run_stage

    if args.no_progress:  # transformers' own bars too (loading / writing weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    langs = tuple(x.strip() for x in args.lang.split(",") if x.strip())
    if not langs or any(x not in ("en", "zh") for x in langs):
        raise UserError(f"--lang must list en and/or zh, got {args.lang!r}")
    from echocxr.training.run_dir import resolve_model_dir

    from_dir = resolve_model_dir(Path(args.from_dir)) if args.from_dir else None
    cfg = load_config(args.stage, args.config, block_length=args.block_length, max_steps=args.max_steps,
                      lr=args.lr, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                      layout=args.layout, sw=False if args.no_sw else None, eos_ce=args.eos_ce,
                      rkl=True if args.rkl else None, seed=args.seed, label_weight=args.label_weight,
                      fsdp=True if args.fsdp else None, trajectory_remasking=args.trajectory_remasking,
                      dcd_target=args.dcd_target, trajectory_tie_ratio=args.trajectory_tie_ratio,
                      trajectory_tie_break=args.trajectory_tie_break,
                      trajectory_tie_break_by_language=_breaks_by_language(args.trajectory_tie_break_for),
                      trajectory_tie_margin=args.trajectory_tie_margin,
                      trajectory_batch_size=args.trajectory_batch_size,
                      trajectory_tie_ratio_by_language=_ratios_by_language(args.trajectory_tie_ratio_for),
                      max_examples=args.max_examples, t3d_form=args.t3d_form, grow_layers=args.grow_layers,
                      save_every=args.save_every, keep_checkpoints=args.keep_checkpoints)
    summary = run_stage(StageRequest(stage=args.stage, cfg=cfg, out=Path(args.out),
                                     from_dir=from_dir,
                                     data_dir=Path(args.data) if args.data else None, languages=langs,
                                     resume=args.resume, overwrite=args.overwrite,
                                     progress=not args.no_progress))
    last = summary.get("last", {})
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary.get("already_finished"):
        import sys

        print(f"echocxr train: {args.out} is a finished {args.stage} run ({summary.get('steps_done')} steps): "
              "nothing to resume (--overwrite to train it again, or a larger --max-steps to continue)",
              file=sys.stderr)
    print(json.dumps({"stage": args.stage, "final_model": summary["final_model"], "loss": last.get("loss"),
                      "eval_loss": last.get("eval_loss"), "steps": last.get("step"), "data": summary.get("data")}))
    return 0


def _ratios_by_language(items: list[str] | None) -> dict[str, float] | None:
    """['en=0.3', ...] -> {'en': 0.3}; None when the flag was not given (the config's setting stays)."""
    from echocxr.errors import UserError

    if not items:
        return None
    out = {}
    for item in items:
        lang, sep, value = item.partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = None
        if not sep or not lang.strip() or ratio is None:
            raise UserError(f"--trajectory-tie-ratio-for takes LANG=R (e.g. en=0.3), got {item!r}")
        out[lang.strip()] = ratio
    return out


def _breaks_by_language(items: list[str] | None) -> dict[str, str] | None:
    """['en=image', ...] -> {'en': 'image'}; None when the flag was not given. The rule names are checked with
    the config (TrainConfig.validate)."""
    from echocxr.errors import UserError

    if not items:
        return None
    out = {}
    for item in items:
        lang, sep, rule = item.partition("=")
        if not sep or not lang.strip() or not rule.strip():
            raise UserError(f"--trajectory-tie-break-for takes LANG=RULE (e.g. en=image), got {item!r}")
        out[lang.strip()] = rule.strip()
    return out
