"""A rule-based CheXpert-style labeler for real English chest X-ray reports.

It assigns each of the 14 CheXpert observations positive (1), negative (0), uncertain (-1) or no
mention (None) from regular-expression mentions plus simple negation and uncertainty cues:
- text is cut into sentences, sentences into clauses (at "but", "however", "although", ", there ...");
- a mention is uncertain if the clause contains "versus"/"vs" or the mention is followed by
  "cannot be excluded", "is possible", ...; else negative if a negation cue ("no", "without", "free of",
  "negative for", "resolved", ...) precedes it in the clause or "is not seen"-style words follow it; else
  uncertain if an uncertainty cue ("may", "possible", "likely", "suggest", ...) precedes it; else positive;
- explicit statements of normality ("heart size is normal", "mediastinum within normal limits") count
  as negative mentions of Cardiomegaly / Enlarged Cardiomediastinum;
- per report: positive if any mention is positive, else uncertain if any is uncertain, else negative;
  No Finding is positive when no pathology (all but Support Devices) is positive or uncertain.
It is NOT the Stanford CheXpert/CheXbert labeler (no dependency parse, no learned model): use it for
relative comparisons between systems on the same references, and say so when reporting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
PATHOLOGIES = tuple(o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices"))

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


def _rx(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_SIZE = r"(?:(?:mildly|moderately|markedly|severely|slightly|minimally|borderline|significantly|again|now|still)\s+)*"
_MENTIONS: dict[str, re.Pattern] = {
    "Enlarged Cardiomediastinum": _rx(
        r"\bmediastinal\s+(?:widening|enlargement)\b", r"\bwid(?:e|ened)\s+mediastinum\b",
        r"\bmediastinum\s+(?:is\s+|appears\s+)?" + _SIZE + r"widened\b", r"\bwidening\s+of\s+the\s+mediastinum\b",
        r"\benlarged\s+cardio\s?mediastinal\b",
        r"\bcardio\s?mediastinal\s+(?:silhouette|contours?)\s+(?:is\s+|are\s+|appears\s+)?" + _SIZE + r"(?:enlarged|widened)\b"),
    "Cardiomegaly": _rx(
        r"\bcardiomegaly\b", r"\bcardiac\s+enlargement\b", r"\benlarge(?:d|ment\s+of\s+the)\s+(?:heart|cardiac)\b",
        r"\b(?:heart|cardiac\s+silhouette|cardiac\s+shadow)(?:\s+size)?\s+(?:is\s+|appears\s+|remains\s+)?"
        + _SIZE + r"(?:enlarged|increased)\b"),
    "Lung Opacity": _rx(
        r"\bopaci(?:ty|ties|fication|fications|fied)\b", r"\binfiltrat(?:e|es|ion|ive)\b",
        r"\bair\s?space\s+(?:disease|process)\b", r"\bdensit(?:y|ies)\b", r"\bhaziness\b", r"\bhazy\b",
        r"\bground[- ]glass\b"),
    "Lung Lesion": _rx(
        r"\bnodul(?:e|es|ar)\b", r"\bmass(?:es)?\b(?!\s+effect)", r"\blesions?\b", r"\btumou?rs?\b",
        r"\bneoplasms?\b", r"\bcarcinoma\b", r"\bcancer\b", r"\bmetasta(?:sis|ses|tic)\b"),
    "Edema": _rx(r"\bo?edema\b", r"\b(?:vascular|pulmonary)\s+congestion\b", r"\bheart\s+failure\b",
                 r"\bchf\b", r"\bcongestive\b"),
    "Consolidation": _rx(r"\bconsolidat(?:ion|ions|ive|ed)\b"),
    "Pneumonia": _rx(r"\b(?:broncho)?pneumonias?\b", r"(?<!granulomatous )(?<!tuberculous )(?<!tuberculosis )(?<!old )(?<!prior )(?<!remote )(?<!healed )\binfection\b",
                  r"\binfectious\s+(?:process|etiology)\b"),
    "Atelectasis": _rx(r"\batelecta(?:sis|ses|tic)\b", r"\bcollapse\b"),
    "Pneumothorax": _rx(r"\bpneumothora(?:x|ces)\b", r"\bptx\b"),
    "Pleural Effusion": _rx(r"(?<!pericardial )\beffusions?\b", r"\bpleural\s+fluid\b", r"\bhydrothorax\b",
                            r"\bblunting\b", r"\bblunted\s+(?:left\s+|right\s+)?costophrenic\b"),
    "Pleural Other": _rx(r"\bpleural\s+(?:thickening|scarring|plaques?|calcifications?)\b", r"\bfibrothorax\b",
                         r"\bapical\s+(?:pleural\s+)?capp?(?:ing)?\b"),
    "Fracture": _rx(r"\bfractur(?:e|es|ed)\b", r"\bfx\b"),
    "Support Devices": _rx(
        r"\b(?:endotracheal|tracheostomy|chest|feeding|enteric|nasogastric|orogastric|ng|og|et|dobhoff)\s+tubes?\b",
        r"\bcatheters?\b", r"\bpicc\b", r"\b(?:central|venous|jugular|subclavian|arterial)\s+lines?\b",
        r"\bpace(?:maker|r)s?\b", r"\bdefibrillator\b", r"\b(?:a?icd)\b", r"\bport-?a-?cath\b",
        r"\bstents?\b", r"\bdrains?\b", r"\b(?:prosthetic|replacement)\s+valve\b", r"\bvalve\s+replacement\b",
        r"\bleads?\b(?=.*\b(?:pacemaker|pacer|defibrillator|atrium|ventricle)\b)"),
}
# Explicit normal statements: a negative mention of the observation.
_NORMAL: dict[str, re.Pattern] = {
    "Cardiomegaly": _rx(
        r"\b(?:heart|cardiac)\b[^.;]{0,60}?\b(?:normal|within\s+normal\s+limits|unremarkable|not\s+enlarged)\b"),
    "Enlarged Cardiomediastinum": _rx(
        r"\b(?:cardio\s?mediastinal|mediastinal|mediastinum)\b[^.;]{0,60}?"
        r"\b(?:normal|within\s+normal\s+limits|unremarkable|not\s+widened|stable)\b"),
}

_NEG_PRE = re.compile(r"\b(?:no|not|without|negative\s+for|free\s+of|clear\s+of|absence\s+of|absent|"
                      r"resolved|resolution\s+of|removal\s+of|removed|cleared|nor)\b")
_NEG_POST = re.compile(r"^[\s,]*(?:(?:is|are|was|were|has\s+been|have\s+been)\s+)?(?:(?:not|no\s+longer)\s+"
                       r"(?:be\s+)?(?:seen|identified|present|visualized|demonstrated|evident|appreciated|noted|"
                       r"detected)|absent|(?:has\s+|have\s+)?(?:resolved|cleared))\b|"
                       r"^[^,;]*?\bhas\s+(?:resolved|cleared)\b|^[^;]*?\bhave\s+(?:resolved|cleared)\b")
_UNC_PRE = re.compile(r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|unlikely|suspect(?:ed)?|suspicious|"
                      r"questionable|equivocal|indeterminate|borderline|concern(?:ing)?\s+for|"
                      r"suggest(?:s|ive|ing)?|cannot|can\s+not|can't|rule\s+out|r/o|differential|consider(?:ed)?|"
                      r"perhaps|presumed|presumably|potential(?:ly)?|exclude)\b")
_UNC_POST = re.compile(r"\b(?:(?:cannot|can\s+not|can't|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?"
                       r"(?:excluded|ruled\s+out)|(?:is|are)\s+(?:also\s+)?(?:possible|suspected|questioned|questionable|"
                       r"likely|not\s+excluded))\b")
_VERSUS = re.compile(r"\b(?:versus|vs)\b")
# negation words that do not negate a finding ("no change", "cannot exclude")
_NEG_MASK = re.compile(r"\bno\s+(?:significant\s+|interval\s+|appreciable\s+|other\s+)*changes?\b|"
                       r"\bnot\s+(?:significantly\s+)?changed\b|"
                       r"\b(?:cannot|can\s+not|can't|could\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?"
                       r"(?:exclude[ds]?|rule[ds]?\s+out)\b")
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")
_CLAUSE = re.compile(r",?\s+\b(?:but|however|although|though|whereas)\b|\bwith\s+the\s+exception\s+of\b|"
                     r"\bexcept(?:\s+for)?\b|(?:,|\band)\s+(?=(?:there|the|this|these|it)\b)")


@dataclass(frozen=True)
class Mention:
    observation: str
    status: int  # POSITIVE, NEGATIVE or UNCERTAIN
    clause: str


def _status(clause: str, start: int, end: int) -> int:
    pre, post = clause[:start], clause[end:]
    if _VERSUS.search(clause) or _UNC_POST.search(post):
        return UNCERTAIN
    if _NEG_PRE.search(_NEG_MASK.sub(" ", pre)) or _NEG_POST.search(post):
        return NEGATIVE
    if _UNC_PRE.search(clause[:end]):  # the mention itself may carry it: "borderline enlarged"
        return UNCERTAIN
    return POSITIVE


def clauses(text: str) -> list[str]:
    out = []
    for sentence in _SENTENCE.split(text.lower()):
        out += [c.strip() for c in _CLAUSE.split(sentence) if c and c.strip()]
    return out


def mentions(text: str) -> list[Mention]:
    """Every observation mention in the report with its status."""
    found = []
    for clause in clauses(text):
        for obs, pattern in _MENTIONS.items():
            for m in pattern.finditer(clause):
                found.append(Mention(obs, _status(clause, m.start(), m.end()), clause))
        for obs, pattern in _NORMAL.items():
            if pattern.search(clause):
                found.append(Mention(obs, NEGATIVE, clause))
    return found


def label_chexpert(text: str) -> dict[str, int | None]:
    """The 14 observations -> 1 positive, 0 negative, -1 uncertain, None not mentioned."""
    status: dict[str, set[int]] = {}
    for m in mentions(text):
        status.setdefault(m.observation, set()).add(m.status)
    labels: dict[str, int | None] = {}
    for obs in OBSERVATIONS[1:]:
        seen = status.get(obs, set())
        labels[obs] = (POSITIVE if POSITIVE in seen else UNCERTAIN if UNCERTAIN in seen
                       else NEGATIVE if NEGATIVE in seen else None)
    abnormal = any(labels[o] in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES)
    return {"No Finding": None if abnormal else POSITIVE, **labels}


def chexpert_findings(text: str, language: str = "en", uncertain_as_positive: bool = False) -> list[str]:
    """Positive observations of a report (a labeler callable for finding F1; English only)."""
    keep = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
    return [obs for obs, v in label_chexpert(text).items() if v in keep]
