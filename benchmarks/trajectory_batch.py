"""How fast a DCD teacher collects trajectories at each batch size (the `trajectory_batch_size` setting).

    python benchmarks/trajectory_batch.py --teacher RUN/rad-b4/final --data PHANTOM_SET [--n 256]
        [--batch-sizes 16,64,128,256] [--threads 1] [--out benchmarks/results/trajectory_batch.json]

Decodes the first N English training studies as the built-in recipe's DCD stage does (left to right, tie ratio
0.3, block length 4, full distributions kept) once per batch size, and checks that every batch size gives the
same tokens: the setting changes speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import types
from pathlib import Path

import torch

from echocxr.backbones.loading import load_backbone
from echocxr.data.images import load_image
from echocxr.decoding.engine import ReportEngine
from echocxr.training.trajectories import collect_trajectories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True, help="a CXR-Phantom set (train_en.json and images/)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-sizes", default="16,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    manifest = json.loads((data / "train_en.json").read_text())[: args.n]
    engine = ReportEngine(load_backbone(args.teacher))
    examples = [types.SimpleNamespace(prompt=engine.encode([load_image(data / m["images"][0])], lang="en"),
                                      key=m["sample_id"], sample_id=m["sample_id"]) for m in manifest]
    rows, first = [], None
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        trajs, _ = collect_trajectories(engine, examples, 4, 0.9, batch_size=bs, max_new_tokens=256,
                                        progress=False, remasking="sequential", tie_ratio=0.3)
        wall = time.perf_counter() - t0
        tokens = {k: t.tokens for k, t in trajs.items()}
        first = first or tokens
        rows.append({"batch_size": bs, "wall_s": round(wall, 2), "studies_per_s": round(len(examples) / wall, 2),
                     "same_tokens_as_first": tokens == first})
        print(json.dumps(rows[-1]), flush=True)
    result = {"teacher": args.teacher, "studies": len(examples), "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
