"""benchmarks/phantom_study.sh: valid bash; its listing (--list / DRY_RUN=1) plans every row of the study and
runs nothing; and a whole run against a stand-in `echocxr` (a shell script that makes the folders training and
evaluation would) goes through every stage, lane, the tables and the evidence, then resumes doing nothing.
scripts/train_builtin_model.sh, which shares scripts/lib/stages.sh, is run the same way."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "phantom_study.sh"
SCRIPTS = [STUDY, ROOT / "scripts" / "lib" / "stages.sh", ROOT / "scripts" / "train_builtin_model.sh"] + [
    ROOT / "scripts" / f"{name}.sh" for name in ("tie_ratio_teacher", "student_variant", "builtin_stages")] + [
    ROOT / "benchmarks" / "refine_curve.sh"]
CURVE = list(range(250, 2501, 250))

FAKE_ECHOCXR = r"""#!/usr/bin/env bash
# stand-in for echocxr: logs the call, makes what the real command would leave behind
echo "echocxr $*" >> "$FAKE_LOG"
cmd=$1; shift
out="" max=1000 every=250 keep=2 summaries=0 table="" plot=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift;; --max-steps) max=$2; shift;; --save-every) every=$2; shift;;
    --keep-checkpoints) keep=$2; shift;; --summaries) summaries=1;; --table-out) table=$2; shift;;
    --plot-out) plot=$2; shift;;
  esac
  shift
done
if [ "$cmd" = train ]; then
  mkdir -p "$out/final"; echo '{}' > "$out/final/config.json"
  [ "${FAKE_WEIGHTS:-0}" = 1 ] && echo "weights of $out" > "$out/final/model.safetensors"
  printf '{"data": "%s"}' "$FAKE_DATA" > "$out/summary.json"; echo '{"stage": "x"}' > "$out/train_config.json"
  if [ "$keep" = 0 ]; then
    for ((s = every; s <= max; s += every)); do
      mkdir -p "$out/$(printf 'checkpoint-%07d' $s)"; echo '{}' > "$out/$(printf 'checkpoint-%07d' $s)/config.json"
    done
  fi
elif [ $summaries = 1 ]; then
  touch "$table" "$plot"
else
  mkdir -p "$out"
  echo '{"rouge_l": 50.0, "cider": 3.0, "finding_f1_micro": 70.0, "semscore": 80.0, "tpf": 2.0, "tps": 100.0}' > "$out/summary.json"
fi
"""

FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = scripts/write_builtin_card.py ]; then echo "python $*" >> "$FAKE_LOG"; echo card > "$3/MODEL_CARD.md"; exit 0; fi
exec "$REAL_PY" "$@"
"""


