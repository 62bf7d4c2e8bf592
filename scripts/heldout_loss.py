"""Held-out loss of training runs, step by step, side by side (the `eval_loss` rows of their metrics.jsonl).

    python scripts/heldout_loss.py RUN_DIR [RUN_DIR ...]

For DCD with a hard target it is the cross-entropy on the held-out studies' teacher tokens: how well a
student predicts trajectories it was not trained on, so runs on different trajectories compare by how
predictable their targets are. Prints one JSON object per run: name, steps, eval_loss (same order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def heldout_loss(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "eval_loss" in r]
    return {"run": run.name, "steps": [r["step"] for r in rows],
            "eval_loss": [round(r["eval_loss"], 4) for r in rows]}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/heldout_loss.py RUN_DIR [RUN_DIR ...]")
    for arg in sys.argv[1:]:
        path = Path(arg)
        if not (path / "metrics.jsonl").is_file():
            sys.exit(f"no metrics.jsonl in {path}")
        print(json.dumps(heldout_loss(path)))
