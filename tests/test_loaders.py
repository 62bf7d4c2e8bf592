"""Dataset loaders on small fake trees laid out like each published dataset."""

from __future__ import annotations

import csv
import gzip
import io
import json
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from echocxr.data.loaders import (
    SkippedImagesWarning,
    convert_dataset,
    get_loader,
    load_dataset,
    loader_names,
)
from echocxr.data.manifest import load_manifest
from echocxr.errors import UserError


def png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


def jpg(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path, format="JPEG")
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x01 definitely not an image " * 8)
    return path


def write_csv(path: Path, rows: list[dict], gz: bool = False) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
    else:
        path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def load_quiet(*args, **kwargs):
    """load_dataset asserting that it raised no SkippedImagesWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImagesWarning)
        return load_dataset(*args, **kwargs)


def load_warned(*args, **kwargs):
    """load_dataset asserting exactly ONE SkippedImagesWarning; returns (samples, message)."""
    with pytest.warns(SkippedImagesWarning) as record:
        samples = load_dataset(*args, **kwargs)
    assert len(record) == 1
    return samples, str(record[0].message)


# ----------------------------------------------------------------------------- MIMIC-CXR-JPG

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough

 COMPARISON:  None.

 FINDINGS:

 Heart size is normal.  Lungs are clear.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


@pytest.fixture
def mimic_root(tmp_path):
    root = tmp_path / "mimic-cxr-jpg" / "2.1.0"
    studies = [  # subject, study, split, [(dicom, view)]
        ("10000032", "50000001", "train", [("d-lat", "LATERAL"), ("d-pa", "PA")]),
        ("10000032", "50000002", "test", [("d-ap", "AP")]),
        ("11000001", "50000003", "test", [("d-bad", "PA"), ("d-ok", "LL")]),
        ("11000001", "50000004", "test", [("d-missing", "PA")]),
        ("12000005", "50000005", "validate", [("d-v", "PA")]),
    ]
    split_rows, meta_rows = [], []
    for subject, study, split, dicoms in studies:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for dicom, view in dicoms:
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            meta_rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                              "Rows": 8, "Columns": 8})
            if dicom == "d-bad":
                garbage(folder / f"{dicom}.jpg")
            elif dicom != "d-missing":
                jpg(folder / f"{dicom}.jpg")
        report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report.write_text(MIMIC_REPORT.replace("Lungs are clear.", f"Study {study}."), encoding="utf-8")
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", split_rows, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta_rows, gz=True)
    return root


def test_mimic_reads_layout_orders_views_and_splits(mimic_root):
    train = load_quiet("mimic-cxr-jpg", mimic_root, split="train")
    (s,) = train
    assert s.sample_id == "mimic_s50000001" and s.language == "en"
    assert [Path(p).name for p in s.images] == ["d-pa.jpg", "d-lat.jpg"]  # frontal first
    assert s.findings == "Heart size is normal. Study 50000001."
    assert s.impression == "No acute cardiopulmonary process."
    val = load_quiet("mimic", mimic_root, split="val")  # our "val" is MIMIC's "validate"
    assert [x.sample_id for x in val] == ["mimic_s50000005"]


def test_mimic_skips_bad_and_missing_images_with_one_warning(mimic_root):
    test, msg = load_warned("mimic-cxr-jpg", mimic_root, split="test")
    assert [s.sample_id for s in test] == ["mimic_s50000002", "mimic_s50000003"]
    assert [Path(p).name for p in test[1].images] == ["d-ok.jpg"]  # the corrupt PA view is skipped
    assert "skipped 2 missing/unreadable image(s)" in msg and "dropped 1 study(ies) left with no usable image" in msg


def test_mimic_views_filter_and_reports_zip(mimic_root, tmp_path):
    zpath = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for txt in (mimic_root / "files").rglob("s*.txt"):
            zf.write(txt, "mimic-cxr-reports/" + txt.relative_to(mimic_root).as_posix())
            txt.unlink()
    samples = load_quiet("mimic-cxr-jpg", mimic_root, split="train", reports=zpath, views=["PA", "AP"])
    assert [Path(p).name for p in samples[0].images] == ["d-pa.jpg"]
    assert samples[0].impression == "No acute cardiopulmonary process."
    with pytest.raises(UserError, match="report files found"):
        load_dataset("mimic-cxr-jpg", mimic_root, split="train")  # reports now only in the zip


def test_mimic_is_english_only(mimic_root):
    with pytest.raises(UserError, match="rewriter"):
        load_dataset("mimic-cxr-jpg", mimic_root, language="zh")


# ----------------------------------------------------------------------------- CheXpert Plus


@pytest.fixture
def chexpert_root(tmp_path):
    root = tmp_path / "chexpert-plus"
    base = dict(frontal_lateral="Frontal", ap_pa="PA", report="", section_findings="", section_impression="")
    rows = [
        dict(base, path_to_image="train/patient00001/study1/view1_frontal.jpg", split="train",
             section_findings="Lungs are clear.\n", section_impression="  Normal chest. "),
        dict(base, path_to_image="train/patient00001/study1/view2_lateral.jpg", split="train",
             frontal_lateral="Lateral", ap_pa="", section_findings="Lungs are clear.", section_impression="Normal chest."),
        dict(base, path_to_image="train/patient00002/study3/view1_frontal.jpg", split="train",
             report="HISTORY: cough\n\nFINDINGS: Small left effusion.\n\nIMPRESSION: Left effusion.\n"),
        dict(base, path_to_image="train/patient00003/study1/view1_frontal.jpg", split="train",
             section_impression="Cardiomegaly."),  # its image is missing
        dict(base, path_to_image="valid/patient64541/study1/view1_frontal.jpg", split="valid",
             section_findings="No pneumothorax.", section_impression="Normal."),
    ]
    write_csv(root / "df_chexpert_plus_240401.csv", rows)
    for r in rows:
        if "patient00003" not in r["path_to_image"]:
            png(root / "PNG" / "PNG" / Path(r["path_to_image"]).with_suffix(".png"))
    return root


def test_chexpert_plus_groups_studies_and_finds_pngs(chexpert_root):
    train, msg = load_warned("chexpert-plus", chexpert_root, split="train")
    assert "dropped 1 study(ies) left with no usable image" in msg
    first, second = train
    assert first.sample_id == "chexpertplus_train_patient00001_study1"
    assert [Path(p).name for p in first.images] == ["view1_frontal.png", "view2_lateral.png"]
    assert (first.findings, first.impression) == ("Lungs are clear.", "Normal chest.")
    # Empty section columns fall back to splitting the full report.
    assert (second.findings, second.impression) == ("Small left effusion.", "Left effusion.")
    valid = load_quiet("chexpert", chexpert_root, split="validation")
    assert [s.sample_id for s in valid] == ["chexpertplus_valid_patient64541_study1"]
    frontal = load_quiet("chexpert-plus", chexpert_root, views=["frontal"], limit=1)
    assert [Path(p).name for p in frontal[0].images] == ["view1_frontal.png"]


def test_chexpert_plus_has_no_test_split(chexpert_root):
    with pytest.raises(UserError, match="unknown split 'test'; available: train, val"):
        load_dataset("chexpert-plus", chexpert_root, split="test")


# ----------------------------------------------------------------------------- ReXGradient


def rex_image(root: Path, patient: str, study: str, inst: str) -> str:
    rel = f"deid_png/{patient}/{study}/studies/1.2.3.{inst}/series/1.2.4.{inst}/instances/1.2.5.{inst}.png"
    png(root / rel)
    return rel


def test_rexgradient_json_metadata(tmp_path):
    root = tmp_path / "ReXGradient-160K"
    a1 = rex_image(root, "GRDNP1", "GRDNS1", "1")
    a2 = rex_image(root, "GRDNP1", "GRDNS1", "2")
    b1 = rex_image(root, "GRDNP2", "GRDNS2", "3")
    meta = {
        "GRDNS1": {"PatientID": "GRDNP1", "ImagePath": [a1, "../" + a2], "ImageViewPosition": ["PA", "LATERAL"],
                   "Indication": "cough", "Findings": "Lungs clear. ", "Impression": "No acute disease."},
        "GRDNS2": {"ImagePath": [b1, "deid_png/GRDNP2/missing.png"], "Findings": "", "Impression": "Normal."},
        "GRDNS3": {"ImagePath": [b1], "Findings": "", "Impression": ""},  # no text
    }
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "test_metadata.json").write_text(json.dumps(meta))
    samples, msg = load_warned("rexgradient", root, split="test")
    assert [s.sample_id for s in samples] == ["rexgradient_GRDNS1", "rexgradient_GRDNS2"]
    assert len(samples[0].images) == 2 and all(Path(p).is_file() for p in samples[0].images)
    assert (samples[0].findings, samples[0].impression) == ("Lungs clear.", "No acute disease.")
    assert "skipped 1 missing/unreadable image(s)" in msg and "1 study(ies) with no Findings/Impression" in msg
    with pytest.raises(UserError, match="metadata not found"):
        load_dataset("rexgradient", root, split="train")


def test_rexgradient_csv_rows_per_image(tmp_path):
    root = tmp_path / "rex"
    a1 = rex_image(root, "P1", "S1", "1")
    a2 = rex_image(root, "P1", "S1", "2")
    rows = [
        {"id": "S1", "ImagePath": a1, "Findings": "Heart normal.", "Impression": "Normal."},
        {"id": "S1", "ImagePath": a2, "Findings": "Heart normal.", "Impression": "Normal."},
        {"id": "S2", "ImagePath": json.dumps([a1]), "Findings": "", "Impression": "Stable."},
    ]
    write_csv(root / "metadata" / "valid_metadata.csv", rows)
    samples = load_quiet("rexgradient-160k", root, split="val")
    assert [len(s.images) for s in samples] == [2, 1]


# ----------------------------------------------------------------------------- IU X-ray

IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{uid}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Chest pain</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
{images}
</eCitation>"""


