"""Coherence of CXR-Phantom reports: is each sentence exactly a phrasing, is the report one the grammar writes?

Mean-field bias in one-step decoding shows up as broken or mixed phrasings, doubled or dropped words,
repeated or missing statements; n-gram metrics see that only dimly, the grammar sees it exactly
(`echocxr.data.phantom.parse`). Definitions, per report (hypothesis) with the reference's language and
variant (normalised or raw: the one the reference reads as):

- a sentence is valid when it is exactly one phrasing of a statement of its section, with the section's
  end mark, after a section header;
- the report's *canonical statements* are those the grammar writes, in its order, for the findings the
  report's Findings section states (every region for a normalised report, its negative statement when
  no finding is stated; positives and the closing sentence for a raw report; the impression items for
  those findings in both variants). Phrasing does not matter: a statement is its key and slot values;
- repeated = occurrences of a statement beyond its first (two phrasings of one statement repeat it);
  missing = canonical statements the report lacks; unexpected = distinct statements it has that are not
  canonical (e.g. "no effusion" next to a stated effusion, a raw report's closing sentence in a
  normalised report, an impression item no finding supports);
- in order: the headers are exactly Findings then Impression, nothing precedes the first, and in each
  section the first occurrences of the canonical statements keep the canonical order;
- valid report: every sentence valid, nothing repeated, missing or unexpected, and in order.
Corpus values (percent): `report_validity` = share of valid reports (mean of the per-sample column);
`sentence_validity` = share of valid sentences over all sentences of all reports (corpus-level). Counts
(`repeated_statements`, `missing_statements`, `unexpected_statements`) are means per report. A sample
whose reference is not a phantom report is not scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from echocxr.data.phantom.grammar import VARIANTS
from echocxr.data.phantom.parse import (
    ReadReport,
    Statement,
    canonical_statements,
    case_from_statements,
    read_report,
)
from echocxr.data.sections import FINDINGS, IMPRESSION
from echocxr.metrics.base import MetricResult, check_pairs, languages_for, mean_or_none

SECTIONS = (FINDINGS, IMPRESSION)


@dataclass
class ReportCoherence:
    """How one report reads against the grammar (see the module doc for the definitions)."""

    n_sentences: int
    n_valid_sentences: int
    repeated: int
    missing: list[Statement]
    unexpected: list[Statement]
    in_order: bool
    read: ReadReport

    @property
    def valid(self) -> bool:
        return (self.n_valid_sentences == self.n_sentences and not self.repeated and not self.missing
                and not self.unexpected and self.in_order)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "sentences": self.n_sentences, "valid_sentences": self.n_valid_sentences,
                "repeated": self.repeated, "missing": [str(s) for s in self.missing],
                "unexpected": [str(s) for s in self.unexpected], "in_order": self.in_order,
                "invalid_sentences": [s.text for s in self.read.sentences if not s.valid]}


def _keeps_order(present: list[Statement], canonical: list[Statement]) -> bool:
    rank = {st: i for i, st in enumerate(canonical)}
    firsts = [rank[st] for st in dict.fromkeys(present) if st in rank]
    return firsts == sorted(firsts)


def report_coherence(text: str, language: str, variant: str) -> ReportCoherence:
    """Read `text` as a CXR-Phantom report of `variant` ("normalised" or "raw") in `language`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown report variant {variant!r}; expected one of {VARIANTS}")
    return _coherence(read_report(text, language), variant)


def _coherence(read: ReadReport, variant: str) -> ReportCoherence:
    language = read.language
    present = {sec: read.statements(sec) for sec in SECTIONS}
    canonical = dict(zip(SECTIONS, canonical_statements(case_from_statements(present[FINDINGS]), language, variant),
                         strict=True))
    repeated, missing, unexpected, in_order = 0, [], [], read.headers == SECTIONS
    in_order = in_order and all(s.section is not None for s in read.sentences)
    for sec in SECTIONS:
        counts = Counter(present[sec])
        repeated += sum(n - 1 for n in counts.values())
        missing += [st for st in canonical[sec] if st not in counts]
        unexpected += [st for st in counts if st not in canonical[sec]]
        in_order = in_order and _keeps_order(present[sec], canonical[sec])
    n_valid = sum(s.valid for s in read.sentences)
    return ReportCoherence(len(read.sentences), n_valid, repeated, missing, unexpected, in_order, read)


def reference_variant(reference: str, language: str) -> str | None:
    """The variant a reference is a valid report of; None when it is no CXR-Phantom report."""
    return _variant(read_report(reference, language))


def _variant(read: ReadReport) -> str | None:
    return next((v for v in VARIANTS if _coherence(read, v).valid), None)


def is_phantom_eval(refs: Sequence[str], languages: Sequence[str],
                    ref_labels: Sequence[Sequence[str] | None] | None = None) -> bool:
    """True when every reference is a valid CXR-Phantom report whose stated findings are its labels (where
    labels are given): the manifest was written by the phantom generator, whatever its ids or file names."""
    if not refs:
        return False
    for i, (ref, lang) in enumerate(zip(refs, languages, strict=True)):
        if lang not in ("en", "zh"):
            return False
        read = read_report(ref, lang)
        if _variant(read) is None:
            return False
        labels = ref_labels[i] if ref_labels is not None else None
        stated = case_from_statements(read.statements(FINDINGS)).labels
        if labels is not None and sorted(set(labels)) != stated:
            return False
    return True


class Coherence:
    """`echocxr eval`'s coherence metric; added by default when the manifest is CXR-Phantom."""

    name = "coherence"
    summary_key = "report_validity"
    percent = True
    sharded = False  # sentence_validity pools the sentences of all reports
    extra_units = {"repeated_statements": "per report", "missing_statements": "per report",
                   "unexpected_statements": "per report"}

    def __init__(self, **_: object) -> None:
        """Options meant for other metrics are accepted and ignored."""

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        per_sample: list[float | None] = []
        details: list[dict[str, Any] | None] = []
        scored: list[ReportCoherence] = []
        for hyp, ref, lang in zip(hyps, refs, langs, strict=True):
            variant = reference_variant(ref, lang)
            if variant is None:
                per_sample.append(None)
                details.append(None)
                continue
            rc = report_coherence(hyp, lang, variant)
            scored.append(rc)
            per_sample.append(float(rc.valid))
            details.append({"variant": variant, **rc.to_json()})
        if hyps and not scored:
            raise ValueError("no reference is a CXR-Phantom report (coherence reads phantom reports only)")
        n_sentences = sum(rc.n_sentences for rc in scored)
        return MetricResult(
            self.name, per_sample, mean_or_none(per_sample),
            extra={"sentence_validity": sum(rc.n_valid_sentences for rc in scored) / n_sentences
                   if n_sentences else None,
                   "repeated_statements": mean_or_none([rc.repeated for rc in scored]),
                   "missing_statements": mean_or_none([len(rc.missing) for rc in scored]),
                   "unexpected_statements": mean_or_none([len(rc.unexpected) for rc in scored])},
            info={"grammar": "CXR-Phantom", "n_scored": len(scored),
                  "variants": dict(Counter(d["variant"] for d in details if d))},
            sample_extra={"coherence": details})

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        return mean_or_none(per_sample)
