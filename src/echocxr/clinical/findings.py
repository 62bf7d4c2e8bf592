"""The findings a report states, present or absent, as coded items for FHIR Observations.

Codes are the labeler's CXR-Phantom vocabulary (`echocxr.data.labeler`, EN and ZH): a present finding keeps
its side / zone / size (`effusion_left_small`), an absent one is its type (`pneumothorax`), because "no
pneumothorax" denies every side. They are echocxr's own codes, not SNOMED CT or RadLex.
"""

from __future__ import annotations

from dataclasses import dataclass

FINDING_SYSTEM = "urn:echocxr:cxr-phantom-finding"  # echocxr's own code system (labeler vocabulary)

_TYPE_NAMES = {
    "cardiomegaly": "Cardiomegaly", "hilar_enlargement": "Hilar enlargement", "consolidation": "Consolidation",
    "nodule": "Pulmonary nodule", "mass": "Pulmonary mass", "atelectasis": "Atelectasis",
    "edema": "Pulmonary edema", "effusion": "Pleural effusion", "pneumothorax": "Pneumothorax",
    "device_ett": "Endotracheal tube", "device_ngt": "Nasogastric tube",
    "device_central_line": "Central venous catheter", "device_pacemaker": "Pacemaker",
}
_DETAIL_NAMES = {"upper": "upper zone", "middle": "middle zone", "lower": "lower zone"}


@dataclass(frozen=True)
class StatedFinding:
    code: str  # a CXR-Phantom label (present) or finding type (absent)
    display: str  # "Pleural effusion, left, small"
    present: bool


def report_findings(text: str, language: str) -> list[StatedFinding]:
    """Present findings first (vocabulary order), then absent ones, as the labeler reads `text`."""
    from echocxr.data.labeler import stated_findings
    from echocxr.data.phantom.findings import finding_type

    present, absent = stated_findings(text, language if language in ("en", "zh") else "en")
    out = []
    for label in present:
        kind = finding_type(label)
        details = [_DETAIL_NAMES.get(d, d) for d in label[len(kind):].split("_") if d]
        out.append(StatedFinding(label, ", ".join([_TYPE_NAMES[kind], *details]), True))
    return out + [StatedFinding(kind, _TYPE_NAMES[kind], False) for kind in absent]
