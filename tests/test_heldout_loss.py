"""scripts/heldout_loss.py: the eval_loss rows of a run's metrics.jsonl, in step order."""

from __future__ import annotations

import json

from tests.script_modules import load_script


def test_only_the_held_out_rows_are_read(tmp_path):
    mod = load_script("heldout_loss")
    run = tmp_path / "dcd-x"
    run.mkdir()
    rows = [{"step": 20, "loss": 0.5}, {"step": 500, "loss": 0.3, "eval_loss": 0.212345},
            {"step": 520, "loss": 0.2}, {"step": 1000, "loss": 0.1, "eval_loss": 0.18}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.heldout_loss(run) == {"run": "dcd-x", "steps": [500, 1000], "eval_loss": [0.2123, 0.18]}
