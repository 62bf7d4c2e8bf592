"""Vision pretraining (`train vision`): the label read-out keeps positions, the stage learns the labels, its
head resumes exactly, and AR starts from its tower."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from echocxr.training.config import load_config
from echocxr.training.stages import StageRequest, run_stage
from echocxr.training.vision import LabelHead, label_targets
from tests.test_training_stages import TINY, write_small_set


def _stage(stage: str, out: Path, data: Path, from_dir: Path | None = None, resume: bool = False, **over) -> dict:
    cfg = load_config(stage, None, **{**TINY, **over})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_stage(StageRequest(stage=stage, cfg=cfg, out=out, from_dir=from_dir, data_dir=data,
                                      progress=False, resume=resume))


class _Ex:
    def __init__(self, labels):
        self.labels = labels


def test_label_targets_by_hand():
    y = label_targets([_Ex(("b",)), _Ex(()), _Ex(("a", "c", "unknown"))], ("a", "b", "c"))
    assert y.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]


def test_label_head_tells_which_token_fired():
    """Side and zone are positions: swapping two tokens must change the read-out (a pooled head cannot)."""
    torch.manual_seed(0)
    head = LabelHead(n_tokens=4, hidden=3, labels=("x", "y")).eval()
    t = torch.randn(1, 4, 3)
    swapped = t[:, [1, 0, 2, 3]]
    assert not torch.allclose(head(t), head(swapped))
    assert head(t).shape == (1, 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_small_set(tmp_path_factory.mktemp("vision-data"), n=40, n_train=24, n_val=8)


def test_vision_stage_learns_resumes_and_feeds_ar(tmp_path, data):
    over = dict(lr=3e-3, max_steps=8, batch_size=8, micro_batch_size=8, save_every=4, log_every=1)
    full = _stage("vision", tmp_path / "full", data, **over)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] * 0.8, losses
    assert full["val_labels"]["examples"] == 4 and full["labels"] > 0  # 10% of 40 studies
    ckpt = tmp_path / "full" / "checkpoint-0000004"
    assert "aux" in torch.load(ckpt / "trainer_state.pt", weights_only=False)  # the head lives in the state

    # stopped after 4 steps, then resumed: the same weights as the uninterrupted run (the head resumed too)
    _stage("vision", tmp_path / "cut", data, **{**over, "max_steps": 4})
    _stage("vision", tmp_path / "cut", data, resume=True, **over)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert not any(k.startswith(("linear", "drop")) for k in a)  # the head is not part of the model

    # AR from the vision model: its tower is kept frozen (the recipe's freeze_vision) and the LM trains
    ar = _stage("ar", tmp_path / "ar", data, from_dir=tmp_path / "full" / "final", max_steps=2)
    assert ar["last"]["step"] == 2
    c = load_file(tmp_path / "ar" / "final" / "model.safetensors")
    vis = [k for k in a if k.startswith("visual.")]
    assert vis and all(torch.equal(a[k], c[k]) for k in vis)
    lm = [k for k in a if "layers.0.self_attn.q_proj.weight" in k and "visual" not in k]
    assert lm and not torch.equal(a[lm[0]], c[lm[0]])
