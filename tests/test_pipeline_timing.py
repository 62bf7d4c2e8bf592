"""benchmarks/pipeline_timing.py writes where it is told: the run folder it may empty, the result file it may
replace (a committed result only with --overwrite). The stages themselves are stubbed: no training here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def timing(monkeypatch):
    spec = importlib.util.spec_from_file_location("pipeline_timing", ROOT / "benchmarks" / "pipeline_timing.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "machine", lambda: {"device": "cpu"})

    def fake_stage(stage, recipe, run, prev, extra):
        (run / stage / "final").mkdir(parents=True)
        return {"wall_s": 1.0}

    monkeypatch.setattr(mod, "run_stage", fake_stage)
    return mod


def test_default_result_goes_into_the_run(timing, tmp_path):
    run = tmp_path / "run"
    assert timing.main(["--run", str(run), "--stages", "ar"]) == 0
    assert json.loads((run / "pipeline_timing.json").read_text())["stages"] == {"ar": {"wall_s": 1.0}}
    assert timing.main(["--run", str(run), "--stages", "ar,rad"]) == 0  # its own earlier run: emptied, rerun
    assert sorted(p.name for p in run.iterdir()) == [".pipeline_timing", "ar", "pipeline_timing.json", "rad"]


def test_an_existing_result_is_kept_without_overwrite(timing, tmp_path, capsys):
    committed = tmp_path / "results" / "phantom_tiny_pipeline.json"
    committed.parent.mkdir()
    committed.write_text('{"committed": true}\n')
    with pytest.raises(SystemExit) as exc:
        timing.main(["--run", str(tmp_path / "run"), "--out", str(committed), "--stages", "ar"])
    assert exc.value.code == 2 and "exists (a committed result?): pass --overwrite" in capsys.readouterr().err
    assert committed.read_text() == '{"committed": true}\n' and not (tmp_path / "run").exists()
    assert timing.main(["--run", str(tmp_path / "run"), "--out", str(committed), "--stages", "ar", "--overwrite"]) == 0
    assert "stages" in json.loads(committed.read_text())


def test_a_foreign_run_folder_is_not_emptied(timing, tmp_path, capsys):
    mine = tmp_path / "runs"
    (mine / "ar").mkdir(parents=True)
    (mine / "ar" / "weights.safetensors").write_bytes(b"precious")
    with pytest.raises(SystemExit):
        timing.main(["--run", str(mine), "--stages", "ar"])
    assert "is not empty and not an earlier pipeline_timing run" in capsys.readouterr().err
    assert (mine / "ar" / "weights.safetensors").read_bytes() == b"precious"
