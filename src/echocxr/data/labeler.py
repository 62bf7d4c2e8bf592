"""Rule labeler: report text (EN or ZH) -> CXR-Phantom finding labels, with negation and laterality.

Clinical precision/recall/F1 compare the label sets of a generated and a reference report, so the
labeler must be exact on CXR-Phantom's own grammar (tested on thousands of generated reports) and
sensible on real reports (tested on IU X-ray texts).

How it reads a report: split into clauses (sentences; in Chinese also commas; in English also
"but"/"however"), find finding mentions, drop negated ones, and read side / zone / size from the words
nearest to it (before it, else after it, else earlier in the clause). A mention is negated when (EN) a negation cue ("no", "without",
"negative for", ...) comes before it in its clause or a "... is not seen" follows it, or (ZH) a cue
(未见, 无, 排除, ...) is anywhere in its clause. Uncertain mentions ("possible", "cannot be excluded")
count as positive. Details the text leaves out take the defaults documented in
`echocxr.data.phantom.findings` (no side -> both sides, no size -> small, no zone -> lower).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from echocxr.data.phantom.findings import FINDING_LABELS, FINDING_TYPES

_LATERAL = ("effusion", "pneumothorax", "consolidation", "nodule", "mass", "atelectasis", "hilar_enlargement")
_ZONED = ("consolidation", "nodule", "mass")


@dataclass(frozen=True)
class _Mention:
    kind: str
    start: int
    end: int


# ----------------------------------------------------------------------------------------------- English
_EN_PATTERNS: dict[str, str] = {
    "cardiomegaly": (
        r"cardiomegaly|cardiac enlargement|enlarge(?:d|ment of the) (?:heart|cardiac (?:silhouette|shadow))"
        r"|(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiomediastinal silhouette)"
        r"(?: size)?(?:\s+(?:is|are|appears?|remains?|seems?))?\s+(?:\w+\s+){0,2}?(?:enlarged|increased)"
    ),
    "hilar_enlargement": (
        r"(?:enlarged|prominent|bulky|full)\s+(?:\w+\s+){0,2}?hil(?:a|um|ar)\b"
        r"|hil(?:a|um|ar)\s+(?:\w+\s+){0,3}?(?:enlarge\w*|prominen\w*|(?:lymph)?adenopathy|fullness|mass)"
        r"|bihilar (?:enlarge\w*|prominen\w*|(?:lymph)?adenopathy|fullness)"
    ),
    "consolidation": r"consolidat\w*|air[- ]?space (?:disease|opacit\w+)|infiltrates?|pneumonia",
    "nodule": r"nodules?\b|nodular (?:opacit\w+|densit\w+)",
    "mass": r"(?<!mediastinal )(?<!hilar )\bmass(?:es)?\b",
    "atelectasis": r"atelecta\w+",
    "edema": r"o?edema\b",
    "effusion": r"(?<!pericardial )effusions?\b|pleural fluid",
    "pneumothorax": r"pneumothora(?:x|ces)",
    "device_ett": r"endotracheal tube|\bet tube|\bett\b",
    "device_ngt": r"nasogastric|\bng tube|orogastric|\bog tube|enteric tube|feeding tube",
    "device_central_line": (
        r"central (?:venous )?(?:line|catheter)|\bcvc\b|\bpicc\b|"
        r"(?:internal jugular|subclavian) (?:venous )?(?:line|catheter)|port-?a-?cath"
    ),
    "device_pacemaker": r"pacemaker|\bpacer\b|pacing (?:device|leads?|wires?)|\baicd\b|defibrillator",
}
_EN_MENTION = re.compile("|".join(f"(?P<{k}>{v})" for k, v in _EN_PATTERNS.items()))
_EN_NEG_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|resolved|resolution of|removal of|"
    r"rule out|ruled out)\b"
)
_EN_NEG_EXCEPT = re.compile(r"\bno (?:interval |significant )?change\b|\bnot (?:changed|significantly changed)\b")
_EN_NEG_AFTER = re.compile(
    r"^[^.;]*?\b(?:(?:is|are|was|were|has been|have been)\s+(?:not|no longer)\s+(?:seen|identified|present|"
    r"visuali[sz]ed|demonstrated|evident|appreciated|enlarged)|(?:has|have)\s+resolved|(?:is|are)\s+absent|"
    r"(?:has|have) been removed)\b"
)
_EN_CLAUSE_SPLIT = re.compile(r"(?<!\d)\.|\.(?!\d)|[;:\n?!]|,?\s+but\s+|,?\s+however,?\s+|\s+although\s+")
_EN_SIDE = {
    "both": re.compile(r"\bbilateral\w*|\bboth\b|\bbibas\w*|\bbi-basilar|\bbihilar"),
    "right": re.compile(r"\bright\b"),
    "left": re.compile(r"\bleft\b|\blingula\w*"),
}
_EN_ZONE = {
    "upper": re.compile(r"\bupper\b|\bapex\b|\bapical\b|\bapices\b"),
    "middle": re.compile(r"\bmiddle\b|\bmid\b|\bmid-?lungs?\b|\blingula\w*|\bperihilar\b"),
    "lower": re.compile(r"\blower\b|\bbase\b|\bbases\b|\bbasa?l\b|\bbasilar\b|\bbibasi\w*|\bretrocardiac\b"),
}
_EN_SIZE = {
    "large": re.compile(r"\blarge\b|\bmoderate\w*|\bmassive\b|\bsizable\b|\bsubstantial\b"),
    "small": re.compile(r"\bsmall\b|\btiny\b|\btrace\b|\bminimal\b|\bmild\b"),
}


# ----------------------------------------------------------------------------------------------- Chinese
_ZH_PATTERNS: dict[str, str] = {
    "cardiomegaly": r"心(?:影|脏)(?:体积)?(?:明显|轻度|中度|稍|略)?(?:增大|扩大)",
    "hilar_enlargement": r"肺门(?:影)?(?:明显|轻度)?(?:增大|扩大|增浓|饱满)|肺门淋巴结(?:肿大|增大)",
    "consolidation": r"实变|渗出|肺炎|斑片(?:状)?影",
    "nodule": r"结节",
    "mass": r"肿块|团块",
    "atelectasis": r"肺?不张",
    "edema": r"肺?水肿",
    "effusion": r"(?<!心包)积液|胸水",
    "pneumothorax": r"气胸",
    "device_ett": r"气管(?:内)?插管|气管导管",
    "device_ngt": r"鼻?胃管",
    "device_central_line": r"中心静脉(?:导管|置管)|PICC",
    "device_pacemaker": r"起搏器",
}
_ZH_MENTION = re.compile("|".join(f"(?P<{k}>{v})" for k, v in _ZH_PATTERNS.items()))
_ZH_NEG = re.compile(r"未见|未发现|未显示|未|无|没有|排除|消失|已吸收|不伴")
_ZH_CLAUSE_SPLIT = re.compile(r"[。；;，,\n！？!?]")
_ZH_SIDE = {"both": re.compile(r"双|两侧"), "right": re.compile(r"右"), "left": re.compile(r"左|舌")}
_ZH_ZONE = {
    "upper": re.compile(r"上野|上叶|肺尖"),
    "middle": re.compile(r"中野|中叶|舌叶|舌段|肺门周围"),
    "lower": re.compile(r"下野|下叶|肺底|基底"),
}
_ZH_SIZE = {"large": re.compile(r"大量|中等量|中量|中大量"), "small": re.compile(r"少量|小量|微量")}


def _nearest(text: str, table: dict[str, re.Pattern], last: bool) -> str | None:
    """The key of the table pattern matching last (or first) in `text`."""
    best, pos = None, -1 if last else len(text) + 1
    for key, pat in table.items():
        for m in pat.finditer(text):
            if (m.start() > pos) if last else (m.start() < pos):
                best, pos = key, m.start()
    return best


def _detail(pre: str, post: str, before: str, table: dict[str, re.Pattern]) -> str | None:
    """A detail (side, zone, size) of a mention: the closest word before it, else the first after it, else
    the last one stated earlier in the clause ("right lower lobe airspace disease and small effusion")."""
    return _nearest(pre, table, last=True) or _nearest(post, table, last=False) or _nearest(before, table, last=True)


def _labels_for(kind: str, pre: str, post: str, before: str, language: str) -> list[str]:
    if kind not in _LATERAL:
        return [kind]
    side_t, zone_t, size_t = (_EN_SIDE, _EN_ZONE, _EN_SIZE) if language == "en" else (_ZH_SIDE, _ZH_ZONE, _ZH_SIZE)
    side = _detail(pre, post, before, side_t)
    sides = [side] if side in ("right", "left") else ["right", "left"]
    if kind == "effusion":
        size = _nearest(pre, size_t, last=True) or _nearest(post, size_t, last=False) or "small"
        return [f"effusion_{s}_{size}" for s in sides]
    if kind in _ZONED:
        zone = _detail(pre, post, before, zone_t) or "lower"
        return [f"{kind}_{s}_{zone}" for s in sides]
    return [f"{kind}_{s}" for s in sides]


def _negated(clause: str, m: _Mention, language: str) -> bool:
    if language == "zh":
        return _ZH_NEG.search(clause) is not None
    before = _EN_NEG_EXCEPT.sub(" ", clause[: m.end])
    return _EN_NEG_BEFORE.search(before) is not None or _EN_NEG_AFTER.search(clause[m.end:]) is not None


def _statements(text: str, language: str) -> list[tuple[str, list[str] | None]]:
    """(finding type, its labels, or None when the mention is negated) for every finding mention."""
    if language not in ("en", "zh"):
        raise ValueError(f"unknown language {language!r}; expected 'en' or 'zh'")
    if language == "en":
        text, split, mention_re = text.lower(), _EN_CLAUSE_SPLIT, _EN_MENTION
    else:
        split, mention_re = _ZH_CLAUSE_SPLIT, _ZH_MENTION
    out: list[tuple[str, list[str] | None]] = []
    for clause in split.split(text):
        if not clause or not clause.strip():
            continue
        mentions = [_Mention(m.lastgroup or "", m.start(), m.end()) for m in mention_re.finditer(clause)]
        for k, m in enumerate(mentions):
            if _negated(clause, m, language):
                out.append((m.kind, None))
                continue
            lo = mentions[k - 1].end if k > 0 else 0
            hi = mentions[k + 1].start if k + 1 < len(mentions) else len(clause)
            out.append((m.kind, _labels_for(m.kind, clause[lo:m.end], clause[m.end:hi], clause[:lo], language)))
    return out


def label_report(text: str, language: str = "en") -> list[str]:
    """Sorted finding labels (CXR-Phantom vocabulary) that the report states as present."""
    found = {label for _, labels in _statements(text, language) for label in labels or ()}
    return sorted(found & set(FINDING_LABELS))


def stated_findings(text: str, language: str = "en") -> tuple[list[str], list[str]]:
    """(labels stated present, finding types stated absent): both polarities, for structured exports that
    record "no pneumothorax" as an observation too. A type is absent only when no label of it is present
    ("small left effusion, no right effusion" states an effusion)."""
    statements = _statements(text, language)
    present = sorted({label for _, labels in statements for label in labels or ()} & set(FINDING_LABELS))
    present_types = {kind for kind, labels in statements if labels and set(labels) & set(present)}
    absent = [t for t in FINDING_TYPES if t in {k for k, labels in statements if labels is None} - present_types]
    return present, absent
