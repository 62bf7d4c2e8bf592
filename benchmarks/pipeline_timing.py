"""Wall time of a recipe's AR -> RAD -> DCD pipeline, stage by stage, as a user runs it (one CLI process each).

    python benchmarks/pipeline_timing.py --recipe phantom-tiny --run runs/tiny       # -> runs/tiny/pipeline_timing.json
    python benchmarks/pipeline_timing.py --recipe phantom-tiny --run runs/tiny \
        --out benchmarks/results/phantom_tiny_pipeline.json --overwrite    # update the committed result
    python benchmarks/pipeline_timing.py --recipe phantom-small --run runs/small --budget-s 1200 \
        --out benchmarks/results/phantom_small_pipeline_h100.json          # on one GPU

Each stage's summary.json splits its time into data (phantom rendering, in the first stage), loading
(model, tokenisation, image preprocessing), teacher trajectories (dcd) and training. `--budget-s` records
whether every stage finished within that many seconds. With fewer steps than the recipe's
(`--train-arg=--max-steps --train-arg=300`), each stage also gets `projected_wall_s`: its measured fixed
costs plus the measured seconds per step times the recipe's steps (a projection, marked as one), and the
budget is checked against that. Runs from a checkout without installing (src/ is put
on PYTHONPATH), so it also runs on a machine with its own torch.

It writes where it is told and nowhere else: the stages train under --run (emptied first, but only when it is
empty or an earlier run of this script: a marker file says so), the result goes to --out (default
<run>/pipeline_timing.json), and an existing --out file (a committed result, say) is replaced only with
--overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_NAME = "pipeline_timing.json"
MARKER = ".pipeline_timing"


def machine() -> dict:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or "cpu", "cpus": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def run_stage(stage: str, recipe: str, run: Path, prev: Path | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "echocxr.cli", "train", stage, "--config", recipe, "--out", str(run / stage),
           "--no-progress", *extra]
    if prev is not None:
        cmd += ["--from", str(prev / "final")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"pipeline_timing: stage {stage} failed (exit {proc.returncode}): {shlex.join(cmd)}")
    s = json.loads((run / stage / "summary.json").read_text())
    last = s.get("last", {})
    steps = int(last.get("step", 0))
    train_s = s.get("timings", {}).get("train_s")
    out = {"wall_s": round(wall, 1), "timings": s.get("timings", {}), "steps": steps,
            "train_s_per_step": round(train_s / steps, 4) if train_s and steps else None,
            "train_examples": s.get("train_examples"), "loss": last.get("loss"), "eval_loss": last.get("eval_loss"),
            **({"trajectories": s["trajectories"]} if "trajectories" in s else {})}
    full = recipe_steps(stage, recipe)
    if train_s and steps and full > steps:  # a shortened run (--train-arg=--max-steps ...): project the full one
        out["recipe_steps"] = full
        out["projected_wall_s"] = round(wall + train_s / steps * (full - steps), 1)
    return out


def recipe_steps(stage: str, recipe: str) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from echocxr.training.config import load_config

    return load_config(stage, recipe).max_steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="phantom-tiny")
    ap.add_argument("--run", type=Path, default=Path("runs/tiny"),
                    help="run directory (emptied first: only an empty one or an earlier run of this script)")
    ap.add_argument("--out", type=Path, help="result json (default: <run>/pipeline_timing.json)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ap.add_argument("--stages", default="ar,rad,dcd", help="a prefix of ar,rad,dcd")
    ap.add_argument("--budget-s", type=float, help="record whether each stage took at most this many seconds")
    ap.add_argument("--train-arg", action="append", default=[], help="extra argument for every `echocxr train`")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if stages != ["ar", "rad", "dcd"][:len(stages)] or not stages:
        ap.error("--stages must be ar, ar,rad or ar,rad,dcd")
    out = args.out or args.run / OUT_NAME
    if args.out is not None and out.exists() and not args.overwrite:
        ap.error(f"--out {out} exists (a committed result?): pass --overwrite to replace it")
    if args.run.exists():
        if any(args.run.iterdir()) and not (args.run / MARKER).is_file():
            ap.error(f"--run {args.run} is not empty and not an earlier pipeline_timing run: "
                     "choose an empty or new folder (it is emptied first)")
        shutil.rmtree(args.run)
    args.run.mkdir(parents=True)
    (args.run / MARKER).write_text("made by benchmarks/pipeline_timing.py; emptied by its next run\n")
    result = {"command": shlex.join(["python", "benchmarks/pipeline_timing.py", *(argv or sys.argv[1:])]),
              "what": "wall seconds of each stage run by `echocxr train` (phantom rendering included in ar); "
                      "timings: data / loading / teacher trajectories / training inside each stage",
              "recipe": args.recipe, "machine": machine(), "stages": {}}
    prev = None
    for stage in stages:
        result["stages"][stage] = run_stage(stage, args.recipe, args.run, prev, args.train_arg)
        prev = args.run / stage
        print(f"{stage}: {result['stages'][stage]['wall_s']} s", flush=True)
    result["total_s"] = round(sum(v["wall_s"] for v in result["stages"].values()), 1)
    if args.budget_s:
        result["budget_s"] = args.budget_s
        result["within_budget"] = all(v.get("projected_wall_s", v["wall_s"]) <= args.budget_s
                                      for v in result["stages"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
