"""The training loop: DDP == one process, FSDP == one process (and resumes across the two), exact resume after a crash, atomic HF checkpoints, bad data, NaN stop.

One tiny RAD setup (a 1-layer Qwen2.5-VL, 8 phantom studies, global batch 4, 6 steps, checkpoints every 2)
is run three ways: in this process with micro-batches of 2 (so gradient accumulation is exercised), as two
gloo processes under torch.distributed.run, and killed mid-save then resumed. All end with the same weights.
RAD is used because its noise must also be reproduced exactly (it is keyed by example, not by process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from echocxr.training.checkpoint import STATE_FILE, latest_checkpoint
from echocxr.training.config import load_config
from echocxr.training.stages import StageRequest, run_stage

HERE = Path(__file__).resolve().parent
HELPER = HERE / "train_helper.py"
CONFIG = dict(batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=2, max_steps=6, save_every=2, eval_every=3,
              eval_examples=2, log_every=1, mixed_precision="no", max_response_tokens=160, block_length=4)


def _write_set(root: Path, n_train: int = 8) -> Path:
    """A few phantom studies (en) with one-sentence findings: short responses keep this fast."""
    from echocxr.data.phantom.generate import write_phantom_set

    write_phantom_set(root, n=16, seed=0, image_size=64, progress=False)
    for split, keep in (("train", n_train), ("val", 2)):
        path = root / f"{split}_en.json"
        recs = json.loads(path.read_text())[:keep]
        for r in recs:
            r["ground_truth"]["findings"] = r["ground_truth"]["findings"].split(". ")[0].rstrip(".") + "."
        path.write_text(json.dumps(recs))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, data dir, base model dir, config yaml) shared by the runs below."""
    import yaml

    from echocxr.backbones.prompt import PROMPTS
    from echocxr.backbones.tiny import save_tiny_checkpoint
    from echocxr.backbones.tokenizer import train_bpe_tokenizer
    from echocxr.data.manifest import load_manifest

    root = tmp_path_factory.mktemp("loop")
    data = _write_set(root / "data")
    texts = [s.reference() for s in load_manifest(data / "train_en.json")]
    tok = train_bpe_tokenizer(texts * 2 + list(PROMPTS.values()), vocab_size=1024)
    base = save_tiny_checkpoint(root / "base", "qwen2_5_vl", tok, seed=0, hidden=32, layers=1, heads=2,
                                vision_hidden=16, vision_depth=1)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    return root, data, base, cfg


def _run(stage: str, out: Path, data: Path, from_dir: Path | None, resume: bool = False, **over) -> dict:
    cfg = load_config(stage, None, **{**CONFIG, **over})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_stage(StageRequest(stage=stage, cfg=cfg, out=out, from_dir=from_dir, data_dir=data,
                                      resume=resume, progress=False))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {model_dir}"
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ECHOCXR_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """One uninterrupted process: batch 4 as 2 micro-batches of 2 (gradient accumulation)."""
    root, data, base, _ = setup
    out = root / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the subprocess runs below
    try:
        _run("rad", out, data, base)
    finally:
        torch.set_num_threads(threads)
    return out


def test_reference_run_writes_checkpoints_and_metrics(reference, setup):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from echocxr.backbones.loading import load_backbone

    names = sorted(p.name for p in reference.glob("checkpoint-*"))
    assert names == ["checkpoint-0000004", "checkpoint-0000006"]  # every 2 steps, the last 2 kept
    assert (reference / "latest").read_text() == "checkpoint-0000006"
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert "eval_loss" in metrics[2] and "eval_loss" in metrics[5] and "eval_loss" not in metrics[3]
    assert all(0 < m["masked_frac"] <= 1 for m in metrics)
    ck = reference / "checkpoint-0000006"
    bb = load_backbone(ck)  # HF layout: the decoding engine loads it
    assert bb.is_vision and bb.settings.stage == "rad" and bb.settings.prefill == "response_aligned"
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(ck)
    sd, ref = plain.state_dict(), bb.model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    state = torch.load(ck / STATE_FILE, weights_only=False)
    assert state["step"] == 6 and state["stage"] == "rad" and state["config"]["max_steps"] == 6
    assert _max_diff(_weights(ck), _weights(reference / "final")) == 0.0
    assert _max_diff(_weights(ck), _weights(setup[2])) > 0  # it trained


