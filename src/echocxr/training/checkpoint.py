"""Checkpoints in the standard Hugging Face layout, written atomically, with the state to resume exactly.

A checkpoint directory is first written as `.tmp-<name>` and renamed into place only when complete, so a
crash mid-save never damages the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from echocxr.backbones.settings import ModelSettings

STATE_FILE = "trainer_state.pt"


def save_model_dir(out: Path, model, tokenizer, image_processor, settings: ModelSettings,
                   state_dict: dict | None = None) -> None:
    """Write a loadable model directory (decoding engine and `from_pretrained` alike), atomically.
    `state_dict`: the weights to write instead of the model's own (a sharded model's gathered full state)."""
    out = Path(out)
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if image_processor is not None:
        image_processor.save_pretrained(tmp)
    settings.save(tmp)
    _replace_dir(tmp, out)


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step:07d}"


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, image_processor, settings: ModelSettings,
                    trainer_state: dict, state_dict: dict | None = None) -> Path:
    ckpt = checkpoint_dir(out_dir, step)
    tmp = ckpt.parent / f".tmp-{ckpt.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_dir(tmp, model, tokenizer, image_processor, settings, state_dict)
    torch.save(trainer_state, tmp / STATE_FILE)
    _replace_dir(tmp, ckpt)
    (Path(out_dir) / "latest").write_text(ckpt.name)
    return ckpt


def export_model_dir(ckpt: Path, out: Path) -> None:
    """A checkpoint's model files as a plain model directory (hard links where possible: no second
    serialisation of the weights), written atomically."""
    out = Path(out)
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(ckpt, tmp, ignore=shutil.ignore_patterns(STATE_FILE), copy_function=link_or_copy)
    _replace_dir(tmp, out)


def latest_checkpoint(out_dir: Path) -> Path | None:
    out_dir = Path(out_dir)
    cands = sorted(p for p in out_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file())
    return cands[-1] if cands else None


def prune_checkpoints(out_dir: Path, keep: int = 2) -> None:
    """Delete all but the newest `keep` complete checkpoints (0: keep every one)."""
    if keep <= 0:
        return
    cands = sorted(p for p in Path(out_dir).glob("checkpoint-*") if (p / STATE_FILE).is_file())
    for p in cands[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.parent / f".old-{dst.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_json(path: Path, data: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
