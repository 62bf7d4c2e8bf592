"""CLI paper cuts: `report --out` chains into `eval --predictions`, batched rows say their timings are the
batch's, `--dir` walks dataset trees, directory/typo mistakes name the fix, `--version`, cut-short reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from echocxr import __version__
from echocxr.cli import main
from tests.conftest import random_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path):
    """A CheXpert-style tree: patient/study/view1_frontal.jpg repeats file names in every study folder."""
    root = tmp_path / "valid"
    for i, (patient, study) in enumerate([("patient1", "study1"), ("patient1", "study2"), ("patient2", "study1")]):
        (root / patient / study).mkdir(parents=True)
        random_image(i, 80, 80).convert("RGB").save(root / patient / study / "view1_frontal.jpg")
    (root / "patient2" / "study1" / "view2_lateral.png").write_bytes(b"\x89PNG not really")
    (root / ".cache").mkdir()
    random_image(9, 80, 80).save(root / ".cache" / "thumb.png")  # hidden folders are not studies
    return root


def test_report_dir_walks_subfolders_and_chains_into_eval(tiny_vl_dir, tree, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["report", "--model", str(tiny_vl_dir), "--dir", str(tree), "--out", str(out), "--batch-size", "2",
                 "--max-new-tokens", "8"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == ["patient1/study1/view1_frontal", "patient1/study2/view1_frontal",
                                              "patient2/study1/view1_frontal", "patient2/study1/view2_lateral"]
    assert "error" in rows[3] and "report" not in rows[3]
    batched = [r["stats"] for r in rows[:3]]
    assert [s["batch_size"] for s in batched] == [2, 2, 1]  # the last batch lost its unreadable study
    assert [s["timing"] for s in batched] == ["batch", "batch", "study"]
    capsys.readouterr()

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"sample_id": r["sample_id"], "images": [], "language": "en",
                                     "ground_truth": {"findings": "The lungs are clear.", "impression": "Normal."}}
                                    for r in rows]))
    assert main(["eval", "--predictions", str(out), "--manifest", str(manifest), "--out", str(tmp_path / "e"),
                 "--metrics", "rouge_l"]) == 0
    err = capsys.readouterr().err
    assert f"skipped 1 line of {out} with an error and no report" in err
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["n_samples"] == 3


def test_eval_of_only_error_lines_is_a_one_line_error(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"sample_id": "a", "error": "cannot read image a.png"}) + "\n")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"sample_id": "a", "images": [], "ground_truth": {"findings": "x"}}]))
    assert main(["eval", "--predictions", str(preds), "--manifest", str(manifest), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"echocxr eval: error: no predictions in {preds} (1 line with an error, skipped)")


def test_image_given_a_directory_points_to_dir(tmp_path, capsys):
    assert main(["report", "--image", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--image {tmp_path} is a directory" in err and f"--dir {tmp_path}" in err


@pytest.mark.parametrize("argv,hint", [
    (["report", "--image", "x.png", "--temprature", "0.5"], "unrecognized argument --temprature; did you mean --temperature?"),
    (["eval", "--predictons", "p.jsonl"], "did you mean --predictions?"),
    (["train", "ar", "--out", "o", "--max-stpes", "3"], "did you mean --max-steps?"),
    (["serve", "--prot", "8000"], "did you mean --port?"),
    (["bench", "decode", "--batch-szes", "1"], "did you mean --batch-sizes?"),
    (["phantoms", "--out", "o", "--sead", "1"], "did you mean --seed?"),
    (["demo", "--lnag", "zh"], "did you mean --lang?"),
    (["reprot", "--image", "x.png"], "invalid choice: 'reprot'"),
    (["report", "--image", "x.png", "--decoder", "onestp"], "did you mean 'onestep'?"),
    (["report", "--image", "x.png", "--zzz"], "unrecognized argument --zzz (see"),
])
def test_typos_name_the_closest_flag(argv, hint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"echocxr {__version__}"
    proc = subprocess.run([sys.executable, "-m", "echocxr", "--version"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"echocxr {__version__}"


def test_report_says_when_it_stopped_at_the_token_limit(tiny_vl_dir, tmp_path, capsys):
    image = tmp_path / "a.png"
    random_image(0, 80, 80).save(image)
    assert main(["report", "--model", str(tiny_vl_dir), "--image", str(image), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # the report itself, alone on stdout
    assert ("echocxr report: warning: the report stopped at the token limit (--max-new-tokens 4) before <eos>: "
            "it may be cut short") in captured.err
    assert main(["report", "--model", str(tiny_vl_dir), "--image", str(image), "--max-new-tokens", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["stop"] == "length" and "token limit" not in captured.err


@pytest.mark.parametrize("value", ["en", "en=", "=0.3", "en=x"])
def test_a_bad_per_language_tie_ratio_is_one_line(value, tmp_path, capsys):
    assert main(["train", "dcd", "--out", str(tmp_path / "o"), "--trajectory-tie-ratio-for", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trajectory-tie-ratio-for takes LANG=R" in err, err
    assert not (tmp_path / "o").exists()


def test_per_language_tie_ratios_parse():
    from echocxr.cli.train import _ratios_by_language

    assert _ratios_by_language(["en=0.3", "zh=0.5"]) == {"en": 0.3, "zh": 0.5}
    assert _ratios_by_language(None) is None


@pytest.mark.parametrize("value,needle", [("en", "--trajectory-tie-break-for takes LANG=RULE"),
                                          ("=image", "--trajectory-tie-break-for takes LANG=RULE"),
                                          ("en=random", "trajectory_tie_break_by_language must map")])
def test_a_bad_per_language_tie_break_is_one_line(value, needle, tmp_path, capsys):
    assert main(["train", "dcd", "--out", str(tmp_path / "o"), "--trajectory-tie-break-for", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_per_language_tie_breaks_parse():
    from echocxr.cli.train import _breaks_by_language

    assert _breaks_by_language(["en=image", "zh=lowest_id"]) == {"en": "image", "zh": "lowest_id"}
    assert _breaks_by_language(None) is None
