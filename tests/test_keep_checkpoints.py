"""`keep_checkpoints` (`--keep-checkpoints N`): the training loop keeps the newest N checkpoints, or every one
with 0 (the RAD data-scale curve evaluates each). The loop runs for real on a one-parameter model; only the
writing of a checkpoint's model files is stubbed (a checkpoint is then its trainer state and a marker)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import echocxr.training.loop as loop
from echocxr.errors import UserError
from echocxr.training.checkpoint import STATE_FILE, prune_checkpoints
from echocxr.training.config import load_config


def _fake_save(out_dir, step, model, tokenizer, image_processor, settings, trainer_state, state_dict=None):
    ckpt = Path(out_dir) / f"checkpoint-{step:07d}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    torch.save({"step": trainer_state["step"]}, ckpt / STATE_FILE)
    (Path(out_dir) / "latest").write_text(ckpt.name)
    return ckpt


def _train(out: Path, monkeypatch, **over) -> list[str]:
    monkeypatch.setattr(loop, "save_checkpoint", _fake_save)
    monkeypatch.setattr(loop, "export_model_dir", lambda ckpt, dst: Path(dst).mkdir())
    cfg = load_config("rad", None, batch_size=2, micro_batch_size=2, max_steps=6, save_every=1, warmup_steps=0,
                      eval_every=0, log_every=1, mixed_precision="no", **over)
    model = torch.nn.Linear(1, 1)

    def objective(m, examples, indices, epoch):
        x = torch.tensor([[float(e)] for e in examples])
        return ((m(x) - 1.0) ** 2).mean(), {}

    loop.run_training(model, objective, list(range(4)), [], cfg, out, None, None, None, progress=False)
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_keep_zero_keeps_every_checkpoint(tmp_path, monkeypatch):
    names = _train(tmp_path / "all", monkeypatch, keep_checkpoints=0)
    assert names == [f"checkpoint-{s:07d}" for s in range(1, 7)]
    assert (tmp_path / "all" / "final").is_dir()


def test_default_keeps_the_newest_two(tmp_path, monkeypatch):
    assert load_config("rad", "phantom-builtin").keep_checkpoints == 2
    assert _train(tmp_path / "two", monkeypatch) == ["checkpoint-0000005", "checkpoint-0000006"]
    assert _train(tmp_path / "three", monkeypatch, keep_checkpoints=3) == [
        "checkpoint-0000004", "checkpoint-0000005", "checkpoint-0000006"]


def test_prune_with_keep_zero_deletes_nothing(tmp_path):
    for step in (1, 2, 3):
        _fake_save(tmp_path, step, None, None, None, None, {"step": step})
    prune_checkpoints(tmp_path, 0)
    assert len(list(tmp_path.glob("checkpoint-*"))) == 3
    prune_checkpoints(tmp_path, 1)
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-0000003"]


def test_negative_counts_are_refused():
    with pytest.raises(UserError, match="keep_checkpoints"):
        load_config("rad", None, keep_checkpoints=-1)
    with pytest.raises(UserError, match="save_every"):
        load_config("rad", None, save_every=-5)


def test_cli_flags_reach_the_config(monkeypatch):
    import echocxr.cli.train as cli
    import echocxr.training.stages as stages

    seen = {}

    def fake_run_stage(req):
        seen["cfg"] = req.cfg
        return {"final_model": "x", "last": {}}

    monkeypatch.setattr(stages, "run_stage", fake_run_stage)
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["rad", "--config", "phantom-builtin", "--out", "o", "--keep-checkpoints", "0",
                         "--save-every", "250", "--no-progress"])
    assert cli.run(args) == 0
    assert seen["cfg"].keep_checkpoints == 0 and seen["cfg"].save_every == 250
