"""Which text each metric scores: the official ECHO pipeline's rebuilt strings, or the report as written.

Why: the official evaluation (midea-ai/ECHO `eval/EasyEval`: `merge_and_translation.py`, then
`evaluation.py`) never scores a model's output as written. It parses Findings and Impression out of it
and scores a rebuilt string, and it hands RaTEScore and SemScore yet another pair of strings. The same
outputs score 1-2 ROUGE-L points lower that way than as written, so reproducing the paper's tables
needs the same strings; `raw` keeps the text as written (echocxr's behaviour before protocols).

Official rules, as this module applies them (one generated report):
- parse: `<findings>..</findings>` and `<impression>..</impression>` each on its own; when both come
  out empty, `Findings: .. Impression: ..` (case-insensitive, both needed), else `所见：.. 结论：..`
  (both needed), else nothing. Sections are stripped.
- n-gram metrics and PPL: `Finding: {f} Impression: {i}` (singular header; for a Chinese sample the
  metrics turn the headers into 所见：/结论：). An output that is not empty but yields neither section
  ("parse failed") is scored as written. An empty output is rebuilt to `Finding:  Impression: ` and
  scored, never skipped.
- RaTEScore and SemScore: `Findings: {f} Impression: {i}` (no final period; the output as written
  when the parse failed). The official run first translates Chinese reports to English with an LLM;
  no such model is at hand here, so a Chinese report is scored on its own rebuilt text
  (`所见：{f} 结论：{i}`) and the summary says so.
- references: `Findings: {f} Impression: {i}.` / `所见：{f} 结论：{i}` for the n-gram metrics, and
  `Findings: {f} Impression: {i}` (ZH: `所见：{f} 结论：{i}`) for RaTEScore and SemScore.
- K reports per study (`output_k_samples`): each is parsed by the stricter K rule (tags only when both
  are present) and always rebuilt, even when nothing parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from echocxr.data.manifest import reference_text

PROTOCOLS = ("official", "raw")
DEFAULT_PROTOCOL = "official"
#: what old summaries (written before protocols existed) were scored with
LEGACY_PROTOCOL = "raw"

_TAG_F = re.compile(r"<findings>\s*(.*?)\s*</findings>", re.DOTALL)
_TAG_I = re.compile(r"<impression>\s*(.*?)\s*</impression>", re.DOTALL)
_EN_F = re.compile(r"Findings:\s*(.*?)\s*Impression:", re.DOTALL | re.IGNORECASE)
_EN_I = re.compile(r"Impression:\s*(.*?)$", re.DOTALL | re.IGNORECASE)
_ZH_F = re.compile(r"所见：\s*(.*?)\s*结论：", re.DOTALL)
_ZH_I = re.compile(r"结论：\s*(.*?)$", re.DOTALL)


@dataclass(frozen=True)
class ScoredText:
    """The strings one report (or reference) is scored on."""

    text: str       #: ROUGE, METEOR, BLEU, CIDEr, PPL
    semantic: str   #: RaTEScore, SemScore
    parse_failed: bool = False


def _both(f_rx: re.Pattern[str], i_rx: re.Pattern[str], text: str) -> tuple[str, str] | None:
    f, i = f_rx.search(text), i_rx.search(text)
    if f is None or i is None:
        return None
    return f.group(1).strip(), i.group(1).strip()


def _headers(text: str) -> tuple[str, str]:
    return _both(_EN_F, _EN_I, text) or _both(_ZH_F, _ZH_I, text) or ("", "")


def parse_sections(output: str) -> tuple[str, str]:
    """(findings, impression) of a model output by the official rule for the main output."""
    f, i = _TAG_F.search(output), _TAG_I.search(output)
    findings = f.group(1).strip() if f else ""
    impression = i.group(1).strip() if i else ""
    if findings == "" and impression == "":
        return _headers(output)
    return findings, impression


def parse_k_sections(text: str) -> tuple[str, str]:
    """(findings, impression) of one of K sampled reports by the official K rule (tags need both)."""
    return _both(_TAG_F, _TAG_I, text) or _headers(text)


def _semantic(findings: str, impression: str, language: str) -> str:
    if language == "zh":
        return f"所见：{findings} 结论：{impression}"
    return f"Findings: {findings} Impression: {impression}"


def official_hypothesis(output: str, language: str) -> ScoredText:
    """What the official pipeline scores for one generated report."""
    findings, impression = parse_sections(output)
    if findings == "" and impression == "" and output.strip() != "":
        return ScoredText(output, output, parse_failed=True)
    return ScoredText(f"Finding: {findings} Impression: {impression}",
                      _semantic(findings, impression, language))


def official_k_hypothesis(text: str, language: str) -> ScoredText:
    """What the official pipeline scores for one of K sampled reports (always rebuilt)."""
    findings, impression = parse_k_sections(text)
    return ScoredText(f"Finding: {findings} Impression: {impression}",
                      _semantic(findings, impression, language))


def official_reference(findings: str, impression: str, language: str) -> ScoredText:
    return ScoredText(reference_text(findings, impression, language), _semantic(findings, impression, language))


def hypothesis(output: str, language: str, protocol: str, k_sample: bool = False) -> ScoredText:
    """The strings a generated report is scored on under `protocol` ("official" or "raw")."""
    if protocol == "raw":
        return ScoredText(output, output)
    if protocol != "official":
        raise ValueError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    return official_k_hypothesis(output, language) if k_sample else official_hypothesis(output, language)


def reference(findings: str, impression: str, language: str, protocol: str) -> ScoredText:
    """The strings a reference report is scored against under `protocol`."""
    if protocol == "raw":
        ref = reference_text(findings, impression, language)
        return ScoredText(ref, ref)
    if protocol != "official":
        raise ValueError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    return official_reference(findings, impression, language)


def protocol_notes(protocol: str, languages: list[str]) -> list[str]:
    """One line per way this run's scores can differ from the official run's, for the summary."""
    if protocol == "raw":
        return ["reports scored as written (not the official parse-and-rebuild); numbers are not the paper's"]
    notes = ["official ECHO protocol: outputs parsed into Findings/Impression and rebuilt before scoring"]
    if "zh" in languages:
        notes.append("Chinese reports: RaTEScore and SemScore score the Chinese text; the official run "
                     "translates it to English with an LLM first, so those two are not comparable")
    return notes
