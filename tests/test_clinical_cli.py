"""`echocxr report --format text|json|fhir|dicom-sr` with the built-in model, and its one-line errors."""

from __future__ import annotations

import json

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from PIL import Image

from echocxr.cli import main
from echocxr.data.sections import split_report
from tests.clinical_helpers import builtin_engine
from tests.dicom_files import chest_dataset, phantom_views

MAX_NEW = ["--max-new-tokens", "24"]


@pytest.fixture
def cached_engine(monkeypatch):
    """`report` loads its model once per test process here: the formats are under test, not loading."""
    import echocxr.cli.report as report_cli

    engine = builtin_engine()
    monkeypatch.setattr(report_cli, "load_engine", lambda model_dir, args: engine)
    return engine


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("png") / "frontal.png"
    Image.fromarray(phantom_views()[0]).save(path)
    return str(path)


def sr_texts(ds) -> dict[str, str]:
    return {child.ConceptNameCodeSequence[0].CodeMeaning: child.TextValue for item in ds.ContentSequence
            for child in [item, *item.get("ContentSequence", [])] if child.ValueType == "TEXT"}


def test_every_format_carries_the_same_report(cached_engine, png, tmp_path, capsys):
    assert main(["report", "--model", "builtin", "--image", png, *MAX_NEW]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert main(["report", "--model", "builtin", "--image", png, "--json", *MAX_NEW]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == text
    assert main(["report", "--model", "builtin", "--image", png, "--format", "json", *MAX_NEW]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == text

    assert main(["report", "--model", "builtin", "--image", png, "--format", "fhir", *MAX_NEW]) == 0
    bundle = Bundle.model_validate_json(capsys.readouterr().out)
    report = bundle.entry[0].resource
    assert report.presentedForm[0].data.decode("utf-8") == text and report.status == "preliminary"
    device = next(e.resource for e in bundle.entry if e.resource.get_resource_type() == "Device")
    assert device.deviceName[0].name.startswith("echocxr built-in CXR-Phantom model")
    from echocxr.backbones.builtin import BUILTIN_MODEL_DIR
    from echocxr.backbones.settings import read_settings

    block = read_settings(BUILTIN_MODEL_DIR).block_length
    assert device.version[0].value == f"onestep, block length {block}"

    out = tmp_path / "sr.dcm"
    assert main(["report", "--model", "builtin", "--image", png, "--format", "dicom-sr", "--out", str(out),
                 *MAX_NEW]) == 0
    items = sr_texts(pydicom.dcmread(out))
    sections = split_report(text)
    assert items.get("Finding", "") == sections.findings.strip()
    assert items.get("Impression", "") == sections.impression.strip()
    assert "NOT verified" in items["Comment"] and "onestep" in items["Comment"]


def test_dicom_views_put_the_sr_in_their_study(cached_engine, tmp_path, capsys):
    frontal, lateral = phantom_views()
    first = chest_dataset(frontal)
    second = chest_dataset(lateral, first.StudyInstanceUID, ViewPosition="LL")
    paths = []
    for name, ds in (("f.dcm", first), ("l.dcm", second)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(str(tmp_path / name))
    out = tmp_path / "sr.dcm"
    assert main(["report", "--image", *paths, "--format", "dicom-sr", "--out", str(out), *MAX_NEW]) == 0
    sr = pydicom.dcmread(out)
    assert sr.StudyInstanceUID == first.StudyInstanceUID and sr.PatientID == "PID-123"
    cited = {ref.ReferencedSOPInstanceUID for series in sr.CurrentRequestedProcedureEvidenceSequence[0]
             .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert cited == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert main(["report", "--image", *paths, "--format", "fhir", *MAX_NEW]) == 0
    (dr,) = [e.resource for e in Bundle.model_validate_json(capsys.readouterr().out).entry
             if e.resource.get_resource_type() == "DiagnosticReport"]
    assert dr.imagingStudy[0].identifier.value == f"urn:oid:{first.StudyInstanceUID}"


@pytest.mark.parametrize("args,needle", [
    (["--format", "fhri"], "did you mean 'fhir'?"),
    (["--json", "--format", "fhir"], "conflicts with --format fhir"),
    (["--dir", "DIR", "--format", "dicom-sr"], "--format dicom-sr takes one study"),
])
def test_format_errors_are_one_line(png, tmp_path, capsys, args, needle):
    argv = ["report"] + ([] if "--dir" in args else ["--image", png]) + [str(tmp_path) if a == "DIR" else a
                                                                         for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
