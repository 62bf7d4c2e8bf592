"""Read a CXR-Phantom report back with the grammar that writes it: sentences -> statements -> findings.

Every sentence a phantom report can contain is enumerated from the grammar itself (`grammar.PHRASES`,
filled by `grammar._slots` with every allowed slot value), so the reader cannot drift from the writer:
a sentence either is exactly one phrasing of one statement (a grammar key with its slot values, e.g.
`consolidation(side=right, zone=upper)`) or it is not. Slot values come from the word tables (side, zone,
size, route, tip, leads) and from the finding vocabulary's number lists (`findings.ETT_CM_ABOVE_CARINA`,
`MASS_CM`, `NODULE_MM`).

Reading rules (whitespace runs count as one space; whitespace between sentences is not checked):
- sections start at the headers of `manifest.reference_text` ("Findings:" / "Impression:", "所见：" /
  "结论："); text before the first header is read as findings but marked outside any section;
- EN sentences end at "." (not the "." inside "4.5"); ZH findings sentences end at "。", ZH impression
  items at "；" and the last one at "。" (as `grammar._impression` joins them);
- a phrasing that itself spans several sentences (EN "The lungs are clear. Heart size ...") is one
  sentence of the report.
`canonical_statements` says which statements, in which order, the grammar writes for a case;
`case_from_statements` recovers the case a list of findings statements describes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from echocxr.data.manifest import reference_text
from echocxr.data.phantom.findings import (
    DEVICE_TYPES,
    ETT_CM_ABOVE_CARINA,
    FINDING_TYPES,
    MASS_CM,
    NODULE_MM,
    SIDES,
    Finding,
    PhantomCase,
)
from echocxr.data.phantom.grammar import EN_WORDS, PHRASES, ZH_WORDS, _slots, write_report
from echocxr.data.sections import FINDINGS, IMPRESSION

# numbers a template may state, per grammar key and slot (the generator draws them from these lists)
_NUMBERS: dict[str, dict[str, tuple[int | float, ...]]] = {
    "device_ett": {"cm": ETT_CM_ABOVE_CARINA}, "mass": {"cm": MASS_CM}, "nodule": {"mm": NODULE_MM},
}
_SENTENCE_END = {"en": ".", "zh": "。"}
_ITEM_END = {"en": ".", "zh": "；"}  # between impression items; the last one ends with _SENTENCE_END
_SPLIT = {"en": re.compile(r"((?<!\d)\.|\.(?!\d))"), "zh": re.compile(r"([。；])")}
_JOIN = {"en": " ", "zh": ""}


@dataclass(frozen=True)
class Statement:
    """One statement of the grammar: its key and slot values (phrasing-independent)."""

    key: str
    values: tuple[tuple[str, str | int | float], ...] = ()

    @property
    def section(self) -> str:
        return IMPRESSION if self.key.startswith("imp_") else FINDINGS

    def __str__(self) -> str:
        if not self.values:
            return self.key
        return f"{self.key}(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in self.values) + ")"


@dataclass(frozen=True)
class Sentence:
    """One sentence as read: `statement` is None when it is no phrasing of any statement of its section;
    `valid` also needs the right end mark and a section header before it."""

    text: str
    section: str | None
    statement: Statement | None
    valid: bool


@dataclass(frozen=True)
class ReadReport:
    language: str
    headers: tuple[str, ...]  # section names in the order their headers appear
    sentences: tuple[Sentence, ...]

    def statements(self, section: str) -> list[Statement]:
        """Recognised statements read as `section` (text before any header counts as findings)."""
        return [s.statement for s in self.sentences if s.statement is not None
                and (s.section or FINDINGS) == section]


def _domains(language: str) -> dict[str, tuple]:
    words = EN_WORDS if language == "en" else ZH_WORDS
    out = {slot: tuple(table) for slot, table in words.items()}
    out["lung"] = tuple(SIDES)  # ZH {lung} is the side, written as 右肺/左肺
    return out


def _canonical_slot(field_name: str) -> str:
    name = field_name.lower()
    return "side" if name == "lung" else name


def _renderings(key: str, template: str, language: str) -> Iterable[tuple[str, Statement]]:
    """Every text `template` can produce, with the statement it states."""
    fields = sorted({_canonical_slot(f) for _, f, _, _ in string.Formatter().parse(template) if f})
    domains = _domains(language)
    choices: list[tuple] = []
    for slot in fields:
        domain = _NUMBERS.get(key, {}).get(slot, domains.get(slot))
        if domain is None:
            raise ValueError(f"grammar key {key!r} has a slot {{{slot}}} the reader knows no values for")
        choices.append(domain)

    def walk(i: int, picked: tuple) -> Iterable[tuple]:
        if i == len(fields):
            yield picked
            return
        for v in choices[i]:
            yield from walk(i + 1, picked + ((fields[i], v),))

    for values in walk(0, ()):
        yield template.format(**_slots(None, language, **dict(values))), Statement(key, values)


@dataclass(frozen=True)
class _Table:
    """All phrasings of one language and section: unit text (no final end mark) -> statement."""

    phrasings: dict[str, Statement]
    max_units: int


@cache
def _table(language: str, section: str) -> _Table:
    end = _SENTENCE_END[language]
    phrasings: dict[str, Statement] = {}
    max_units = 1
    for key, templates in PHRASES[language].items():
        if (key.startswith("imp_")) != (section == IMPRESSION):
            continue
        for template in templates:
            for text, st in _renderings(key, template, language):
                if section == FINDINGS:
                    if not text.endswith(end):
                        raise ValueError(f"grammar phrasing {text!r} does not end with {end!r}")
                    text = text[: -len(end)]
                if phrasings.setdefault(text, st) != st:
                    raise ValueError(f"grammar phrasing {text!r} states both {phrasings[text]} and {st}")
                max_units = max(max_units, len(_units(text, language)))
    return _Table(phrasings, max_units)


def _headers(language: str) -> dict[str, str]:
    """Header text -> section, taken from the reference format the references are written in."""
    ref = reference_text("\0", "\1", language)
    first, rest = ref.split("\0")
    second = rest.split("\1")[0]
    return {first.strip(): FINDINGS, second.strip(): IMPRESSION}


def _units(body: str, language: str) -> list[tuple[str, str | None]]:
    """(text, end mark) pieces of a section body; a trailing piece without an end mark has None."""
    parts = _SPLIT[language].split(body)
    out = [(parts[i].strip(), parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    if parts[-1].strip():
        out.append((parts[-1].strip(), None))
    return out


def _read_section(units: list[tuple[str, str | None]], section: str | None, language: str) -> list[Sentence]:
    table = _table(language, section or FINDINGS)
    sep = _JOIN[language]
    out: list[Sentence] = []
    i = 0
    while i < len(units):
        found = None
        for exact in (True, False):  # right end mark first; else recognise the statement, mark it invalid
            for k in range(min(table.max_units, len(units) - i), 0, -1):
                span = units[i:i + k]
                if any(term is None for _, term in span[:-1]):
                    continue
                text = sep.join(t + (term or "") for t, term in span[:-1]) + sep * (k > 1) + span[-1][0]
                st = table.phrasings.get(text)
                if st is None:
                    continue
                last = i + k == len(units)
                want = _SENTENCE_END[language] if section != IMPRESSION or last else _ITEM_END[language]
                if not exact or span[-1][1] == want:
                    found = (k, st, exact)
                    break
            if found:
                break
        k, st, exact = found if found else (1, None, False)
        span = units[i:i + k]
        raw = sep.join(t + (term or "") for t, term in span)
        out.append(Sentence(raw, section, st, exact and section is not None))
        i += k
    return out


def read_report(text: str, language: str) -> ReadReport:
    """Split a report into sections and sentences and name the statement each sentence is (or None)."""
    if language not in PHRASES:
        raise ValueError(f"unsupported language {language!r} (expected one of {sorted(PHRASES)})")
    text = " ".join(str(text or "").split())
    headers = _headers(language)
    pattern = re.compile("(" + "|".join(re.escape(h) for h in headers) + ")")
    parts = pattern.split(text)
    sentences = _read_section(_units(parts[0], language), None, language)
    order: list[str] = []
    for i in range(1, len(parts), 2):
        section = headers[parts[i]]
        order.append(section)
        sentences += _read_section(_units(parts[i + 1], language), section, language)
    return ReadReport(language, tuple(order), tuple(sentences))


# ---------------------------------------------------------------------------------- statements <-> case

_KIND_OF = {"hilar": "hilar_enlargement"}


def findings_of(statement: Statement) -> list[Finding]:
    """The findings a findings statement asserts (none for negative, generic and impression statements)."""
    key, values = statement.key, dict(statement.values)
    if key in DEVICE_TYPES:
        return [Finding(key, attrs=tuple(sorted(values.items())))]
    base = key.removesuffix("_one").removesuffix("_both")
    kind = _KIND_OF.get(base, base)
    if statement.section != FINDINGS or kind not in FINDING_TYPES:
        return []
    sides = SIDES if key.endswith("_both") else (values.get("side"),)
    attrs = tuple(sorted((k, v) for k, v in values.items() if k not in ("side", "zone", "size")))
    return [Finding(kind, side, values.get("zone"), values.get("size"), attrs) for side in sides]  # type: ignore[arg-type]


def case_from_statements(statements: Iterable[Statement]) -> PhantomCase:
    """The case whose findings the statements state, in the order `sample_case` keeps them."""
    order = {t: i for i, t in enumerate(FINDING_TYPES)}
    found = {f for st in statements for f in findings_of(st)}
    return PhantomCase(0, 0, tuple(sorted(found, key=lambda f: (order[f.kind], f.label, repr(f.attrs)))))


class _FirstPhrasing:
    """Stands in for the text RNG: always the first phrasing (only the statements matter here)."""

    def integers(self, n: int) -> int:
        return 0


def canonical_statements(case: PhantomCase, language: str, variant: str) -> tuple[list[Statement], list[Statement]]:
    """(findings, impression) statements, in order, of the report the grammar writes for `case`."""
    findings, impression = _canonical(case.findings, language, variant)
    return list(findings), list(impression)


@lru_cache(maxsize=4096)
def _canonical(findings: tuple[Finding, ...], language: str, variant: str) -> tuple[tuple[Statement, ...], ...]:
    text = write_report(PhantomCase(0, 0, findings), language, variant, rng=_FirstPhrasing())  # type: ignore[arg-type]
    read = read_report(reference_text(*text, language), language)
    if not all(s.valid for s in read.sentences):  # the grammar's own text must read back exactly
        bad = next(s.text for s in read.sentences if not s.valid)
        raise RuntimeError(f"the grammar wrote a sentence its reader rejects: {bad!r}")
    return tuple(read.statements(FINDINGS)), tuple(read.statements(IMPRESSION))


def statement_names(statements: Sequence[Statement]) -> list[str]:
    return [str(s) for s in statements]
