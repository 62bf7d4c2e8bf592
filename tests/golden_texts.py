"""Texts the golden files were made from (shared by the tests and by scripts/golden/*)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path


def read_golden(name: str) -> dict:
    """A golden file of tests/data (gzipped JSON, made by scripts/golden/*)."""
    with gzip.open(Path(__file__).parent / "data" / name, "rt", encoding="utf-8") as f:
        return json.load(f)


def token_hash(tokens: str) -> str:
    """Short digest of a space-joined token line: golden files keep IU X-ray text out of the repository."""
    return hashlib.sha1(tokens.encode("utf-8")).hexdigest()[:16]


def iu_reports() -> list[dict]:
    from echocxr.data.iu_reports import read_iu_reports

    return [r for r in read_iu_reports() if r["findings"] or r["impression"]]


def iu_cider_lines() -> dict[str, list[str]]:
    """The official CIDEr inputs of every IU report scored against itself (official rebuild, EN)."""
    reports = iu_reports()
    return {"hyp": [f"Finding: {r['findings']} Impression: {r['impression']}".lower() for r in reports],
            "ref": [f"Findings: {r['findings']} Impression: {r['impression']}.".lower() for r in reports]}


def phantom_cider_lines(studies: int = 60) -> dict[str, list[str]]:
    """Official CIDEr inputs of CXR-Phantom reports, EN and ZH (jieba tokens joined by spaces)."""
    from echocxr.data.phantom import phantom_reports
    from echocxr.metrics.text import prepare_hypothesis, rouge_text

    hyp, ref = [], []
    for r in phantom_reports(0, studies):
        rebuilt = f"Finding: {r.findings} Impression: {r.impression}"
        hyp.append(rouge_text(prepare_hypothesis(rebuilt, r.language), r.language))
        ref.append(rouge_text(r.reference, r.language))
    return {"hyp": hyp, "ref": ref}


PUNCT = (list(".,;:()[]{}/-'\"%&<>?!+=*#_~@$")
         + ["--", "...", "\u2013", "\u2014", "\u2019", "\u2018", "\u201c", "\u201d", "\u00b0", "\u00d7", "\u00b1",
            "\u00b5", "\u00b2", "\u2026", "'s", "n't", "cannot", "e.g.", "i.e.", "etc.", "dr.", "pt.", "vs.", "no.",
            "approx.", "mr.", "st.", "1.", "2.", "10:30", "3/4", "1,000", "2.5", "-3", "+2", "5-6", "t8-9",
            "c3-c4", "x-ray", "a.m.", "u.s.", "&amp;", "\u00bd"])


def fuzz_lines(n: int = 3000, seed: int = 11) -> list[str]:
    """Report words (IU vocabulary) mixed with punctuation, symbols and abbreviations, glued or spaced."""
    rng = random.Random(seed)
    words = sorted({w for r in iu_reports() for w in (r["findings"] + " " + r["impression"]).lower().split()})
    lines = []
    for _ in range(n):
        toks = []
        for _ in range(rng.randint(3, 25)):
            x = rng.random()
            if x < 0.6:
                toks.append(rng.choice(words))
            elif x < 0.85:
                toks.append(rng.choice(PUNCT))
            else:
                toks.append(rng.choice(words) + rng.choice(PUNCT) + (rng.choice(words) if rng.random() < 0.5 else ""))
        lines.append("".join(t + (" " if rng.random() < 0.8 else "") for t in toks).lower())
    return lines


def iu_rate_texts() -> list[str]:
    """What the official RaTEScore reads for each IU report: `Findings: {f} Impression: {i}`."""
    return [f"Findings: {r['findings']} Impression: {r['impression']}" for r in iu_reports()]


def phantom_rate_texts(studies: int = 60) -> list[str]:
    from echocxr.data.phantom import phantom_reports

    return [f"Findings: {r.findings} Impression: {r.impression}" if r.language == "en"
            else f"所见：{r.findings} 结论：{r.impression}" for r in phantom_reports(0, studies)]


def synthetic_rate_texts(seed: int = 5) -> list[str]:
    """Harder text made of IU reports: lower-cased, and re-punctuated with "!", "?", "..", list numbers,
    titles, new lines."""
    rng = random.Random(seed)
    reports = iu_reports()
    out = [f"Findings: {r['findings']} Impression: {r['impression']}".lower() for r in rng.sample(reports, 400)]
    for r in rng.sample(reports, 300):
        sentences = [s.strip() for s in (r["findings"] + " " + r["impression"]).split(".") if s.strip()]
        text = ""
        for k, s in enumerate(sentences):
            text += s + rng.choice([". ", "! ", "? ", "; ", ".. ", " . ", ". \n", ".\n\n", f". {k + 1}. ",
                                    f". {k + 1}) ", ". Dr. Smith said. ", ". e.g. "])
        out.append("Findings: " + text)
    return out
