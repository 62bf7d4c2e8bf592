"""A report as a DICOM Comprehensive SR (highdicom), filed in the study of its source images.

The content tree follows TID 2000 (Basic Diagnostic Imaging Report): title LOINC 18748-4, the language of
the text (TID 1204), the device observer that wrote it (TID 1001/1004: echocxr and the model), a Findings
section (LOINC 59776-5) holding a Finding text item and an Impressions section (19005-8) holding an Impression,
and a Comment that says it is machine-generated and unverified. The document is flagged
VerificationFlag UNVERIFIED, CompletionFlag PARTIAL, PreliminaryFlag PRELIMINARY, ContentQualification
RESEARCH. With DICOM views it takes their patient and study (same StudyInstanceUID) and lists every source
instance in the Current Requested Procedure Evidence Sequence; otherwise it opens a new study.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from echocxr import __version__
from echocxr.clinical.record import SOFTWARE, ClinicalReport

SR_SERIES_NUMBER = 9901  # a high number keeps the SR series after the acquisition series in a viewer
_LANGUAGES = {"en": "English", "zh": "Chinese"}
# attributes highdicom copies from the first evidence dataset; type 2 (may be empty, must be present)
_STUDY_ATTRS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


def dicom_sr(report: ClinicalReport) -> Any:
    """The SR document as a pydicom Dataset (a highdicom ComprehensiveSR)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from echocxr.data.sections import split_report

    concept = hd.sr.CodedConcept
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    sections = split_report(report.text)
    findings, impression = sections.findings.strip(), sections.impression.strip()
    if not findings and not impression:
        findings = report.text.strip()

    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    items: list = []
    language = report.language if report.language in _LANGUAGES else "en"
    items += hd.sr.LanguageOfContentItemAndDescendants(concept(language, "RFC5646", _LANGUAGES[language]))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[SOFTWARE, report.model]), name="echocxr", manufacturer_name="echocxr",
        model_name=report.model[:64])
    items += hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device))
    for heading, item_name, text in ((codes.LN.Findings, codes.DCM.Finding, findings),
                                     (codes.LN.Impressions, codes.DCM.Impression, impression)):
        if text:
            section = hd.sr.ContainerContentItem(name=heading, relationship_type=contains)
            section.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(item_name, text, contains)])
            items.append(section)
    items.append(hd.sr.TextContentItem(codes.DCM.Comment, report.disclaimer, contains))
    root.ContentSequence = hd.sr.ContentSequence(items)

    evidence = [_complete_header(h) for h in report.sources] or [_new_study()]
    local = report.created.astimezone()  # DICOM dates and times are local, without a zone
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="echocxr",
        is_complete=False, is_final=False, is_verified=False,
        series_description="echocxr AI report (preliminary, unverified)",
        manufacturer_model_name=report.model[:64], software_versions=__version__,
        content_qualification="RESEARCH", specific_character_set="ISO_IR 192",
        content_date=local.date(), content_time=local.time().replace(tzinfo=None),
    )
    if not report.sources:  # the placeholder study header is no evidence
        for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if name in sr:
                delattr(sr, name)
    return sr


def sr_bytes(report: ClinicalReport) -> bytes:
    """The SR as a DICOM Part-10 file (preamble, file meta, Explicit VR Little Endian)."""
    buf = BytesIO()
    dicom_sr(report).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _complete_header(header: Any) -> Any:
    """A source header with the study attributes the SR copies present (empty when the image had none)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for keyword in (*_STUDY_ATTRS, "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        value = header.get(keyword)
        if value is not None or keyword in _STUDY_ATTRS:
            setattr(ds, keyword, value)
    if "SeriesInstanceUID" not in ds or not ds.SeriesInstanceUID:
        from pydicom.uid import generate_uid

        ds.SeriesInstanceUID = generate_uid()  # a view without a series UID still joins the study
    return ds


def _new_study() -> Any:
    """A placeholder header: new Study UID, no patient (for reports on PNG/JPEG views)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    for keyword in _STUDY_ATTRS:
        setattr(ds, keyword, None)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    return ds
