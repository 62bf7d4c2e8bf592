"""CXR-Phantom: vocabulary, sampling, grammar, rendering (laterality, zones), set writing and the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from echocxr.cli import main
from echocxr.data.manifest import load_manifest
from echocxr.data.phantom import (
    FINDING_LABELS,
    FINDING_TYPES,
    Finding,
    PhantomCase,
    finding_type,
    phantom_reports,
    render_case,
    sample_case,
    write_phantom_set,
    write_report,
)
from echocxr.data.phantom.grammar import EN, ZH
from echocxr.data.phantom.render import _anatomy, case_rng


def test_vocabulary_is_fixed_and_typed():
    assert len(FINDING_LABELS) == len(set(FINDING_LABELS)) == 34
    pathology = {finding_type(lab) for lab in FINDING_LABELS if not lab.startswith("device_")}
    assert len(pathology) >= 9 and len(set(FINDING_TYPES)) >= 13
    assert {"effusion_left_small", "pneumothorax_right", "device_ett", "consolidation_left_upper",
            "mass_right_lower", "hilar_enlargement_left"} <= set(FINDING_LABELS)
    assert finding_type("effusion_left_small") == "effusion"
    assert finding_type("hilar_enlargement_right") == "hilar_enlargement"
    with pytest.raises(ValueError):
        finding_type("fracture")


def test_sampling_prevalence_and_determinism():
    cases = [sample_case(0, i) for i in range(2000)]
    normal = sum(c.is_normal for c in cases) / len(cases)
    assert 0.30 <= normal <= 0.42
    seen = Counter(lab for c in cases for lab in c.labels)
    assert set(seen) == set(FINDING_LABELS)  # every label occurs
    assert all(c.labels == sorted(c.labels) and set(c.labels) <= set(FINDING_LABELS) for c in cases)
    assert sample_case(0, 17) == sample_case(0, 17)
    assert [sample_case(1, i).labels for i in range(50)] != [c.labels for c in cases[:50]]


def test_every_statement_has_three_phrasings_in_both_languages():
    assert EN.keys() == ZH.keys()
    for table in (EN, ZH):
        for key, options in table.items():
            assert len(options) >= 3 and len(set(options)) == len(options), key


def test_phrasing_is_random_and_independent_of_the_image():
    # many normal studies: same findings, so any variation is the text stream alone; all phrasings occur
    normal = [c for c in (sample_case(3, i) for i in range(900)) if c.is_normal][:300]
    heart = Counter(write_report(c, "en")[0].split(". ")[1] for c in normal)
    assert set(heart) == {s.rstrip(".") for s in EN["heart_normal"]}
    assert min(heart.values()) / len(normal) > 0.2
    assert len({write_report(c, "en") for c in normal}) > 250
    # the image stream does not depend on the text: same pixels whatever the report says
    c = normal[0]
    before = render_case(c, 64)[0]
    write_report(c, "zh", "raw")
    assert np.array_equal(before, render_case(c, 64)[0])


def test_report_sections_and_reference_strings():
    for r in phantom_reports(5, 40):
        assert r.findings and r.impression
        if r.language == "en":
            assert r.reference.startswith("Findings: ") and r.reference.endswith(".")
            assert not r.impression.endswith(".")
        else:
            assert r.reference.startswith("所见：") and " 结论：" in r.reference and r.impression.endswith("。")
    # normalised states every region; raw reports by exception
    normal = next(c for c in (sample_case(0, i) for i in range(50)) if c.is_normal)
    norm, raw = write_report(normal, "en", "normalised")[0], write_report(normal, "en", "raw")[0]
    assert len(re.findall(r"\.", norm)) == 10 and len(raw) < len(norm) / 2


def _diff_mask(case: PhantomCase, extra: Finding, size: int = 128) -> np.ndarray:
    base = render_case(case, size)[0].astype(np.int16)
    with_f = render_case(PhantomCase(case.seed, case.index, (*case.findings, extra)), size)[0].astype(np.int16)
    return np.abs(with_f - base) > 25


@pytest.mark.parametrize("finding", [
    Finding("effusion", "left", size="large"), Finding("effusion", "right", size="large"),
    Finding("consolidation", "right", "upper"), Finding("consolidation", "left", "lower"),
    Finding("mass", "left", "middle", attrs=(("cm", 6.0),)), Finding("hilar_enlargement", "right"),
    Finding("pneumothorax", "left"),
])
def test_findings_are_drawn_on_the_patients_side_and_zone(finding):
    """Radiological convention: the patient's right is on the image's left."""
    case = next(c for c in (sample_case(2, i) for i in range(50)) if c.is_normal)
    mask = _diff_mask(case, finding)
    rows, cols = np.nonzero(mask)
    assert len(cols) > 20, "finding not visible"
    on_image_left = (cols < mask.shape[1] / 2).mean()
    assert on_image_left > 0.9 if finding.side == "right" else on_image_left < 0.1
    if finding.zone is not None:
        a = _anatomy(case, case_rng(case.seed, case.index, 1, 0))
        top, bottom = a.apex, a.costophrenic[finding.side]
        z = ["upper", "middle", "lower"].index(finding.zone)
        centre = rows.mean() / mask.shape[0]
        assert top + (bottom - top) * z / 3 <= centre <= top + (bottom - top) * (z + 1) / 3


def test_cardiomegaly_widens_the_heart():
    case = next(c for c in (sample_case(4, i) for i in range(50)) if c.is_normal)
    big = PhantomCase(case.seed, case.index, (Finding("cardiomegaly"),))
    row = lambda img: img[int(0.62 * 128)].astype(float)  # noqa: E731 - a row through the heart
    bright = lambda r: int((r > 150).sum())  # noqa: E731
    assert bright(row(render_case(big, 128)[0])) > bright(row(render_case(case, 128)[0])) + 8


def test_write_phantom_set_is_deterministic_and_well_formed(tmp_path: Path):
    kw = dict(n=12, seed=3, image_size=64, views=("frontal", "lateral"), splits=(0.5, 0.25, 0.25), progress=False)
    write_phantom_set(tmp_path / "a", **kw)
    summary = write_phantom_set(tmp_path / "b", **kw)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 12 * 2 + 12 + 1
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    root = tmp_path / "a"
    assert summary["split_sizes"] == {"train": 6, "val": 3, "test": 3}
    ids = {}
    for split in ("train", "val", "test"):
        for lang in ("en", "zh"):
            norm = load_manifest(root / f"{split}_{lang}.json")
            raw = load_manifest(root / f"{split}_{lang}_raw.json")
            assert len(norm) == len(raw) == summary["split_sizes"][split]
            for s, r in zip(norm, raw, strict=True):
                assert s.sample_id == r.sample_id and s.labels == r.labels and s.language == lang
                assert s.findings != r.findings or not s.labels  # raw omits normal regions
                assert [Path(p).name for p in s.images] == [f"{s.sample_id}_frontal.png", f"{s.sample_id}_lateral.png"]
                for p in s.images:
                    with Image.open(p) as im:
                        assert im.mode == "L" and im.size == (64, 64)
            ids.setdefault(split, set()).update(s.sample_id for s in norm)
    assert sum(len(v) for v in ids.values()) == 12  # splits partition the studies
    rec = json.loads((root / "train_en.json").read_text())[0]
    assert set(rec) == {"sample_id", "images", "ground_truth", "labels", "language"}
    assert set(rec["ground_truth"]) == {"findings", "impression"}
    assert not Path(rec["images"][0]).is_absolute()


def test_parallel_rendering_writes_the_same_bytes(tmp_path: Path):
    kw = dict(n=64, seed=5, image_size=32, progress=False)  # 64 studies: the smallest set rendered in parallel
    write_phantom_set(tmp_path / "one", workers=1, **kw)
    write_phantom_set(tmp_path / "two", workers=2, **kw)
    rel = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert rel == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert len(rel) == 64 + 12 + 1
    for r in rel:
        assert (tmp_path / "one" / r).read_bytes() == (tmp_path / "two" / r).read_bytes(), r


def test_cli_phantoms(tmp_path: Path, capsys):
    assert main(["phantoms", "--out", str(tmp_path / "s"), "--n", "4", "--image-size", "48", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    assert len(load_manifest(tmp_path / "s" / "train_zh.json")) == 3
    assert main(["phantoms", "--out", str(tmp_path / "x"), "--n", "4", "--views", "frontal,oblique"]) == 2
    assert "--views" in capsys.readouterr().err
    assert main(["phantoms", "--out", str(tmp_path / "x"), "--n", "4", "--splits", "0.5,0.5,0.5"]) == 2
    err = capsys.readouterr().err
    assert "--splits" in err and len(err.strip().splitlines()) == 1
    assert main(["phantoms", "--out", str(tmp_path / "x"), "--n", "4", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and len(err.strip().splitlines()) == 1