@pytest.fixture
def iu_root(tmp_path):
    root = tmp_path / "openi"
    reports = [
        ("1", "Heart normal.", "Normal chest.", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        ("2", "", "No active disease.", ["CXR2_1_IM-0652-1001"]),
        ("3", "Clear lungs.", "Negative.", []),  # report without images
        ("4", "Small effusion.", "Effusion.", ["CXR4_IM-2050-1001"]),  # image missing
    ]
    for uid, f, i, imgs in reports:
        parent = "".join(f'<parentImage id="{x}"><figureId>F1</figureId></parentImage>' for x in imgs)
        path = root / "ecgen-radiology" / f"{uid}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(IU_XML.format(uid=uid, findings=f, impression=i, images=parent), encoding="utf-8")
        for x in imgs:
            if uid != "4":
                png(root / "NLMCXR_png" / f"{x}.png")
    return root


def test_iu_xray_layout(iu_root):
    samples, msg = load_warned("iu-xray", iu_root)
    assert [s.sample_id for s in samples] == ["iu_CXR1", "iu_CXR2"]
    assert [Path(p).name for p in samples[0].images] == ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"]
    assert (samples[1].findings, samples[1].impression) == ("", "No active disease.")
    assert "kept 2 of 4 studies" in msg and "dropped 2 study(ies) left with no usable image" in msg


def test_iu_xray_hash_split_is_a_partition(iu_root):
    ids = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)  # CXR3 lists no image at all
        for split in ("train", "val", "test"):
            try:
                ids[split] = {s.sample_id for s in load_dataset("iu", iu_root, split=split, image_check="none")}
            except UserError:  # a split may be empty with only four reports
                ids[split] = set()
    assert set().union(*ids.values()) == {"iu_CXR1", "iu_CXR2", "iu_CXR4"}
    assert sum(len(v) for v in ids.values()) == 3


