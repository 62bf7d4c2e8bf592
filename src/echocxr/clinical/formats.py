"""The output formats of a report, and the one function that renders any of them (CLI and server alike)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from echocxr.clinical.record import ClinicalReport
from echocxr.errors import UserError

FORMATS: tuple[str, ...] = ("text", "json", "fhir", "dicom-sr")
MEDIA_TYPES: dict[str, str] = {
    "text": "text/plain; charset=utf-8",
    "json": "application/json",
    "fhir": "application/fhir+json",
    "dicom-sr": "application/dicom",
}
# Accept selects only what a client could not otherwise mean: plain text stays a `format` choice, so a client
# that lists text/plain among others keeps getting JSON
_ACCEPT = {"application/fhir+json": "fhir", "application/json+fhir": "fhir", "application/dicom": "dicom-sr",
           "application/json": "json"}


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    binary: bool = False  # DICOM: not for a terminal


def parse_format(name: str) -> str:
    """A format name, checked: a one-line UserError names the valid ones."""
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r} (use one of: {', '.join(FORMATS)})")
    return name


def format_from_accept(accept: str | None) -> str | None:
    """The format an HTTP Accept header asks for by media type (first one we know, in the client's order of
    preference), or None when it names none of ours (*/*, absent): the caller's default then applies."""
    if not accept:
        return None
    ranked = []
    for i, part in enumerate(accept.split(",")):
        mime, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if mime.lower() in _ACCEPT and q > 0:
            ranked.append((-q, i, _ACCEPT[mime.lower()]))
    return min(ranked)[2] if ranked else None


def render(fmt: str, report: ClinicalReport, payload: dict | None = None) -> Rendered:
    """`report` in format `fmt`. json is the caller's own object (`payload`: the CLI's and the server's JSON
    differ in their stats); without one it is {"report": text}."""
    fmt = parse_format(fmt)
    if fmt == "text":
        return Rendered(report.text.encode("utf-8"), MEDIA_TYPES[fmt])
    if fmt == "json":
        body = payload if payload is not None else {"report": report.text}
        return Rendered(json.dumps(body, ensure_ascii=False).encode("utf-8"), MEDIA_TYPES[fmt])
    if fmt == "fhir":
        from echocxr.clinical.fhir import fhir_json

        return Rendered(fhir_json(report).encode("utf-8"), MEDIA_TYPES[fmt])
    from echocxr.clinical.dicom_sr import sr_bytes

    return Rendered(sr_bytes(report), MEDIA_TYPES[fmt], binary=True)
