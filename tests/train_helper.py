"""`python tests/train_helper.py <echocxr CLI args>`: the CLI with test hooks (used by test_training_loop.py).

Environment hooks:
  ECHOCXR_TEST_DUMP_DIR: when training returns, every rank writes its in-memory weights to
      DIR/rank<RANK>.pt (RANK from the launcher, 0 when alone), so DDP/FSDP ranks can be compared, and
      DIR/rank<RANK>.json: the model's class and the number of parameter elements the rank holds.
  ECHOCXR_TEST_KILL_IN_SAVE=N: SIGKILL this process in the middle of writing checkpoint N (after the model
      files went to the `.tmp-` directory, before the trainer state and the rename): a real crash mid-save.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def install_hooks() -> None:
    import torch

    import echocxr.training.checkpoint as checkpoint
    import echocxr.training.loop as loop

    dump = os.environ.get("ECHOCXR_TEST_DUMP_DIR")
    if dump:
        real_run = loop.run_training

        def run_training(model, *a, **k):
            out = real_run(model, *a, **k)
            path = Path(dump) / f"rank{os.environ.get('RANK', '0')}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            # full_tensor: an FSDP rank holds only shards (a collective: every rank walks the same names)
            local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
            path.with_suffix(".json").write_text(json.dumps({"class": type(model).__name__, "local_numel": local}))
            torch.save({n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
                        for n, p in model.state_dict().items()}, path)
            return out

        loop.run_training = run_training

    kill_at = os.environ.get("ECHOCXR_TEST_KILL_IN_SAVE")
    if kill_at:
        real_save = checkpoint.save_model_dir

        def save_model_dir(out, *a, **k):
            real_save(out, *a, **k)
            if Path(out).name == f".tmp-checkpoint-{int(kill_at):07d}":
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.save_model_dir = save_model_dir


if __name__ == "__main__":
    install_hooks()
    from echocxr.cli import main

    sys.exit(main(sys.argv[1:]))
