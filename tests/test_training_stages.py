"""Each stage learns: AR SFT -> RAD -> DCD on a tiny overfit case (a few phantom studies, a tiny model).

The stages run end to end through `run_stage` (manifests -> examples -> objective -> loop -> checkpoints);
DCD's teacher trajectories are built directly from the references here (collection is tested in
test_training_trajectories.py), so the test does not depend on a tiny teacher finishing its decodes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from echocxr.training.config import load_config
from echocxr.training.stages import StageRequest, run_stage

TINY = dict(batch_size=4, micro_batch_size=4, warmup_steps=0, schedule="constant", log_every=1, eval_every=0,
            save_every=0, mixed_precision="no", max_response_tokens=160, block_length=4,
            tiny_model=dict(hidden=32, layers=1, heads=2, vision_hidden=16, vision_depth=1, vocab_size=1024))


def write_small_set(root: Path, n: int = 24, n_train: int | None = None, n_val: int = 2, short: bool = True) -> Path:
    """Phantom manifests (en) with at most `n_train` train and `n_val` val records; `short` keeps only the
    first sentence of each findings section (short responses keep the CPU tests fast)."""
    from echocxr.data.phantom.generate import write_phantom_set

    write_phantom_set(root, n=n, seed=0, image_size=64, progress=False)
    for split, keep in (("train", n_train), ("val", n_val)):
        path = root / f"{split}_en.json"
        recs = json.loads(path.read_text())[:keep]
        if short:
            for r in recs:
                r["ground_truth"]["findings"] = r["ground_truth"]["findings"].split(". ")[0].rstrip(".") + "."
        path.write_text(json.dumps(recs))
    return root


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stage(stage: str, out: Path, data: Path, from_dir: Path | None = None, resume: bool = False, **over) -> dict:
    cfg = load_config(stage, None, **{**TINY, **over})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_stage(StageRequest(stage=stage, cfg=cfg, out=out, from_dir=from_dir, data_dir=data, resume=resume,
                                      progress=False))


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory) -> Path:
    return write_small_set(tmp_path_factory.mktemp("overfit"), n=16, n_train=4, n_val=2)


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, overfit_data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ar"
    stage("ar", out, overfit_data, max_steps=25, lr=5e-3, freeze_vision=False)
    return out


def test_ar_loss_falls(ar_run):
    ls = losses(ar_run)
    assert len(ls) == 25
    assert ls[-1] < 0.6 * ls[0], ls
    summary = json.loads((ar_run / "summary.json").read_text())
    assert summary["train_examples"] == 4 and summary["last"]["step"] == 25
    assert list(summary["timings"]) == ["data_s", "load_s", "train_s"]  # where the stage's time went
    assert all(v >= 0 for v in summary["timings"].values()) and summary["timings"]["train_s"] > 0
    from echocxr.backbones.loading import load_backbone

    bb = load_backbone(ar_run / "final")
    assert bb.settings.stage == "ar" and bb.settings.decoder == "ar"


@pytest.fixture(scope="module")
def rad_run(tmp_path_factory, ar_run, overfit_data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "rad"
    stage("rad", out, overfit_data, from_dir=ar_run / "final", max_steps=40, lr=5e-3, warmup_steps=5)
    return out


def test_rad_loss_falls(rad_run, overfit_data):
    ls = losses(rad_run)
    assert len(ls) == 40
    # a 1-layer model first learns the unigram statistics (a plateau near 3.4), then the reports
    first, last = sum(ls[:2]) / 2, sum(ls[-5:]) / 5  # the masks are random: compare averages
    assert last < 0.8 * first, ls
    from echocxr.backbones.loading import load_backbone

    bb = load_backbone(rad_run / "final")
    assert (bb.settings.stage, bb.settings.decoder, bb.settings.prefill) == ("rad", "multistep", "response_aligned")
    # the trained model decodes with its own settings
    from echocxr.data.images import load_image
    from echocxr.decoding.engine import ReportEngine

    engine = ReportEngine(bb)
    img = load_image(sorted((overfit_data / "images").glob("*.png"))[0])
    out = engine.generate([engine.encode([img])], engine.default_config(max_new_tokens=8))[0]
    assert out.tokens > 0 and out.decoder == "multistep"


def reference_trajectories(examples, block_length: int, eos: int, vocab: int, seed: int = 0):
    """Stand-in teacher trajectories: the reference tokens, a peaked teacher distribution, random steps."""
    from echocxr.diffusion.sequences import pad_to_blocks
    from echocxr.training.trajectories import Trajectory

    g = torch.Generator().manual_seed(seed)
    out = {}
    for e in examples:
        toks = pad_to_blocks(e.response_ids, block_length, eos)
        R = len(toks)
        logits = torch.randn(R, vocab, generator=g)
        logits[torch.arange(R), torch.tensor(toks)] += 8.0
        out[e.key] = Trajectory(sample_id=e.sample_id, tokens=toks, index=torch.arange(vocab).expand(R, -1),
                                      probs=torch.softmax(logits, -1).half(),
                                      steps=torch.randint(1, block_length + 1, (R,), generator=g))
    return out


@pytest.fixture
def fake_teacher(monkeypatch):
    """Replace phase 1 (collection) with reference trajectories; records what the stage asked for."""
    import echocxr.training.trajectories as trajectories

    calls = []

    def load_or_collect(cache_dir, teacher_dir, engine, examples, block_length, tau, topk=0, max_new_tokens=512,
                        progress=True, rank=0, world=1, barrier=None, remasking="low_confidence_dynamic",
                        tie_ratio=0.0, tie_break="lowest_id", superset=None, batch_size=16, tie_margin=2.0):
        assert (rank, world) == (0, 1)
        calls.append(dict(teacher_dir=teacher_dir, n=len(examples), block_length=block_length, tau=tau,
                          tie_ratio=tie_ratio, tie_break=tie_break, batch_size=batch_size, tie_margin=tie_margin))
        V = engine.model.get_output_embeddings().weight.shape[0]
        trajs = reference_trajectories(examples, block_length, engine.bb.tokenizer.eos_token_id, V)
        return trajs, {"kept": len(trajs), "dropped_unfinished": 0, "dropped_loop": 0, "cached": False}

    monkeypatch.setattr(trajectories, "load_or_collect", load_or_collect)
    return calls


def test_dcd_loss_falls(tmp_path, rad_run, overfit_data, fake_teacher):
    out = tmp_path / "dcd"
    summary = stage("dcd", out, overfit_data, from_dir=rad_run / "final", max_steps=20, lr=5e-3,
                    trajectory_tie_ratio=0.9, trajectory_tie_ratio_by_language={"en": 0.7},
                    trajectory_tie_break="one_step", trajectory_batch_size=3)
    ls = losses(out)
    assert len(ls) == 20
    assert ls[-1] < 0.5 * ls[0], ls
    assert [c["n"] for c in fake_teacher] == [4, 2]  # train, then val
    assert all(c["tau"] == 0.9 and c["block_length"] == 4 and c["tie_ratio"] == 0.7 and c["tie_break"] == "one_step"
               and c["batch_size"] == 3 for c in fake_teacher)
    assert summary["trajectories"]["kept"] == 4
    assert list(summary["timings"]) == ["data_s", "load_s", "trajectories_s", "train_s"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "kl" in metrics[-1] and "eos_ce" in metrics[-1]
    from echocxr.backbones.loading import load_backbone

    bb = load_backbone(out / "final")
    assert (bb.settings.stage, bb.settings.decoder, bb.settings.steps) == ("dcd", "onestep", 1)


def test_dcd_stage_stops_when_the_teacher_finishes_too_few(tmp_path, rad_run, overfit_data, monkeypatch):
    import echocxr.training.trajectories as trajectories
    from echocxr.errors import UserError

    monkeypatch.setattr(trajectories, "load_or_collect",
                        lambda *a, **k: ({}, {"kept": 0, "dropped_unfinished": 3, "dropped_loop": 1}))
    with pytest.raises(UserError, match="teacher finished only 0 of 4"):
        stage("dcd", tmp_path / "dcd", overfit_data, from_dir=rad_run / "final", max_steps=2)


@pytest.mark.parametrize("change,needle", [({"prefill": "block_grid"}, "block_grid prefill"),
                                           ({"block_length": 8}, "trained at block length 8")])
def test_distillation_refuses_a_teacher_it_would_decode_in_another_mode(tmp_path, rad_run, overfit_data, change,
                                                                        needle):
    import shutil

    from echocxr.errors import UserError

    teacher = tmp_path / "teacher"
    shutil.copytree(rad_run / "final", teacher)
    settings = json.loads((teacher / "echocxr.json").read_text())
    (teacher / "echocxr.json").write_text(json.dumps({**settings, **change}))
    with pytest.raises(UserError, match=needle):
        stage("dcd", tmp_path / "dcd", overfit_data, from_dir=teacher, max_steps=1)


def test_dcd_student_grows_after_the_teacher_decoded(tmp_path, rad_run, overfit_data, fake_teacher):
    from echocxr.backbones.loading import load_backbone
    from echocxr.errors import UserError

    out = tmp_path / "dcd-grown"
    summary = stage("dcd", out, overfit_data, from_dir=rad_run / "final", max_steps=4, lr=5e-3, grow_layers=2,
                    save_every=2)
    assert summary["student_layers"] == 3  # the recipe's 1 + 2
    bb = load_backbone(out / "final")
    assert bb.model.config.text_config.num_hidden_layers == 3
    assert len(bb.model.model.language_model.layers) == 3
    # resuming a grown run rebuilds the grown student before its checkpoint is loaded
    stage("dcd", out, overfit_data, from_dir=rad_run / "final", resume=True, max_steps=6, lr=5e-3, grow_layers=2,
          save_every=2)
    assert len(losses(out)) == 6
    with pytest.raises(UserError, match="grow_layers"):
        stage("rad", tmp_path / "rad", overfit_data, from_dir=rad_run / "final", max_steps=1, grow_layers=1)


def test_dcd_label_term_trains_and_resumes_and_other_stages_refuse_it(tmp_path, rad_run, overfit_data,
                                                                      fake_teacher):
    from echocxr.errors import UserError

    out = tmp_path / "dcd-label"
    stage("dcd", out, overfit_data, from_dir=rad_run / "final", max_steps=4, lr=5e-3, label_weight=1.0,
          save_every=2)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and all(r["label_bce"] > 0 for r in logged)
    # the head's state is in the checkpoint: the run resumes
    stage("dcd", out, overfit_data, from_dir=rad_run / "final", resume=True, max_steps=6, lr=5e-3,
          label_weight=1.0, save_every=2)
    assert len(losses(out)) == 6
    with pytest.raises(UserError, match="label_weight is a term of the ar and dcd stages"):
        stage("rad", tmp_path / "rad", overfit_data, from_dir=rad_run / "final", max_steps=1, label_weight=1.0)
