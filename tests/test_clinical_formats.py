"""Hospital formats without a model: the FHIR bundle (validated by fhir.resources), the DICOM SR (read back by
pydicom), the labeler's both-polarity findings they code, and format selection."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from echocxr.clinical.dicom_sr import sr_bytes
from echocxr.clinical.fhir import fhir_json
from echocxr.clinical.formats import format_from_accept, parse_format, render
from echocxr.clinical.record import ClinicalReport
from echocxr.clinical.sources import headers_from_bytes, without_pixels
from echocxr.data.labeler import label_report, stated_findings
from echocxr.errors import UserError
from tests.dicom_files import chest_dataset

EN = ("Findings: Small left pleural effusion. The heart is enlarged. No pneumothorax is seen. "
      "No focal consolidation. Impression: Cardiomegaly with a small left effusion.")
ZH = "所见：左侧少量胸腔积液。心影增大。未见气胸。双肺未见结节或肿块。结论：心影增大，左侧少量胸腔积液。"


def report(text: str = EN, lang: str = "en", sources: tuple = ()) -> ClinicalReport:
    return ClinicalReport(text, lang, "test model", "onestep, block length 8", sources,
                          datetime(2026, 1, 2, 10, 30, tzinfo=UTC))


def two_views() -> tuple:
    arr = np.zeros((32, 32), dtype=np.uint8)
    study = pydicom.uid.generate_uid()
    return tuple(without_pixels(chest_dataset(arr, study)) for _ in range(2))


def resources(bundle: Bundle, kind: str) -> list:
    return [e.resource for e in bundle.entry if e.resource.get_resource_type() == kind]


# ---- findings ------------------------------------------------------------------------------------------------
def test_stated_findings_keep_both_polarities_in_both_languages():
    assert stated_findings(EN, "en") == (["cardiomegaly", "effusion_left_small"], ["consolidation", "pneumothorax"])
    assert stated_findings(ZH, "zh") == (["cardiomegaly", "effusion_left_small"], ["nodule", "mass", "pneumothorax"])
    # a type with a present label is not also absent; label_report is unchanged by the refactor
    assert stated_findings("Small left effusion, no right effusion.", "en") == (["effusion_left_small"], [])
    assert label_report(EN, "en") == ["cardiomegaly", "effusion_left_small"]


# ---- FHIR ------------------------------------------------------------------------------------------------
def test_fhir_bundle_is_valid_r4_and_codes_every_stated_finding():
    raw = fhir_json(report())
    bundle = Bundle.model_validate_json(raw)  # parsed back with the R4(B) model: valid
    assert base64.b64encode(EN.encode()).decode() in raw  # presentedForm on the wire: base64
    assert bundle.type == "collection"
    (dr,) = resources(bundle, "DiagnosticReport")
    assert dr.status == "preliminary" and dr.category[0].coding[0].code == "RAD"
    assert (dr.code.coding[0].system, dr.code.coding[0].code) == ("http://loinc.org", "18748-4")
    assert dr.conclusion == "Cardiomegaly with a small left effusion."
    form = dr.presentedForm[0]
    assert form.contentType.startswith("text/plain") and form.data.decode("utf-8") == EN  # decoded on parse
    assert dr.meta.security[0].code == "AIAST"
    assert "NOT verified" in dr.text.div and "test model" in dr.text.div and "onestep" in dr.text.div

    observations = resources(bundle, "Observation")
    coded = {o.code.coding[0].code: o.valueCodeableConcept.coding[0].code for o in observations}
    assert coded == {"cardiomegaly": "52101004", "effusion_left_small": "52101004",  # SNOMED present
                     "consolidation": "2667000", "pneumothorax": "2667000"}  # SNOMED absent
    assert all(o.status == "preliminary" for o in observations)
    urls = {e.resource.get_resource_type(): e.fullUrl for e in bundle.entry}
    assert {r.reference for r in dr.result} == {e.fullUrl for e in bundle.entry
                                               if e.resource.get_resource_type() == "Observation"}
    (device,) = resources(bundle, "Device")
    assert device.deviceName[0].name == "test model" and device.version[0].value == "onestep, block length 8"
    assert "NOT verified" in device.note[0].text
    (prov,) = resources(bundle, "Provenance")
    assert prov.agent[0].who.reference == urls["Device"] and prov.target[0].reference == urls["DiagnosticReport"]


def test_fhir_bundle_of_a_chinese_report():
    bundle = Bundle.model_validate_json(fhir_json(report(ZH, "zh")))
    (dr,) = resources(bundle, "DiagnosticReport")
    assert dr.language == "zh" and dr.conclusion == "心影增大，左侧少量胸腔积液。"
    assert dr.presentedForm[0].data.decode("utf-8") == ZH
    present = {o.code.coding[0].code for o in resources(bundle, "Observation")
               if o.valueCodeableConcept.coding[0].code == "52101004"}
    absent = {o.code.coding[0].code for o in resources(bundle, "Observation")
              if o.valueCodeableConcept.coding[0].code == "2667000"}
    assert present == {"cardiomegaly", "effusion_left_small"} and absent == {"nodule", "mass", "pneumothorax"}


def test_fhir_bundle_names_the_dicom_study_and_patient():
    views = two_views()
    (dr,) = resources(Bundle.model_validate_json(fhir_json(report(sources=views))), "DiagnosticReport")
    assert dr.imagingStudy[0].identifier.value == f"urn:oid:{views[0].StudyInstanceUID}"
    assert dr.subject.identifier.value == "PID-123" and str(dr.effectiveDateTime) == "2026-01-02"


# ---- DICOM SR -----------------------------------------------------------------------------------------------
def _text_items(ds) -> dict[str, str]:
    out = {}
    for item in ds.ContentSequence:
        for child in [item, *item.get("ContentSequence", [])]:
            if child.ValueType == "TEXT":
                out[child.ConceptNameCodeSequence[0].CodeMeaning] = child.TextValue
    return out


def test_dicom_sr_joins_the_source_study_and_cites_every_view():
    views = two_views()
    ds = pydicom.dcmread(io.BytesIO(sr_bytes(report(sources=views))))
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == views[0].StudyInstanceUID and ds.PatientID == "PID-123"
    assert ds.SOPInstanceUID not in {v.SOPInstanceUID for v in views}
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    cited = {ref.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
             for ref in series.ReferencedSOPSequence}
    assert evidence.StudyInstanceUID == ds.StudyInstanceUID and cited == {v.SOPInstanceUID for v in views}
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "PARTIAL", "PRELIMINARY")
    items = _text_items(ds)
    assert items["Finding"].startswith("Small left pleural effusion.") and items["Impression"].startswith("Cardio")
    assert "NOT verified" in items["Comment"] and "test model" in items["Comment"]
    assert items["Device Observer Model Name"] == "test model"


def test_dicom_sr_of_png_views_opens_a_new_study_in_utf8():
    ds = pydicom.dcmread(io.BytesIO(sr_bytes(report(ZH, "zh"))))
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds and ds.StudyInstanceUID and ds.PatientID == ""
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    items = _text_items(ds)
    assert items["Finding"] == "左侧少量胸腔积液。心影增大。未见气胸。双肺未见结节或肿块。"
    assert items["Impression"] == "心影增大，左侧少量胸腔积液。"
    assert pydicom.dcmread(io.BytesIO(sr_bytes(report(ZH, "zh")))).StudyInstanceUID != ds.StudyInstanceUID


def test_upload_headers_skip_pngs_and_drop_pixels():
    buf = io.BytesIO()
    chest_dataset(np.zeros((32, 32), dtype=np.uint8)).save_as(buf, enforce_file_format=True)
    (header,) = headers_from_bytes([b"\x89PNG\r\n\x1a\n" + b"0" * 200, buf.getvalue(), b"junk"])
    assert header.Modality == "CR" and "PixelData" not in header


# ---- selection ------------------------------------------------------------------------------------------
def test_format_names_accept_headers_and_rendering():
    with pytest.raises(UserError, match=r"unknown format 'hl7' \(use one of: text, json, fhir, dicom-sr\)"):
        parse_format("hl7")
    assert format_from_accept("application/fhir+json") == "fhir"
    assert format_from_accept("application/dicom;q=0.9, application/fhir+json;q=0.5") == "dicom-sr"
    assert format_from_accept("application/json, application/fhir+json;q=0.5") == "json"
    assert format_from_accept("*/*") is None and format_from_accept(None) is None
    assert format_from_accept("text/plain") is None  # plain text only by name: Accept lists are too loose
    assert render("text", report()).body.decode() == EN
    assert render("json", report(), {"report": "x"}).body == b'{"report": "x"}'
    out = render("dicom-sr", report())
    assert out.binary and out.media_type == "application/dicom" and out.body[128:132] == b"DICM"


def test_decoder_description_names_refinement_and_tie_break():
    from echocxr.clinical.record import describe_decoder
    from echocxr.decoding.engine import DecodeConfig

    assert describe_decoder(DecodeConfig(decoder="onestep", block_length=4)) == "onestep, block length 4"
    assert describe_decoder(DecodeConfig(decoder="onestep", block_length=4, refine=0.8)) == \
        "onestep, block length 4, tokens at or below confidence 0.8 refined"
    assert describe_decoder(DecodeConfig(decoder="ar", tie_ratio=0.7)) == "ar, tie ratio 0.7"