def test_ddp_two_processes_equal_one_process(reference, setup, tmp_path):
    root, data, base, cfg = setup
    out, dumps = tmp_path / "ddp", tmp_path / "dumps"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER),
           "train", "rad", "--config", str(cfg), "--from", str(base), "--data", str(data), "--out", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, env=_env(ECHOCXR_TEST_DUMP_DIR=str(dumps)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(dumps / "rank0.pt"), torch.load(dumps / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # ranks in lockstep
    assert json.loads((dumps / "rank0.json").read_text())["local_numel"] == sum(v.numel() for v in r0.values())
    final = _weights(out / "final")
    ref = _weights(reference / "final")
    assert _max_diff(final, ref) < 1e-6
    from echocxr.backbones.loading import load_backbone

    sd = load_backbone(out / "final").model.state_dict()
    assert max(float((sd[k] - r0[k]).abs().max()) for k in r0) == 0.0  # rank 0 saved what it held
    # the same losses, step by step (the mean over ranks), and the same checkpoints
    m_ddp = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m_ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m_ddp] == [m["step"] for m in m_ref]
    for a, b in zip(m_ddp, m_ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)  # one schedule step per global batch
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]


def test_killed_mid_save_then_resumed_equals_uninterrupted(reference, setup, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from echocxr.backbones.loading import load_backbone

    root, data, base, cfg = setup
    out = tmp_path / "run"
    cmd = [sys.executable, str(HELPER), "train", "rad", "--config", str(cfg), "--from", str(base), "--data",
           str(data), "--out", str(out), "--no-progress"]
    # killed (SIGKILL) while writing checkpoint 4: after 4 optimizer steps, model files half way to disk
    proc = subprocess.run(cmd, env=_env(ECHOCXR_TEST_KILL_IN_SAVE="4"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / ".tmp-checkpoint-0000004").is_dir()  # the interrupted save
    assert not (out / ".tmp-checkpoint-0000004" / STATE_FILE).exists()
    assert not (out / "checkpoint-0000004").exists() and not (out / "final").exists()
    ck2 = out / "checkpoint-0000002"
    assert latest_checkpoint(out) == ck2  # the leftover never shadows the previous checkpoint
    load_backbone(ck2)
    Qwen2_5_VLForConditionalGeneration.from_pretrained(ck2)
    assert torch.load(ck2 / STATE_FILE, weights_only=False)["step"] == 2

    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # a line torn by the crash
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = _run("rad", out, data, base, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert summary["last"]["step"] == 6
    assert _max_diff(_weights(out / "final"), _weights(reference / "final")) < 1e-6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
    # the steps the crashed run logged after checkpoint 2 are redone, and logged once
    m_res = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m_ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m_res] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in m_res] == pytest.approx([m["loss"] for m in m_ref], abs=1e-6)


def test_failed_save_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    """A save that fails half way (here: an exception while writing weights) leaves the last checkpoint whole."""
    from echocxr.backbones.loading import load_backbone
    from echocxr.backbones.settings import ModelSettings
    from echocxr.training.checkpoint import prune_checkpoints, save_checkpoint

    bb = load_backbone(setup[2])
    settings = ModelSettings(stage="rad")
    save_checkpoint(tmp_path, 2, bb.model, bb.tokenizer, bb.image_processor, settings, {"step": 2})
    before = _weights(tmp_path / "checkpoint-0000002")

    def boom(*a, **k):
        raise OSError("disk full")

    with torch.no_grad():
        for p in bb.model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(type(bb.model), "save_pretrained", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, bb.model, bb.tokenizer, bb.image_processor, settings, {"step": 4})
    with pytest.raises(OSError):  # overwriting the same step fails too: the old copy stays
        save_checkpoint(tmp_path, 2, bb.model, bb.tokenizer, bb.image_processor, settings, {"step": 2})
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0000002"
    assert _max_diff(_weights(tmp_path / "checkpoint-0000002"), before) == 0.0
    load_backbone(tmp_path / "checkpoint-0000002")
    monkeypatch.undo()
    for step in (4, 6, 8):
        save_checkpoint(tmp_path, step, bb.model, bb.tokenizer, bb.image_processor, settings, {"step": step})
        prune_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000006", "checkpoint-0000008"]


def test_bad_records_are_skipped_and_counted(setup, tmp_path):
    root, data, base, _ = setup
    bad = tmp_path / "bad"
    bad.mkdir()
    recs = json.loads((data / "train_en.json").read_text())
    for r in recs:  # absolute image paths: the manifest moves
        r["images"] = [str((data / p).resolve()) for p in r["images"]]
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    recs[0]["images"] = [str(tmp_path / "missing.png")]
    recs[1]["ground_truth"] = {"findings": "", "impression": "  "}
    recs[2]["images"] = [str(tmp_path / "garbage.png")]
    recs[3]["images"] = []
    (bad / "train_en.json").write_text(json.dumps(recs))
    with pytest.warns(UserWarning, match="skipped 4 of 8 records"):
        summary = run_stage(StageRequest(stage="rad", cfg=load_config("rad", None, **{**CONFIG, "max_steps": 2}),
                                         out=tmp_path / "run", from_dir=base, data_dir=bad, progress=False))
    assert summary["train_examples"] == 4
    assert summary["skipped"] == {"unreadable image": 2, "empty report": 1, "no image": 1}
    assert summary["last"]["step"] == 2 and (tmp_path / "run" / "final" / "config.json").is_file()


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(setup, tmp_path, monkeypatch, capsys):
    """A NaN at step 3 (1-based): exit code 2, one line on stderr, checkpoint 2 kept and loadable."""
    from echocxr.cli import main
    from echocxr.training.objectives import RADObjective

    root, data, base, cfg = setup
    real = RADObjective.__call__
    calls = []

    def nan_at_step_3(self, model, examples, indices, epoch):
        calls.append(1)
        loss, mets = real(self, model, examples, indices, epoch)
        return (loss * float("nan") if len(calls) > 4 else loss), mets  # 2 micro-batches per step

    monkeypatch.setattr(RADObjective, "__call__", nan_at_step_3)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "rad", "--config", str(cfg), "--from", str(base), "--data", str(data), "--out",
                     str(out), "--no-progress", "--max-steps", "6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err  # --no-progress: not even transformers' loading bars
    assert err[0].startswith("echocxr train: error: loss is nan at step 3: stopping before the update; "
                             f"the last good checkpoint {out / 'checkpoint-0000002'} is kept"), err
    assert latest_checkpoint(out) == out / "checkpoint-0000002"
    assert not (out / "final").exists()
    w = _weights(out / "checkpoint-0000002")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_nan_gradient_with_finite_loss_never_reaches_a_checkpoint(setup, tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (e.g. an overflow in backward) must stop the run before the
    optimizer writes NaN weights that the next checkpoint would save."""
    from echocxr.errors import UserError
    from echocxr.training.objectives import RADObjective

    root, data, base, _ = setup
    real = RADObjective.__call__
    calls = []

    def nan_grad_at_step_3(self, model, examples, indices, epoch):
        calls.append(1)
        loss, mets = real(self, model, examples, indices, epoch)
        if len(calls) in (5, 6):  # forward value unchanged, backward NaN (the where-sqrt trap)
            loss = torch.where(torch.tensor(True), loss, torch.sqrt(loss - 1e6))
        return loss, mets

    monkeypatch.setattr(RADObjective, "__call__", nan_grad_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="at step 3"):
        _run("rad", out, data, base, save_every=1)
    ck = latest_checkpoint(out)
    assert ck == out / "checkpoint-0000002"
    assert all(torch.isfinite(v).all() for v in _weights(ck).values())


def _torchrun(cfg: Path, base: Path, data: Path, out: Path, *extra: str, **env) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER),
           "train", "rad", "--config", str(cfg), "--from", str(base), "--data", str(data), "--out", str(out),
           "--no-progress", *extra]
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# FSDP sums the squared gradient norm shard by shard: the clipping factor differs from one process's in the
# 7th digit, so FSDP matches the reference to 1e-5 rather than DDP's 1e-6
FSDP_TOL = 1e-5


def test_fsdp_two_processes_match_one_process_and_resume_unsharded(reference, setup, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from echocxr.backbones.loading import load_backbone

    root, data, base, cfg = setup
    out, dumps = tmp_path / "fsdp", tmp_path / "dumps"
    _torchrun(cfg, base, data, out, "--fsdp", ECHOCXR_TEST_DUMP_DIR=str(dumps))
    r0, r1 = torch.load(dumps / "rank0.pt"), torch.load(dumps / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # the gathered weights agree
    held = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    full = sum(v.numel() for v in r0.values())
    assert all(h["class"].startswith("FSDP") and h["local_numel"] < 0.75 * full for h in held)  # really sharded
    ref = _weights(reference / "final")
    assert _max_diff(_weights(out / "final"), ref) < FSDP_TOL
    # a plain HF directory holding the whole model, not rank 0's shard
    sd = load_backbone(out / "final").model.state_dict()
    assert sd.keys() == r0.keys() and all(torch.equal(sd[k], r0[k]) for k in r0)
    Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "checkpoint-0000004")
    m_fsdp = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m_ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m_fsdp] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(m_fsdp, m_ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        assert a.get("eval_loss") == pytest.approx(b.get("eval_loss"), abs=1e-5)
    # the optimizer state is whole and keyed by name: one process picks the sharded run up at step 4
    state = torch.load(out / "checkpoint-0000004" / STATE_FILE, weights_only=False)
    moments = state["optimizer"]["state"]["model.language_model.layers.0.mlp.up_proj.weight"]["exp_avg"]
    assert moments.shape == sd["model.language_model.layers.0.mlp.up_proj.weight"].shape
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-0000004", resumed / "checkpoint-0000004")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run("rad", resumed, data, base, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert _max_diff(_weights(resumed / "final"), _weights(out / "final")) < FSDP_TOL
    assert _max_diff(_weights(resumed / "final"), ref) < FSDP_TOL


def test_fsdp_resumes_an_unsharded_checkpoint_exactly(reference, setup, tmp_path):
    """Two FSDP processes continue the one-process run from its step-4 checkpoint: each rank keeps its shard
    of the full optimizer state, and the last two steps land on the reference weights."""
    root, data, base, cfg = setup
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-0000004", out / "checkpoint-0000004")
    _torchrun(cfg, base, data, out, "--fsdp", "--resume")
    assert _max_diff(_weights(out / "final"), _weights(reference / "final")) < 1e-6
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 6]


def test_fsdp_bf16_keeps_fp32_master_weights(reference, setup, tmp_path):
    """bf16 mixed precision under FSDP: layers compute in bf16 (the losses move off the fp32 run's in the
    4th digit), while the shards, and so the checkpoint, stay fp32."""
    import yaml

    root, data, base, cfg = setup
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text(yaml.safe_dump({**CONFIG, "mixed_precision": "bf16", "max_steps": 3}))
    out = tmp_path / "run"
    _torchrun(bf16, base, data, out, "--fsdp")
    m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m_ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()][:3]
    losses, ref_losses = [x["loss"] for x in m], [x["loss"] for x in m_ref]
    assert losses == pytest.approx(ref_losses, abs=0.02) and losses != pytest.approx(ref_losses, abs=1e-6)
    w = _weights(out / "final")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())
    assert _max_diff(w, _weights(base)) > 0


def test_fsdp_with_one_process_trains_unsharded(setup, tmp_path, monkeypatch):
    from echocxr.training.config import TrainConfig
    from echocxr.training.loop import make_accelerator, wants_fsdp

    root, data, base, _ = setup
    with pytest.warns(UserWarning, match="nothing to shard"):
        summary = run_stage(StageRequest(stage="rad", cfg=load_config("rad", None, **{**CONFIG, "max_steps": 1,
                                                                                      "fsdp": True}),
                                         out=tmp_path / "run", from_dir=base, data_dir=data, progress=False))
    assert summary["last"]["step"] == 1
    # `accelerate launch --use_fsdp` asks for FSDP too; the flag is taken so accelerate never wraps the model
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert wants_fsdp(TrainConfig())
    make_accelerator(TrainConfig())
    assert "ACCELERATE_USE_FSDP" not in os.environ


def test_optimizer_state_is_keyed_by_name_and_older_index_keyed_states_still_load():
    from echocxr.training.sharding import load_optimizer_state, optimizer_state

    def stepped() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        m[0].weight.requires_grad_(False)  # frozen parameters have no state
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        m(torch.randn(3, 4)).sum().backward()
        opt.step()
        return m, opt

    m, opt = stepped()
    by_name = optimizer_state(m, opt)
    assert sorted(by_name["state"]) == ["0.bias", "1.bias", "1.weight"]
    for saved in (by_name, opt.state_dict()):
        m2, _ = stepped()
        opt2 = torch.optim.AdamW([p for p in m2.parameters() if p.requires_grad], lr=1e-2)
        load_optimizer_state(m2, opt2, saved)
        a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)
