"""Split free-text radiology reports into Findings / Impression (ECHO-SPEC §6).

Real reports arrive in many shapes: MIMIC-CXR free text with upper-case headers
("FINDINGS:", "IMPRESSION:", plus COMPARISON / INDICATION / HISTORY / TECHNIQUE ... which we drop),
IU X-ray XML with ``<AbstractText Label="FINDINGS">``, inline "Findings: ... Impression: ..." answers
from an LLM, and Chinese reports ("所见：... 结论：..."). Everything here is pure text processing so
loaders, the LLM rewriter and metrics can share one notion of "the findings section".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

from echocxr.errors import UserError

FINDINGS = "findings"
IMPRESSION = "impression"

# Header spelling -> canonical section name. Only "findings" and "impression" are kept in the
# manifest; the rest are recognised so their text is *not* glued onto a neighbouring section.
_ALIASES: dict[str, tuple[str, ...]] = {
    FINDINGS: (
        "findings", "finding", "findings and impression", "findings/impression",
        "impression and findings",
        "检查所见", "影像所见", "影像表现", "所见", "表现",
    ),
    IMPRESSION: (
        "impression", "impressions", "conclusion", "conclusions", "opinion",
        "结论", "诊断意见", "影像诊断", "印象", "意见", "诊断",
    ),
    "comparison": ("comparison", "comparisons", "comparison exam", "comparison study", "对比"),
    "indication": (
        "indication", "indications", "clinical indication", "reason for exam",
        "reason for examination", "reason for study",
    ),
    "history": (
        "history", "clinical history", "clinical information", "clinical data", "clinical details",
        "patient history", "临床病史", "病史", "临床资料", "临床诊断",
    ),
    "technique": ("technique", "procedure", "procedure comments", "检查方法", "检查技术"),
    "examination": ("examination", "exam", "type of examination", "检查项目"),
    "notification": ("notification", "recommendation", "recommendations", "communication"),
    "wet_read": ("wet read",),
    "addendum": ("addendum",),
}
_CANONICAL: dict[str, str] = {
    " ".join(alias.split()): canon for canon, aliases in _ALIASES.items() for alias in aliases
}


def _alias_pattern(alias: str) -> str:
    return r"\s+".join(re.escape(w) for w in alias.split())


# A known header starts a line or follows sentence punctuation, and ends with ':' or '：'. Mid-sentence
# "... acute findings: ..." is deliberately not a header.
_KNOWN_HEADER = re.compile(
    r"(?:^|(?<=[.;!?。；！？]))[ \t]*("
    + "|".join(_alias_pattern(a) for a in sorted(_CANONICAL, key=len, reverse=True))
    + r")[ \t]*[:：]",
    re.IGNORECASE | re.MULTILINE,
)
# Any other ALL-CAPS header at the start of a line (MIMIC has many: "PROVISIONAL FINDINGS IMPRESSION
# (PFI):", "CLINICAL NOTIFICATION:" ...). Its text is kept out of Findings/Impression.
_CAPS_HEADER = re.compile(r"(?m)^[ \t]*([A-Z][A-Z0-9 /&(),#'-]{1,60}?)[ \t]*:")
_TITLE_LINE = re.compile(r"(?im)^\s*(final report|preliminary report|wet read version\s*#?\d*)\s*$")
_MARKDOWN = re.compile(r"\*{1,3}|`+|^[ \t]*#{1,6}[ \t]*", re.MULTILINE)
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class ReportSections:
    """Findings + Impression of one report; `other` holds recognised sections we drop."""

    findings: str = ""
    impression: str = ""
    other: dict[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (self.findings or self.impression)


def clean_text(text: str | None) -> str:
    """Collapse all runs of whitespace (newlines, tabs, NBSP) into single spaces."""
    if not text:
        return ""
    return " ".join(str(text).split())


def canonical_section(header: str) -> str | None:
    """Canonical section name for a header spelling ("IMPRESSIONS" -> "impression"), None if unknown."""
    return _CANONICAL.get(" ".join(header.strip().strip(":：").lower().split()))


def detect_language(text: str) -> str:
    """"zh" if more than 10% of the characters are CJK (the official ECHO evaluation rule), else "en"."""
    if not text:
        return "en"
    return "zh" if len(_CJK.findall(text)) / len(text) > 0.1 else "en"


def split_report(text: str | None, strip_markdown: bool = True) -> ReportSections:
    """Split a free-text report into Findings / Impression; drop COMPARISON, INDICATION, etc.

    Text before the first header (the "FINAL REPORT" title, a WET READ line) is ignored when any
    header exists. A report with no headers at all is treated as findings, because reporting by
    exception usually *is* a findings paragraph. When only dropped sections have headers (common in
    MIMIC-CXR), the text under a trailing unknown header, or else the paragraphs after the last
    header's first paragraph, are taken as findings, in the spirit of the MIMIC-CXR section
    tooling's "last paragraph" rule.
    """
    if not text or not str(text).strip():
        return ReportSections()
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    if strip_markdown:
        text = _MARKDOWN.sub("", text)
    text = _TITLE_LINE.sub("\n", text)

    headers: list[tuple[int, int, str]] = []  # (start, end, canonical)
    for m in _KNOWN_HEADER.finditer(text):
        canon = canonical_section(m.group(1))
        if canon is not None:
            headers.append((m.start(1), m.end(), canon))
    taken = [(s, e) for s, e, _ in headers]
    for m in _CAPS_HEADER.finditer(text):
        s, e = m.start(1), m.end()
        if any(s < te and ts < e for ts, te in taken):
            continue
        name = " ".join(m.group(1).lower().split())
        headers.append((s, e, canonical_section(name) or f"other:{name}"))
    headers.sort()

    if not headers:
        return ReportSections(findings=clean_text(text))

    preamble = text[: headers[0][0]]
    bodies: list[tuple[str, str]] = []
    for i, (_, end, canon) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        bodies.append((canon, text[end:stop]))

    out = ReportSections()
    found_main = any(c in (FINDINGS, IMPRESSION) for c, _ in bodies)
    for canon, body in bodies:
        body_clean = clean_text(body)
        if canon in (FINDINGS, IMPRESSION):
            prev = getattr(out, canon)
            setattr(out, canon, f"{prev} {body_clean}".strip() if prev else body_clean)
        elif body_clean:
            prev = out.other.get(canon, "")
            out.other[canon] = f"{prev} {body_clean}".strip() if prev else body_clean

    if not found_main:
        last_canon, last_body = bodies[-1]
        if clean_text(preamble):
            out.findings = clean_text(preamble)
        elif last_canon.startswith("other:") and clean_text(last_body):
            # e.g. MIMIC "PORTABLE SUPINE FRONTAL VIEW OF THE CHEST: <the findings>"
            out.findings = out.other.pop(last_canon)
        else:
            paragraphs = [p for p in re.split(r"\n\s*\n", last_body) if p.strip()]
            if len(paragraphs) > 1:  # header sections are one paragraph; the rest is unlabelled text
                out.findings = clean_text("\n".join(paragraphs[1:]))
                out.other[last_canon] = clean_text(paragraphs[0])
    return out


def sections_from_labelled(pairs: Iterable[tuple[str | None, str | None]]) -> ReportSections:
    """Build sections from (label, text) pairs, e.g. IU X-ray ``AbstractText`` elements or CSV columns."""
    out = ReportSections()
    for label, body in pairs:
        body_clean = clean_text(body)
        if not body_clean:
            continue
        canon = canonical_section(label or "") or f"other:{clean_text(label).lower()}"
        if canon in (FINDINGS, IMPRESSION):
            prev = getattr(out, canon)
            setattr(out, canon, f"{prev} {body_clean}".strip() if prev else body_clean)
        else:
            prev = out.other.get(canon, "")
            out.other[canon] = f"{prev} {body_clean}".strip() if prev else body_clean
    return out


def split_iu_xml(xml: str | bytes) -> ReportSections:
    """Sections of an IU X-ray / OpenI report (``<AbstractText Label="FINDINGS">...``)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UserError(f"malformed IU X-ray report XML: {exc}") from None
    return sections_from_labelled(
        (el.get("Label"), "".join(el.itertext())) for el in root.iter("AbstractText")
    )


def format_report(findings: str, impression: str, language: str = "en") -> str:
    """The two-section text form used in prompts and by the rewriter ("Findings: ... Impression: ...")."""
    if language == "zh":
        return f"所见：{findings}\n结论：{impression}"
    return f"Findings: {findings}\nImpression: {impression}"
