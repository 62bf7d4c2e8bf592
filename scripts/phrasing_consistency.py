"""How consistently a model phrases each CXR-Phantom statement across studies.

    python scripts/phrasing_consistency.py LANG PREDICTIONS.jsonl [PREDICTIONS.jsonl ...]

The phantom's phrasings are drawn at random, independent of the image, so a teacher that picks one phrasing
here and another there (at a near-tie, by tiny context-dependent differences) hands a one-step student a
target it cannot predict from the study. Per statement (key and slot values, phrasing-independent) the share
of its valid sentences written in its most frequent phrasing; `agreement` is that share over all of them
(100: every statement always phrased one way), and the same over the normal statements (a region stated
negative or unremarkable, in nearly every report) and over the finding statements (a finding with its side,
zone or size: each in a few percent of reports). Prints one JSON object per predictions file.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from echocxr.data.phantom.parse import Statement, read_report


def is_normal(statement: Statement) -> bool:
    """A region stated negative or unremarkable (the grammar's *_none / *_normal keys, the bones line)."""
    return statement.key.endswith(("_none", "_normal")) or statement.key == "bones"


def _share(counters: Iterable[Counter]) -> float | None:
    counters = list(counters)
    total = sum(sum(c.values()) for c in counters)
    return round(100 * sum(max(c.values()) for c in counters) / total, 1) if total else None


def agreement(language: str, reports: Iterable[str]) -> dict:
    """Phrasing agreement of a set of reports (see the module docstring)."""
    phrasings: dict[Statement, Counter] = defaultdict(Counter)
    for report in reports:
        for s in read_report(report, language).sentences:
            if s.valid and s.statement is not None:
                phrasings[s.statement][s.text] += 1
    return {"language": language, "sentences": sum(sum(c.values()) for c in phrasings.values()),
            "statements": len(phrasings), "distinct_phrasings": sum(len(c) for c in phrasings.values()),
            "agreement": _share(phrasings.values()),
            "agreement_normal": _share(c for st, c in phrasings.items() if is_normal(st)),
            "agreement_findings": _share(c for st, c in phrasings.items() if not is_normal(st))}


def phrasing_consistency(language: str, predictions: Path) -> dict:
    reports = (json.loads(line)["report"] for line in predictions.read_text().splitlines())
    return {"predictions": str(predictions), **agreement(language, reports)}


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("en", "zh"):
        sys.exit("usage: python scripts/phrasing_consistency.py en|zh PREDICTIONS.jsonl [...]")
    for path in sys.argv[2:]:
        print(json.dumps(phrasing_consistency(sys.argv[1], Path(path))))
