"""Where a one-step student first departs from its teacher, study by study (CXR-Phantom).

    python scripts/first_divergence.py LANG TEACHER_PER_SAMPLE.jsonl STUDENT_PER_SAMPLE.jsonl

Both files are `echocxr eval` outputs (per_sample.jsonl) on the same studies. For each study the first
sentence where the two reports differ is classed: `rephrase` (the same statement in another valid phrasing),
`content` (another valid statement: a different finding), `invalid` (no valid phrasing: mixed or broken);
`same` when they never differ. Counts are split by whether the student's whole report is valid, so one can
tell a student that fails because it cannot guess the teacher's phrasing from one that does not see the
finding. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from echocxr.data.phantom.parse import read_report


def _rows(path: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def first_divergence(language: str, teacher: Path, student: Path) -> dict:
    t_rows, s_rows = _rows(teacher), _rows(student)
    counts: Counter = Counter()
    for sid, s in s_rows.items():
        if sid not in t_rows:
            continue
        ts = read_report(t_rows[sid]["hypothesis"], language).sentences
        ss = read_report(s["hypothesis"], language).sentences
        valid = "student_valid" if s.get("coherence", {}).get("valid") else "student_invalid"
        k = next((i for i, (a, b) in enumerate(zip(ts, ss, strict=False)) if a.text != b.text), None)
        if k is None:
            counts["same" if len(ts) == len(ss) else "length"] += 1
            continue
        a, b = ts[k], ss[k]
        kind = "invalid" if not b.valid else "rephrase" if a.statement == b.statement else "content"
        counts[f"{kind}/{valid}"] += 1
    return {"language": language, "studies": sum(counts.values()), **dict(sorted(counts.items()))}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("en", "zh"):
        sys.exit("usage: python scripts/first_divergence.py en|zh TEACHER_PER_SAMPLE.jsonl STUDENT_PER_SAMPLE.jsonl")
    print(json.dumps(first_divergence(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