def test_iu_xray_with_real_report_archive(tmp_path):
    from tests.conftest import iu_archive_or_skip

    tgz = iu_archive_or_skip()
    for name in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR10_IM-0002-1001"):
        png(tmp_path / "NLMCXR_png" / f"{name}.png")
    samples, msg = load_warned("iu-xray", tmp_path, reports=tgz, image_check="exists")
    assert {s.sample_id for s in samples} == {"iu_CXR1", "iu_CXR10"}
    cxr1 = next(s for s in samples if s.sample_id == "iu_CXR1")
    assert len(cxr1.images) == 2 and cxr1.findings.startswith("The cardiac silhouette")
    assert "kept 2 of 3955 studies" in msg


# ----------------------------------------------------------------------------- official ECHO json


def test_echo_json_official_shape(tmp_path):
    eval_dir = tmp_path / "eval"
    img = png(eval_dir / "CXRTest" / "mimic" / "files" / "p10" / "p1" / "s1" / "a.png")
    rel_from_json = "../CXRTest/mimic/files/p10/p1/s1/a.png"
    rel_from_eval = "CXRTest/mimic/files/p10/p1/s1/a.png"
    records = [
        {"sample_id": "en1", "images": [rel_from_json], "ground_truth": {"findings": "Lungs clear.", "impression": "Normal."}},
        {"sample_id": "zh1", "images": [rel_from_eval], "ground_truth": {"findings": "两肺野清晰。", "impression": "心肺未见异常。"}},
        {"sample_id": "str", "images": [str(img)], "ground_truth": "Findings: Heart normal. Impression: Normal."},
        {"sample_id": "gone", "images": ["../CXRTest/missing.png"], "ground_truth": {"findings": "x", "impression": "y"}},
    ]
    js = eval_dir / "jsons" / "mimic_test_EN.json"
    js.parent.mkdir(parents=True)
    js.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    samples, msg = load_warned("echo-json", js, image_root=eval_dir)
    assert [s.sample_id for s in samples] == ["en1", "zh1", "str"]
    assert [s.language for s in samples] == ["en", "zh", "en"]
    assert all(Path(p).resolve() == img.resolve() for s in samples for p in s.images)
    assert (samples[2].findings, samples[2].impression) == ("Heart normal.", "Normal.")
    with pytest.raises(UserError, match="already one split"):
        load_dataset("echo-json", js, split="test")
    with pytest.raises(UserError, match="needs 'images' and 'ground_truth'"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([{"sample_id": "x"}]))
        load_dataset("echo-json", bad)


