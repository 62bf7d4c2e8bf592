"""scripts/builtin_stages.sh: keeping the built-in run's early stages in the repository and restoring them."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "builtin_stages.sh", tmp_path / "scripts")
    return tmp_path


def _run(repo, *args):
    return subprocess.run(["bash", "scripts/builtin_stages.sh", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60)


def _finished(run: Path, stage: str, weights: str) -> None:
    (run / stage / "final").mkdir(parents=True)
    (run / stage / "final" / "config.json").write_text("{}")
    (run / stage / "final" / "model.safetensors").write_text(weights)
    (run / stage / "summary.json").write_text('{"data": "x"}')
    (run / stage / "train_config.json").write_text(json.dumps({"stage": stage}))
    (run / stage / "checkpoint-0000250").mkdir()  # not kept: only the final model


def test_keep_then_restore_round_trips_the_final_models(repo):
    run = repo / "runs" / "a"
    for s in ("vision", "ar", "rad-b4"):
        _finished(run, s, f"weights of {s}")
    res = _run(repo, "keep", "runs/a")
    assert res.returncode == 0, res.stderr
    kept = repo / "benchmarks" / "results" / "builtin_model" / "stages"
    assert sorted(p.name for p in kept.iterdir()) == ["ar", "rad-b4", "vision"]
    assert not (kept / "ar" / "checkpoint-0000250").exists()
    fresh = repo / "runs" / "b"
    _finished(fresh, "vision", "newer vision")  # a stage already there is left alone
    res = _run(repo, "restore", "runs/b")
    assert res.returncode == 0, res.stderr
    assert "vision: runs/b/vision is finished already" in res.stdout
    assert (fresh / "vision" / "final" / "model.safetensors").read_text() == "newer vision"
    assert (fresh / "rad-b4" / "final" / "model.safetensors").read_text() == "weights of rad-b4"
    assert (fresh / "ar" / "train_config.json").read_text() == '{"stage": "ar"}'
    assert (fresh / "ar" / "summary.json").is_file()


def test_unfinished_stages_and_bad_usage_are_refused(repo):
    run = repo / "runs" / "a"
    _finished(run, "vision", "v")
    (run / "ar").mkdir()
    res = _run(repo, "keep", "runs/a")
    assert res.returncode == 1 and res.stderr.strip() == "runs/a/ar/final: not a finished stage"
    assert not (repo / "benchmarks").exists()  # nothing half-kept
    res = _run(repo, "restore", "runs/c")
    assert res.returncode == 1 and "no kept stage" in res.stderr
    for args in ((), ("keep",), ("move", "runs/a")):
        res = _run(repo, *args)
        assert res.returncode == 2 and res.stderr.startswith("usage: bash scripts/builtin_stages.sh keep|restore")


def test_restore_does_not_overwrite_an_unfinished_run(repo):
    run = repo / "runs" / "a"
    for s in ("vision", "ar", "rad-b4"):
        _finished(run, s, s)
    assert _run(repo, "keep", "runs/a").returncode == 0
    (repo / "runs" / "b" / "ar").mkdir(parents=True)
    (repo / "runs" / "b" / "ar" / "latest").write_text("checkpoint-0000250")
    res = _run(repo, "restore", "runs/b")
    assert res.returncode == 1 and "runs/b/ar holds an unfinished run" in res.stderr
    assert (repo / "runs" / "b" / "ar" / "latest").is_file()
