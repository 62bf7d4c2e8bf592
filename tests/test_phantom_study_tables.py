"""benchmarks/phantom_study_tables.py: results.json and the paper-shaped tables from evaluation summaries
(synthetic ones written here, with relative changes worked out by hand), partial runs, and the real summaries
of a built-in run when this machine has one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_RUN = Path("/work/runs/b")


def _load():
    spec = importlib.util.spec_from_file_location("phantom_study_tables", ROOT / "benchmarks" / "phantom_study_tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


T = _load()


def _summary(run: Path, folder: str, row: str, lang: str, **metrics) -> None:
    d = run / folder / f"{row}-{lang}"
    d.mkdir(parents=True)
    base = {"name": f"{row}-{lang}", "n_samples": 240, "units": {"rouge_l": "percent"}, "metric_info": {}}
    (d / "summary.json").write_text(json.dumps({**base, **metrics}))


def _section(text: str, title: str, lang: str) -> str:
    """The body of `### LANG` in the table whose heading starts with `title`."""
    part = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return part.split(f"### {lang}\n", 1)[1].split("\n### ", 1)[0]


def _line(section: str, first: str, col: int | None = None) -> list[str]:
    for ln in section.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if ln.startswith("|") and (cells[0] == first if col is None else cells[col] == first):
            return cells
    raise AssertionError(f"no row {first!r} in:\n{section}")


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    # built-in rows in eval/ (under their own names), study rows in eval-study/
    _summary(run, "eval", "ar", "en", rouge_l=50.0, cider=4.0, semscore=80.0, tpf=1.0, tps=100.0)
    _summary(run, "eval", "ar", "zh", rouge_l=70.0, cider=2.0, semscore=90.0, tpf=1.0, tps=120.0)
    _summary(run, "eval-study", "dcd-soft-b4", "en", rouge_l=45.0, cider=5.0, semscore=80.0, tpf=4.0, tps=300.0)
    _summary(run, "eval-study", "dcd-soft-b4", "zh", rouge_l=63.0, cider=2.0, semscore=99.0, tpf=3.5, tps=280.0)
    _summary(run, "eval", "rad-native-onestep-b4", "en", rouge_l=40.0, cider=2.0, semscore=64.0, tpf=4.0)
    _summary(run, "eval", "rad-multistep-b4", "en", rouge_l=10.0, tpf=1.5)  # replaced by the study's own
    _summary(run, "eval-study", "base-multistep-b4", "en", rouge_l=20.0, tpf=1.6)
    _summary(run, "eval-study", "raw-ar", "en", rouge_l=20.0, cider=1.0)
    _summary(run, "eval-study", "raw-ar-normref", "en", rouge_l=25.0, cider=2.0)
    _summary(run, "eval-study", "dcd-soft-noeos-b4", "en", rouge_l=30.0, tpf=3.0)
    _summary(run, "eval-study", "t3d-b4", "en", rouge_l=44.0, tpf=2.0)
    (run / "t3d-b4" / "final").mkdir(parents=True)  # its saved decoding names the row's decoder
    (run / "t3d-b4" / "final" / "echocxr.json").write_text(json.dumps(
        {"decoder": "multistep", "steps": 2, "remasking": "low_confidence_static", "threshold": 0.85}))
    return run


def test_results_json_has_one_entry_per_row_and_language(run, tmp_path):
    out = tmp_path / "out"
    assert T.main([str(run), str(out), "--lengths", "4"]) == 0
    entries = json.loads((out / "results.json").read_text())
    got = {(e["name"], e["language"]): e for e in entries}
    assert set(got) == {("ar", "en"), ("ar", "zh"), ("dcd-soft-b4", "en"), ("dcd-soft-b4", "zh"),
                        ("base-onestep-b4", "en"), ("base-multistep-b4", "en"), ("raw-ar", "en"),
                        ("raw-ar-normref", "en"), ("dcd-soft-noeos-b4", "en"), ("t3d-b4", "en")}
    e = got[("dcd-soft-b4", "en")]
    assert (e["method"], e["block_length"], e["decoder"], e["rouge_l"], e["tps"]) == ("dcd-soft", 4, "onestep", 45.0, 300.0)
    assert e["n_samples"] == 240 and "units" not in e and "metric_info" not in e
    assert got[("ar", "en")]["block_length"] is None and got[("ar", "en")]["decoder"] == "ar"
    assert got[("ar", "en")]["summary"].endswith("eval/ar-en/summary.json")
    # the study's own evaluation wins over the built-in run's
    assert got[("base-multistep-b4", "en")]["rouge_l"] == 20.0
    assert "eval-study" in got[("base-multistep-b4", "en")]["summary"]
    assert (got[("raw-ar", "en")]["data"], got[("raw-ar", "en")]["reference"]) == ("raw", "raw")
    assert got[("raw-ar-normref", "en")]["reference"] == "normalised"
    assert got[("t3d-b4", "en")]["decoder"] == "its paper's: multistep (2 steps, low_confidence_static, threshold 0.85)"
    assert T.study_rows((4,), 4)[0].name == "ar"


def test_relative_changes_worked_out_by_hand(run, tmp_path):
    out = tmp_path / "out"
    T.main([str(run), str(out), "--lengths", "4"])
    md = (out / "tables.md").read_text()
    # Table 1, vs AR: ROUGE-L 45 against 50 is -10%, CIDEr 5 against 4 is +25%, SemScore equal
    en = _section(md, "Table 1", "EN")
    dcd = _line(en, "DCD (paper: soft, SW, <eos> CE)")
    assert dcd[1:4] == ["4", "onestep", "45.00 (-10.0%)"]
    assert "5.000 (+25.0%)" in dcd and "80.00 (+0.0%)" in dcd and dcd[-2:] == ["4.00", "300.0"]
    assert _line(en, "AR")[3] == "50.00"  # the reference itself: no percentage
    assert "`ce-b4`" in en and "`dcd-soft-b4`" not in en.split("Not evaluated")[1]
    # the mean of EN and ZH: AR 60, DCD 54 -> -10%; SemScore 89.5 against 85 -> +5.3%
    mean = _section(md, "Table 1", "mean of EN and ZH")
    dcd = _line(mean, "DCD (paper: soft, SW, <eos> CE)")
    assert dcd[3] == "54.00 (-10.0%)" and "89.50 (+5.3%)" in dcd and dcd[-2] == "3.75"
    assert "Base (native one-step)" not in mean  # only EN evaluated: no mean
    # Table 3, vs Base native one-step: 45 against 40 is +12.5%, SemScore 80 against 64 is +25%
    t3 = _section(md, "Table 3", "EN")
    assert _line(t3, "DCD (paper: soft)", col=1)[2] == "45.00 (+12.5%)"
    assert "80.00 (+25.0%)" in _line(t3, "DCD (paper: soft)", col=1)
    assert _line(t3, "Base (native one-step)", col=1)[2] == "40.00"
    # Table 4, unnormalised against the normalised row of the stage (AR, 50): 20 -> -60%, 25 -> -50%
    t4 = _section(md, "Table 4", "EN")
    assert _line(t4, "raw", col=2)[3] == "20.00 (-60.0%)"
    raw_norm = [ln for ln in t4.splitlines() if "| Unnormalised | normalised |" in ln]
    assert len(raw_norm) == 1 and "25.00 (-50.0%)" in raw_norm[0] and "2.000 (-50.0%)" in raw_norm[0]
    # Table 2: the ablation that is there, with its marks; the others listed as skipped
    t2 = _section(md, "Table 2", "EN")
    assert _line(t2, "dcd-soft-noeos-b4")[1:5] == ["soft", "x", "", ""]
    assert "`dcd-soft-rkl-b4`" in t2


def test_rad_curve_table_and_plots(tmp_path):
    run = tmp_path / "run"
    _summary(run, "eval", "ar", "en", rouge_l=70.0, cider=3.5, finding_f1_micro=85.0, semscore=90.0, tpf=1.0)
    for step, tpf in ((250, 1.4), (500, 1.5), (750, 1.6)):
        _summary(run, "eval-study", T.curve_name(4, step), "en", rouge_l=60.0, cider=3.0, finding_f1_micro=70.0,
                 semscore=80.0, tpf=tpf)
    out = tmp_path / "out"
    T.main([str(run), str(out)])  # steps found from the folders
    md = (out / "tables.md").read_text()
    fig = _section(md, "Fig. 5", "EN")
    # mean quality = (60 + 3.0 x 10 + 70 + 80) / 4 = 60
    assert _line(fig, "500") == ["500", "60.00", "3.000", "70.00", "80.00", "60.00", "1.50"]
    assert _line(fig, "AR")[5] == "70.00"  # (70 + 35 + 85 + 90) / 4
    assert (out / "fig5_rad_curve_en.png").stat().st_size > 0
    assert not (out / "fig5_rad_curve_zh.png").exists()
    assert (out / "quality_vs_tpf_en.png").stat().st_size > 0
    entries = json.loads((out / "results.json").read_text())
    assert sorted(e["step"] for e in entries if e["method"] == "rad-curve") == [250, 500, 750]
    # planned steps that are not evaluated are listed
    T.main([str(run), str(out), "--curve-steps", "250 500 750 1000"])
    assert "`rad-curve-b4-step0001000`" in _section((out / "tables.md").read_text(), "Fig. 5", "EN")


def test_an_empty_run_gives_empty_tables(tmp_path):
    out = tmp_path / "out"
    assert T.main([str(tmp_path / "nothing"), str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == []
    md = (out / "tables.md").read_text()
    assert md.count("(no row evaluated yet)") == 12 and "0 of " in md
    assert not list(out.glob("*.png"))


def test_rows_cover_the_study():
    names = {r.name for r in T.study_rows((4, 8), 4, (250, 500))}
    for L in (4, 8):
        assert {f"base-multistep-b{L}", f"base-onestep-b{L}", f"dcd-soft-b{L}", f"dcd-hard-b{L}", f"ce-b{L}"} <= names
        for b in T.BASELINES:
            assert {f"{b}-b{L}", f"{b}-onestep-b{L}"} <= names
    assert {"ar", "dcd-soft-nosw-b4", "dcd-soft-noeos-b4", "dcd-soft-rkl-b4", "raw-ar", "raw-base-multistep-b4",
            "raw-dcd-soft-b4", "raw-ar-normref", T.curve_name(4, 250), T.curve_name(4, 500)} <= names
    assert len(names) == len(T.study_rows((4, 8), 4, (250, 500)))  # no name twice


@pytest.mark.skipif(not (REAL_RUN / "eval").is_dir(), reason="no built-in run on this machine")
def test_real_builtin_summaries(tmp_path):
    out = tmp_path / "real"
    assert T.main([str(REAL_RUN), str(out)]) == 0
    entries = json.loads((out / "results.json").read_text())
    got = {(e["name"], e["language"]) for e in entries}
    assert {("ar", "en"), ("ar", "zh")} <= got
    for e in entries:
        assert e["language"] in ("en", "zh") and "rouge_l" in e and "tpf" in e
    md = (out / "tables.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 5"):
        assert f"## {title}" in md
    assert (out / "quality_vs_tpf_en.png").is_file()
