"""A report as a FHIR R4 Bundle: DiagnosticReport + one Observation per stated finding + the Device that wrote
it + a Provenance, built and validated with fhir.resources.

fhir.resources 8 ships R5 at its top level; its `R4B` subpackage (FHIR 4.3) is the R4 line, and every element
used here has the same shape in R4 (4.0.1), so R4 servers read the bundle as it is.
The report is `preliminary` and tagged AIAST (HL7 "Artificial Intelligence asserted" security label); its
narrative, the Device's note and each Observation's note say that it is machine-generated and not verified.
"""

from __future__ import annotations

import base64
import html
import uuid
from typing import Any

from echocxr.clinical.findings import FINDING_SYSTEM, report_findings
from echocxr.clinical.record import SOFTWARE, ClinicalReport

LOINC = "http://loinc.org"
# LOINC 18748-4 "Diagnostic imaging study": the generic imaging-report document code (DICOM CID 7000's
# "Diagnostic Imaging Report"), right for any number of chest views; 36643-5 would claim exactly two.
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
           "display": "Imaging"}
AI_ASSERTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
               "display": "Artificial Intelligence asserted"}
SNOMED = "http://snomed.info/sct"
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present (qualifier value)"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent (qualifier value)"}
AUTHOR = {"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author",
          "display": "Author"}
CREATE = {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE", "display": "create"}


def fhir_bundle(report: ClinicalReport) -> Any:
    """The validated `fhir.resources.R4B.bundle.Bundle` (type collection) of the report."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.provenance import Provenance

    from echocxr.data.sections import split_report

    ids = _Ids()
    device_ref = {"reference": ids.new("device"), "display": report.model}
    meta = {"security": [AI_ASSERTED]}
    subject = _subject(report.sources)
    note = [{"text": report.disclaimer}]

    observations = []
    for finding in report_findings(report.text, report.language):
        observations.append(Observation.model_validate({
            "meta": meta, "status": "preliminary", "category": [{"coding": [IMAGING]}],
            "code": {"coding": [{"system": FINDING_SYSTEM, "code": finding.code, "display": finding.display}],
                     "text": finding.display},
            **subject, "issued": report.created,
            "valueCodeableConcept": {"coding": [PRESENT if finding.present else ABSENT],
                                     "text": "present" if finding.present else "absent"},
            "device": device_ref, "note": note,
        }))
    obs_refs = [ids.new(f"obs{i}") for i in range(len(observations))]

    impression = split_report(report.text).impression.strip()
    diagnostic = DiagnosticReport.model_validate({
        "meta": meta, "language": report.language,
        "text": {"status": "generated", "div": _narrative(report)},
        "status": "preliminary", "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [REPORT_CODE], "text": "Chest X-ray report (machine-generated)"},
        **subject, **_effective(report.sources), "issued": report.created,
        **_imaging_study(report.sources),
        "result": [{"reference": ref, "display": o.code.text} for ref, o in zip(obs_refs, observations, strict=True)],
        **({"conclusion": impression} if impression else {}),
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": report.language,
                           "data": base64.b64encode(report.text.encode("utf-8")).decode("ascii"),
                           "title": "Chest X-ray report (machine-generated, unverified)",
                           "creation": report.created}],
    })
    report_ref = ids.new("report")
    device = Device.model_validate({
        "meta": meta, "manufacturer": "echocxr",
        "deviceName": [{"name": report.model, "type": "model-name"}],
        "type": {"text": "AI chest X-ray report generator"},
        "version": [{"type": {"text": "decoder"}, "value": report.decoder or "unknown"},
                    {"type": {"text": "software"}, "value": SOFTWARE}],
        "note": note,
    })
    provenance = Provenance.model_validate({
        "target": [{"reference": report_ref}, *({"reference": ref} for ref in obs_refs)],
        "recorded": report.created, "activity": {"coding": [CREATE]},
        "agent": [{"type": {"coding": [AUTHOR]}, "who": device_ref}],
    })
    entries = [(report_ref, diagnostic), *zip(obs_refs, observations, strict=True), (device_ref["reference"], device),
               (ids.new("provenance"), provenance)]
    return Bundle.model_validate({
        "type": "collection", "timestamp": report.created,
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    })


def fhir_json(report: ClinicalReport) -> str:
    """The bundle as FHIR JSON (UTF-8 text, Chinese unescaped)."""
    return fhir_bundle(report).model_dump_json()


class _Ids:
    """urn:uuid: full URLs, one per name (the bundle's internal references)."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    def new(self, name: str) -> str:
        return self._urls.setdefault(name, f"urn:uuid:{uuid.uuid4()}")


def _narrative(report: ClinicalReport) -> str:
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in report.text.splitlines() if line.strip())
    return (f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{html.escape(report.disclaimer)}</b></p>'
            f"{paragraphs}</div>")


def _subject(sources: tuple) -> dict:
    """The patient, by the DICOM Patient ID of the views (a logical reference), when there is one."""
    pid = str(sources[0].get("PatientID", "") or "").strip() if sources else ""
    return {"subject": {"identifier": {"value": pid}}} if pid else {}


def _effective(sources: tuple) -> dict:
    """When the images were taken: the study date (and time) of the views, when they say."""
    date = str(sources[0].get("StudyDate", "") or "") if sources else ""
    if len(date) != 8 or not date.isdigit():
        return {}
    return {"effectiveDateTime": f"{date[:4]}-{date[4:6]}-{date[6:]}"}


def _imaging_study(sources: tuple) -> dict:
    """The DICOM study, by its Study Instance UID (the urn:dicom:uid identifier system)."""
    uid = str(sources[0].get("StudyInstanceUID", "") or "") if sources else ""
    return {"imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}}]} if uid else {}
