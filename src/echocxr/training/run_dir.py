"""A stage's run folder (`train --out`): what it holds, whether a new run may use it, and `--from` resolution.

A folder that holds no checkpoint and no final model has nothing to lose, so a run starts there without
flags (fresh, empty, or left by a run that crashed before its first checkpoint). A folder with a run in it
is reused only when asked: `--resume` continues it (a finished one is reported as finished), `--overwrite`
deletes the old run's files first. Otherwise the run refuses with one line instead of restarting over it
(truncating its metrics.jsonl and leaving old and new checkpoints side by side).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from echocxr.errors import UserError
from echocxr.training.checkpoint import latest_checkpoint

# settings that may change between a run and its --resume without making it another run
RESUMABLE_CHANGES = {"max_steps", "log_every", "eval_every", "save_every", "keep_checkpoints", "eval_examples",
                     "fsdp", "micro_batch_size"}
RUN_FILES = ("latest", "metrics.jsonl", "summary.json", "train_config.json")


@dataclass
class RunFolder:
    """What a run folder holds (read only)."""

    path: Path
    stage: str | None = None  # from train_config.json
    config: dict | None = None
    last_step: int | None = None  # the latest complete checkpoint's step
    final: bool = False  # final/ holds a model

    @property
    def holds_a_run(self) -> bool:
        return self.final or self.last_step is not None

    def describe(self) -> str:
        what = f"{self.stage} run" if self.stage else "run"
        if self.final and (self.last_step is None or self.config is None
                           or self.last_step >= int(self.config.get("max_steps", 0))):
            return f"a finished {what}" + (f" ({self.last_step} steps)" if self.last_step is not None else "")
        total = f" of {self.config['max_steps']}" if self.config and "max_steps" in self.config else ""
        return f"an unfinished {what} (last checkpoint at step {self.last_step}{total})"


def read_run_folder(path: Path) -> RunFolder:
    path = Path(path)
    run = RunFolder(path)
    if not path.is_dir():
        return run
    try:
        saved = json.loads((path / "train_config.json").read_text())
        run.stage, run.config = saved.get("stage"), saved
    except (OSError, ValueError, AttributeError):
        pass
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        run.last_step = int(ckpt.name.rsplit("-", 1)[1])
    run.final = (path / "final" / "config.json").is_file()
    return run


def check_run_folder(path: Path, stage: str, config: dict, resume: bool, overwrite: bool) -> str:
    """How this stage may use `path`: "fresh", "resume" or "finished" (a --resume with nothing left to do).
    Raises a one-line UserError when the folder holds a run and neither flag says what to do with it."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    run = read_run_folder(path)
    if overwrite or not run.holds_a_run:
        return "fresh"
    if resume:
        if run.stage is not None and run.stage != stage:
            raise UserError(f"cannot --resume {stage} in {path}: it holds {run.describe()}")
        if run.final and (run.last_step is None or run.last_step >= int(config["max_steps"])):
            return "finished"
        return "resume"
    if run.stage == stage and not run.final:
        hint = "--resume to continue it or --overwrite to start again"
    else:
        hint = "--overwrite to replace it" + (" (or --resume with a larger --max-steps to continue it)"
                                              if run.stage == stage else "")
    raise UserError(f"--out {path} holds {run.describe()}: {hint}, or choose another --out")


def changed_settings(path: Path, config: dict) -> list[str]:
    """Settings of a resumed run that differ from the ones it was started with (beyond RESUMABLE_CHANGES)."""
    saved = read_run_folder(path).config or {}
    now = json.loads(json.dumps(config, default=str))  # as train_config.json stores them
    return sorted(k for k, v in now.items() if k in saved and k not in RESUMABLE_CHANGES and saved[k] != v)


def clear_run_folder(path: Path) -> None:
    """Delete a previous run's files (checkpoints, final/, logs, summaries); anything else is left alone."""
    path = Path(path)
    if not path.is_dir():
        return
    for child in path.iterdir():
        name = child.name
        is_ckpt = name.startswith(("checkpoint-", ".tmp-", ".old-")) and child.is_dir()
        if is_ckpt or (name == "final" and child.is_dir()):
            shutil.rmtree(child)
        elif name in RUN_FILES or (name.endswith(".tmp") and child.is_file()):
            child.unlink()


def resolve_model_dir(path: Path, flag: str = "--from") -> Path:
    """A model directory, or a finished run folder standing for its final/ (`--from runs/ar`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if not path.is_dir():
        raise UserError(f"{flag} directory not found: {path}")
    run = read_run_folder(path)
    if run.last_step is not None:
        ckpt = latest_checkpoint(path)
        raise UserError(f"{flag} {path} is {run.describe()} with no final/ yet: finish it with --resume, "
                        f"or start from its checkpoint ({flag} {ckpt})")
    raise UserError(f"{flag} {path} holds no model (no config.json) and no finished run (no final/)")

