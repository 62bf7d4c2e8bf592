"""Run folders: a folder holding a run is reused only with --resume or --overwrite, a finished run says so,
--from takes a run folder, and recipe phantoms go to the cache the summary names, not beside the run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from echocxr.cli import main
from echocxr.errors import UserError
from echocxr.training.run_dir import check_run_folder, clear_run_folder, resolve_model_dir

TINY = dict(batch_size=4, micro_batch_size=4, warmup_steps=0, schedule="constant", log_every=1, eval_every=0,
            save_every=0, mixed_precision="no", max_response_tokens=96, max_steps=2,
            tiny_model=dict(hidden=32, layers=1, heads=2, vision_hidden=16, vision_depth=1, vocab_size=512),
            phantoms=dict(n=10, seed=3, image_size=32))


def fake_run(path: Path, stage: str = "ar", step: int | None = 10, final: bool = True, max_steps: int = 10) -> Path:
    path.mkdir(parents=True)
    (path / "train_config.json").write_text(json.dumps({"stage": stage, "max_steps": max_steps, "lr": 1e-3}))
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    if step is not None:
        ckpt = path / f"checkpoint-{step:07d}"
        ckpt.mkdir()
        (ckpt / "trainer_state.pt").write_bytes(b"x")
        (path / "latest").write_text(ckpt.name)
    if final:
        (path / "final").mkdir()
        (path / "final" / "config.json").write_text("{}")
    return path


def check(path: Path, stage: str = "ar", max_steps: int = 10, resume: bool = False, overwrite: bool = False):
    return check_run_folder(path, stage, {"max_steps": max_steps, "lr": 1e-3}, resume, overwrite)


def test_folders_without_a_run_start_without_flags(tmp_path):
    assert check(tmp_path / "missing") == "fresh"
    (tmp_path / "empty").mkdir()
    assert check(tmp_path / "empty") == "fresh"
    crashed = fake_run(tmp_path / "crashed", step=None, final=False)  # died before its first checkpoint
    assert check(crashed) == "fresh" and check(crashed, resume=True) == "fresh"


@pytest.mark.parametrize("kind,stage,match", [
    ("finished", "ar", "holds a finished ar run (10 steps): --overwrite to replace it (or --resume with a larger "
                       "--max-steps to continue it), or choose another --out"),
    ("unfinished", "ar", "holds an unfinished ar run (last checkpoint at step 4 of 10): --resume to continue it or "
                         "--overwrite to start again"),
    ("finished", "rad", "holds a finished ar run (10 steps): --overwrite to replace it, or choose another --out"),
])
def test_a_folder_holding_a_run_refuses_without_flags(tmp_path, kind, stage, match):
    run = fake_run(tmp_path / "run", step=10 if kind == "finished" else 4, final=kind == "finished")
    with pytest.raises(UserError, match=match.replace("(", r"\(").replace(")", r"\)")):
        check(run, stage)
    assert check(run, stage, overwrite=True) == "fresh"


def test_resume_of_finished_unfinished_and_other_runs(tmp_path):
    finished = fake_run(tmp_path / "finished")
    assert check(finished, resume=True) == "finished"
    assert check(finished, max_steps=20, resume=True) == "resume"  # a larger --max-steps continues it
    assert check(fake_run(tmp_path / "half", step=4, final=False), resume=True) == "resume"
    with pytest.raises(UserError, match="cannot --resume rad in .*: it holds a finished ar run"):
        check(finished, "rad", resume=True)
    with pytest.raises(UserError, match="contradict"):
        check(finished, resume=True, overwrite=True)


def test_overwrite_clears_only_the_run(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / ".tmp-checkpoint-0000012").mkdir()
    (run / "NOTES.md").write_text("mine")
    clear_run_folder(run)
    assert sorted(p.name for p in run.iterdir()) == ["NOTES.md"]


def test_from_takes_a_run_folder(tmp_path):
    run = fake_run(tmp_path / "ar")
    assert resolve_model_dir(run) == run / "final" and resolve_model_dir(run / "final") == run / "final"
    half = fake_run(tmp_path / "half", step=4, final=False)
    with pytest.raises(UserError, match=r"--from .*half is an unfinished ar run .* with no final/ yet: finish it "
                                        r"with --resume, or start from its checkpoint"):
        resolve_model_dir(half)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no model"):
        resolve_model_dir(tmp_path / "empty")
    with pytest.raises(UserError, match="directory not found"):
        resolve_model_dir(tmp_path / "nope")


def train(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["train", "ar", *args, "--no-progress"])


def test_train_cli_reuse_resume_overwrite_and_the_phantom_cache(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ECHOCXR_CACHE_DIR", str(cache))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    runs = tmp_path / "runs"
    out = runs / "ar"

    assert train("--config", str(recipe), "--out", str(out)) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out.strip().splitlines()[-1])
    data = cache / "phantoms" / "phantoms-n10-s3-32px"
    assert line["data"] == str(data) and (data / "train_en.json").is_file()
    assert f"rendering CXR-Phantom data (10 studies) into {data}" in captured.err
    assert sorted(p.name for p in runs.iterdir()) == ["ar"]  # nothing beside the run
    assert json.loads((out / "summary.json").read_text())["data"] == str(data)
    metrics = (out / "metrics.jsonl").read_text()

    assert train("--config", str(recipe), "--out", str(out)) == 2  # the same --out again, no flag
    err = capsys.readouterr().err.strip()
    assert err == (f"echocxr train: error: --out {out} holds a finished ar run (2 steps): --overwrite to replace "
                   "it (or --resume with a larger --max-steps to continue it), or choose another --out")
    assert (out / "metrics.jsonl").read_text() == metrics  # untouched

    assert train("--config", str(recipe), "--out", str(out), "--resume") == 0
    err = capsys.readouterr().err
    assert f"echocxr train: {out} is a finished ar run (2 steps): nothing to resume" in err
    assert (out / "metrics.jsonl").read_text() == metrics

    assert train("--config", str(recipe), "--out", str(out), "--overwrite", "--max-steps", "1") == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001"]  # no old ones beside
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]

    assert train("--config", str(recipe), "--out", str(runs / "ar2"), "--from", str(out)) == 0  # a run folder
    assert json.loads((runs / "ar2" / "train_config.json").read_text())["stage"] == "ar"