def _tables_module():
    spec = importlib.util.spec_from_file_location("phantom_study_tables_s", ROOT / "benchmarks" / "phantom_study_tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _list(run: Path, **env) -> list[str]:
    full = {**os.environ, **env}
    for k in ("LENGTHS", "SHIP", "EVAL_ARGS", "DRY_RUN", "CURVE_STEPS", "CURVE_EVERY", "CURVE_LANGS"):
        if k not in env:
            full.pop(k, None)
    res = subprocess.run(["bash", str(STUDY), "--list", str(run)], capture_output=True, text=True, env=full,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def _trains(lines: list[str]) -> dict[str, str]:
    return {m.group(2): m.group(3) for ln in lines if (m := re.match(r"train (\w+) (\S+): (.*)$", ln))}


def _evals(lines: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for ln in lines:
        m = re.match(r"eval (\w+) eval-study/(\S+)-(en|zh): (.*)$", ln)
        if m:
            out[(m.group(2), m.group(3))] = f"{m.group(1)} {m.group(4)}"
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_student_variant_needs_a_run_and_a_name():
    res = subprocess.run(["bash", str(ROOT / "scripts" / "student_variant.sh")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("usage: bash scripts/student_variant.sh RUN_DIR NAME")


def test_listing_plans_every_row_and_runs_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = _list(run)
    assert not list(run.iterdir())  # nothing made, nothing run
    assert lines[0] == f'builtin todo {run}: SHIP=4 LENGTHS="4 8" bash scripts/train_builtin_model.sh {run}'
    trains = _trains(lines)
    R = str(run)
    for L, teacher in ((4, "rad-b4"), (8, "rad-b8-continued")):
        src = f"--from {R}/{teacher}/final --block-length {L}"
        assert trains[f"dcd-soft-b{L}"].endswith(f"{src} --dcd-target soft")
        assert trains[f"ce-b{L}"].endswith(f"{src} --dcd-target hard --no-sw --eos-ce 0")
        for b in ("dparallel", "cd4lm", "d3llm", "t3d"):
            assert trains[f"{b}-b{L}"].startswith(f".venv/bin/echocxr train {b} --config phantom-builtin")
            assert trains[f"{b}-b{L}"].endswith(src)
    assert trains["dcd-b4"].endswith(f"--from {R}/rad-b4/final --block-length 4")  # the built-in stage is the recipe
    assert trains["dcd-hard-b8"].endswith(f"--from {R}/rad-b8-continued/final --block-length 8")
    src4 = f"--from {R}/rad-b4/final --block-length 4 --dcd-target soft"
    assert trains["dcd-soft-nosw-b4"].endswith(f"{src4} --no-sw")
    assert trains["dcd-soft-noeos-b4"].endswith(f"{src4} --eos-ce 0")
    assert trains["dcd-soft-rkl-b4"].endswith(f"{src4} --rkl")
    assert trains["raw-ar"].endswith(f"--from {R}/vision/final --data {R}/raw-data")
    assert trains["raw-rad-b4"].endswith(f"--from {R}/raw-ar/final --data {R}/raw-data --block-length 4 --max-steps 2500")
    assert trains["raw-dcd-soft-b4"].endswith(f"--from {R}/raw-rad-b4/final --data {R}/raw-data --block-length 4 "
                                              "--dcd-target soft")
    assert trains["rad-curve-b4"].endswith(f"--from {R}/ar/final --block-length 4 --max-steps 2500 --save-every 250 "
                                           "--keep-checkpoints 0")
    for dir_, cmd in trains.items():  # beside the built-in stages: one trajectory cache, RUN/trajectories
        assert f"--out {R}/{dir_} " in cmd and "/" not in dir_
    # the evaluations are exactly the rows the tables read
    T = _tables_module()
    evals = _evals(lines)
    want = {(r.name, lang) for r in T.study_rows((4, 8), 4, CURVE) for lang in ("en", "zh")}
    assert set(evals) == want
    reused = {k for k, v in evals.items() if v.startswith("reuse")}
    assert {n for n, _ in reused} == {"ar", "base-multistep-b4", "base-onestep-b4", "base-multistep-b8",
                                      "base-onestep-b8", "dcd-hard-b4"}
    assert evals[("base-multistep-b8", "zh")] == "reuse eval/rad-multistep-b8-zh (todo, scripts/train_builtin_model.sh)"
    assert evals[("dparallel-b4", "en")].endswith(f"--out {R}/eval-study/dparallel-b4-en")  # its own decoding
    assert evals[("dparallel-onestep-b4", "en")].endswith("--decoder onestep")
    assert f"--model {R}/rad-curve-b4/checkpoint-0000750 " in evals[(T.curve_name(4, 750), "zh")]
    assert evals[(T.curve_name(4, 750), "zh")].endswith("--steps 4 --remasking low_confidence_dynamic --threshold 0.9")
    assert "--manifest $DATA/test_en_raw.json" in evals[("raw-dcd-soft-b4", "en")]
    assert "--manifest $DATA/test_en.json" in evals[("raw-dcd-soft-b4-normref", "en")]
    assert lines[-1].startswith("tables: ") and "'250 500 750 1000 1250 1500 1750 2000 2250 2500'" in lines[-1]


def test_listing_follows_the_knobs_and_the_run_state(tmp_path):
    run = tmp_path / "run"
    (run / "dcd-soft-b8" / "final").mkdir(parents=True)
    (run / "dcd-soft-b8" / "final" / "config.json").write_text("{}")
    (run / "t3d-b8").mkdir()
    (run / "t3d-b8" / "latest").write_text("checkpoint-0000250")
    (run / "eval-study" / "ce-b8-zh").mkdir(parents=True)
    (run / "eval-study" / "ce-b8-zh" / "summary.json").write_text("{}")
    lines = _list(run, LENGTHS="8", SHIP="8", EVAL_ARGS="--device cpu --seed 3", CURVE_STEPS="1000",
                  CURVE_EVERY="400", CURVE_LANGS="en")
    trains, evals = _trains(lines), _evals(lines)
    assert not any(k.endswith("-b4") for k in trains) and "dcd-b4" not in trains
    assert next(ln for ln in lines if ln.startswith("train done dcd-soft-b8:"))
    assert trains["t3d-b8"].endswith("--no-progress --resume --from " + f"{run}/rad-b8-continued/final --block-length 8")
    assert evals[("ce-b8", "zh")].startswith("done ") and evals[("ce-b8", "en")].startswith("todo ")
    # EVAL_ARGS: passed to every evaluation; the built-in run's rows are then evaluated again, not reused
    assert all(v.startswith(("todo", "done")) and v.endswith("--device cpu --seed 3") for v in evals.values())
    assert ("ar", "en") in evals and ("base-onestep-b8", "zh") in evals
    # raw pipeline at 8: the built-in L=8 teacher's two RAD runs; the curve at 400, 800 and the last step
    assert {"raw-rad-b8", "raw-rad-b8-continued", "raw-dcd-soft-b8", "dcd-soft-rkl-b8"} <= set(trains)
    T = _tables_module()
    assert {k for k in evals if k[0].startswith("rad-curve")} == {(T.curve_name(8, s), "en") for s in (400, 800, 1000)}
    assert set(evals) == {(r.name, lang) for r in T.study_rows((8,), 8, (400, 800, 1000)) for lang in ("en", "zh")
                          if not (r.method == "rad-curve" and lang == "zh")}
    assert _list(run, DRY_RUN="1")[0].startswith("builtin todo")  # DRY_RUN=1 without --list


def test_other_block_lengths_are_refused(tmp_path):
    res = subprocess.run(["bash", str(STUDY), "--list", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "LENGTHS": "4 16"})
    assert res.returncode == 2 and "block length 16" in res.stderr


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the scripts with stand-ins for .venv/bin/echocxr and .venv/bin/python."""
    repo = tmp_path / "repo"
    for rel in ("benchmarks/phantom_study.sh", "benchmarks/phantom_study_tables.py", "scripts/train_builtin_model.sh",
                "scripts/lib/stages.sh"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    (repo / ".venv" / "bin").mkdir(parents=True)
    for name, text in (("echocxr", FAKE_ECHOCXR), ("python", FAKE_PYTHON)):
        (repo / ".venv" / "bin" / name).write_text(text)
        (repo / ".venv" / "bin" / name).chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k not in ("LENGTHS", "SHIP", "EVAL_ARGS", "DRY_RUN", "INSTALL")},
           "FAKE_LOG": str(tmp_path / "calls.log"), "FAKE_DATA": str(data), "REAL_PY": sys.executable,
           "CURVE_STEPS": "500", "CURVE_EVERY": "250"}
    return repo, env, tmp_path / "calls.log"


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_builtin_script_runs_its_stages_through_the_shared_helper(fake_repo):
    repo, env, log = fake_repo
    res = subprocess.run(["bash", "scripts/train_builtin_model.sh", "runs/x"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = _calls(log)
    assert calls[0] == "echocxr train vision --config phantom-builtin --lang en,zh --out runs/x/vision --no-progress"
    assert ("echocxr eval --model runs/x/ar/final --manifest " + env["FAKE_DATA"] + "/test_en.json --max-new-tokens 256 "
            "--gen-batch-size 16 --protocol raw --out runs/x/eval/ar-en --decoder ar") in calls
    # by default the shipped block length only: vision, AR, RAD, DCD; 5 rows per language
    assert [c.split()[2] for c in calls if c.startswith("echocxr train")] == ["vision", "ar", "rad", "dcd"]
    assert sum(c.startswith("echocxr eval --model") for c in calls) == 10
    log.unlink()
    res = subprocess.run(["bash", "scripts/train_builtin_model.sh", "runs/x"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "stage dcd-b4: done already" in res.stdout
    assert not [c for c in _calls(log) if c.startswith(("echocxr train", "echocxr eval --model"))]


def test_builtin_script_also_trains_the_other_block_length_after_the_shipped_one(fake_repo):
    repo, env, log = fake_repo
    res = subprocess.run(["bash", "scripts/train_builtin_model.sh", "runs/x"], cwd=repo,
                         env={**env, "LENGTHS": "8 4"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    trains = [c.split()[2] + " " + c.split(" --out ")[1].split()[0] for c in _calls(log) if c.startswith("echocxr train")]
    assert trains == ["vision runs/x/vision", "ar runs/x/ar", "rad runs/x/rad-b4", "dcd runs/x/dcd-b4",
                      "rad runs/x/rad-b8", "rad runs/x/rad-b8-continued", "dcd runs/x/dcd-b8"]
    assert sum(c.startswith("echocxr eval --model") for c in _calls(log)) == 18
    dcd8 = next(c for c in _calls(log) if "--out runs/x/dcd-b8 " in c)
    assert dcd8.endswith("--trajectory-tie-ratio 0 --trajectory-tie-ratio-for en=0 --max-examples 4000")
    res = subprocess.run(["bash", "scripts/train_builtin_model.sh", "runs/y"], cwd=repo,
                         env={**env, "LENGTHS": "16"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "block length 16" in res.stderr


TABLES_STUB = """import json, pathlib, sys
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
(out / "args.json").write_text(json.dumps(sys.argv[1:])); (out / "tables.md").write_text("tables")
"""


def test_a_whole_study_against_a_stand_in_echocxr(fake_repo):
    """The tables script is stubbed in the run (it is run for real on the run's folders afterwards, here)."""
    repo, env, log = fake_repo
    (repo / "benchmarks" / "phantom_study_tables.py").write_text(TABLES_STUB)
    res = subprocess.run(["bash", "benchmarks/phantom_study.sh", "runs/s"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr + "".join(
        p.read_text() for p in (repo / "runs" / "s").glob("study-*.log"))
    calls = _calls(log)
    run = repo / "runs" / "s"
    # the lanes ran and logged; the raw data points at the phantom set's raw manifests
    assert {p.name for p in run.glob("study-*.log")} == {"study-b4.log", "study-b8.log", "study-ablations-b4.log",
                                                         "study-raw-curve-b4.log"}
    assert os.readlink(run / "raw-data" / "train_zh.json") == env["FAKE_DATA"] + "/train_zh_raw.json"
    assert os.readlink(run / "raw-data" / "images") == env["FAKE_DATA"] + "/images"
    study_evals = [c for c in calls if "--out runs/s/eval-study/" in c]
    T = _tables_module()
    rows = [r for r in T.study_rows((4, 8), 4, (250, 500))
            if r.name not in ("ar", "base-multistep-b4", "base-onestep-b4", "base-multistep-b8", "base-onestep-b8",
                              "dcd-hard-b4")]
    assert len(study_evals) == 2 * len(rows)  # each row once per language; the built-in's rows reused
    assert any("--model runs/s/rad-curve-b4/checkpoint-0000500 " in c for c in study_evals)
    # the evidence: the tables of the run's folders, copied with the command, the plan and the configs
    out = repo / "benchmarks" / "results" / "phantom_study"
    assert json.loads((out / "args.json").read_text()) == [
        "runs/s", "runs/s/study-tables", "--lengths", "4 8", "--ship", "4", "--curve-steps", "250 500"]
    assert {"tables.md", "COMMAND", "plan.txt", "configs"} <= {p.name for p in out.iterdir()}
    assert T.main([str(run), str(repo / "tables")]) == 0  # every planned row has its summary
    entries = json.loads((repo / "tables" / "results.json").read_text())
    assert len(entries) == 2 * len(T.study_rows((4, 8), 4, (250, 500)))
    assert (repo / "tables" / "fig5_rad_curve_zh.png").is_file()
    assert (out / "COMMAND").read_text().strip() == ('LENGTHS="4 8" SHIP=4 CURVE_STEPS=500 CURVE_EVERY=250 '
                                                     'CURVE_LANGS="en zh" bash benchmarks/phantom_study.sh runs/s')
    plan = (out / "plan.txt").read_text().splitlines()
    assert plan and not [ln for ln in plan if " todo " in ln or " resume " in ln]
    assert (out / "configs" / "dcd-soft-b4.json").is_file() and (out / "configs" / "vision.json").is_file()
    # resumed: nothing is trained or evaluated again
    log.unlink()
    res = subprocess.run(["bash", "benchmarks/phantom_study.sh", "runs/s"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not [c for c in _calls(log) if c.startswith(("echocxr train", "echocxr eval --model"))]


def test_rows_kept_in_the_repository_are_put_back_in_a_new_run_folder(fake_repo):
    """A study spread over sessions: every study evaluation is kept under the AR model's hash, and a run folder
    with only the built-in stages gets them back without training or evaluating anything again."""
    repo, env, log = fake_repo
    env = {**env, "FAKE_WEIGHTS": "1"}
    (repo / "benchmarks" / "phantom_study_tables.py").write_text(TABLES_STUB)
    res = subprocess.run(["bash", "benchmarks/phantom_study.sh", "runs/s"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run = repo / "runs" / "s"
    key = hashlib.sha256((run / "ar" / "final" / "model.safetensors").read_bytes()).hexdigest()[:12]
    kept = repo / "benchmarks" / "results" / "phantom_study" / "kept" / f"ar-{key}" / "eval-study"
    study = sorted(p.parent.name for p in (run / "eval-study").glob("*/summary.json"))
    assert study and sorted(p.stem for p in kept.glob("*.json")) == study
    # a new session: only the built-in run's stages and evaluations survive
    for d in run.iterdir():
        if d.name not in ("vision", "ar", "rad-b4", "dcd-b4", "rad-b8", "rad-b8-continued", "dcd-b8", "eval"):
            shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
    log.unlink()
    listing = subprocess.run(["bash", "benchmarks/phantom_study.sh", "--list", "runs/s"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert not [ln for ln in listing if " todo " in ln], listing
    res = subprocess.run(["bash", "benchmarks/phantom_study.sh", "runs/s"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not [c for c in _calls(log) if c.startswith(("echocxr train", "echocxr eval --model"))]
    assert sorted(p.parent.name for p in (run / "eval-study").glob("*/summary.json")) == study
    # another AR model (in a folder without the study's evaluations): nothing kept applies
    (run / "ar" / "final" / "model.safetensors").write_text("other weights")
    shutil.rmtree(run / "eval-study")
    listing = subprocess.run(["bash", "benchmarks/phantom_study.sh", "--list", "runs/s"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert [ln for ln in listing if ln.startswith("train todo dcd-soft-b4:")]  # not trained in this folder


def test_builtin_script_takes_another_vision_length(fake_repo):
    repo, env, log = fake_repo
    res = subprocess.run(["bash", "scripts/train_builtin_model.sh", "runs/v"], cwd=repo,
                         env={**env, "VISION_STEPS": "3400"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _calls(log)[0].endswith("--out runs/v/vision --no-progress --max-steps 3400")
    command = (repo / "benchmarks" / "results" / "builtin_model" / "COMMAND").read_text()
    assert command.startswith("VISION_STEPS=3400 SHIP=4 ")