# ----------------------------------------------------------------------------- registry and conversion


def test_registry_names_and_errors(tmp_path):
    assert {"mimic-cxr-jpg", "chexpert-plus", "rexgradient", "iu-xray", "echo-json"} <= set(loader_names())
    assert get_loader("MIMIC_CXR").name == "mimic-cxr-jpg"
    with pytest.raises(UserError, match="unknown dataset 'padchest'"):
        get_loader("padchest")
    with pytest.raises(UserError, match="bad option"):
        get_loader("iu-xray", colour="blue")
    with pytest.raises(UserError, match="dataset root not found"):
        load_dataset("iu-xray", tmp_path / "nowhere")
    with pytest.raises(UserError, match="reports not found"):
        load_dataset("iu-xray", tmp_path)


def test_convert_writes_a_manifest_that_reads_back(iu_root, tmp_path):
    out = tmp_path / "manifests" / "iu.json"
    with pytest.warns(SkippedImagesWarning):
        samples = convert_dataset("iu-xray", iu_root, out)
    records = json.loads(out.read_text())
    assert all(not Path(p).is_absolute() for r in records for p in r["images"])  # portable manifest
    back = load_manifest(out)
    assert [s.sample_id for s in back] == [s.sample_id for s in samples]
    assert all(Path(p).resolve() == Path(q).resolve() for a, b in zip(back, samples, strict=True)
               for p, q in zip(a.images, b.images, strict=True))
