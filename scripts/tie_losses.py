"""What a canonical tie-break changes in a teacher's reports: findings it loses or gains, and the words where
the two decodes first part (CXR-Phantom).

    python scripts/tie_losses.py PLAIN_PER_SAMPLE.jsonl TIED_PER_SAMPLE.jsonl [--top 12]

Both files are `echocxr eval` outputs (per_sample.jsonl) of the same model on the same studies, e.g. the Base
decoded left to right with the plain argmax and with `--tie-ratio 0.3`. A finding is lost when the plain decode
states it correctly (it is in the reference) and the tied one does not; gained the other way round. Prints one
JSON object: studies, reports that differ, lost and gained counts (total and by finding), and the commonest first
differences as [two words before, plain word, tied word, count].
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def _rows(path: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def tie_losses(plain: Path, tied: Path, top: int = 12) -> dict:
    a, b = _rows(plain), _rows(tied)
    lost: Counter = Counter()
    gained: Counter = Counter()
    first: Counter = Counter()
    differ = 0
    for sid, ra in a.items():
        rb = b[sid]
        ref = set(ra["findings_ref"])
        pa, pb = set(ra["findings_pred"]), set(rb["findings_pred"])
        lost.update((pa & ref) - pb)
        gained.update((pb & ref) - pa)
        wa, wb = ra["hypothesis"].split(), rb["hypothesis"].split()
        if wa != wb:
            differ += 1
            i = next((k for k, (x, y) in enumerate(zip(wa, wb, strict=False)) if x != y), min(len(wa), len(wb)))
            first[(" ".join(wa[max(0, i - 2):i]), wa[i] if i < len(wa) else "", wb[i] if i < len(wb) else "")] += 1
    return {"plain": str(plain), "tied": str(tied), "studies": len(a), "reports_differ": differ,
            "lost": sum(lost.values()), "gained": sum(gained.values()),
            "lost_by_finding": dict(lost.most_common()), "gained_by_finding": dict(gained.most_common()),
            "first_differences": [[*k, n] for k, n in first.most_common(top)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plain", type=Path)
    ap.add_argument("tied", type=Path)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    print(json.dumps(tie_losses(args.plain, args.tied, args.top), ensure_ascii=False))


if __name__ == "__main__":
    main()
