"""Report validity of an evaluation's predictions, by how many findings the study has (CXR-Phantom).

    python scripts/validity_by_findings.py MANIFEST PREDICTIONS.jsonl [PREDICTIONS.jsonl ...]

Says where one-step students break: on the normal statements, or on the positive ones whose side, zone and
size must agree across a block. Prints one JSON object per predictions file.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from echocxr.metrics.coherence import report_coherence


def validity_by_findings(manifest: Path, predictions: Path) -> dict:
    samples = json.loads(manifest.read_text())
    labels = {s["sample_id"]: s.get("labels", []) for s in samples}
    language = {s["sample_id"]: s.get("language", "en") for s in samples}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        n = len(labels[p["sample_id"]])
        key = "3+" if n >= 3 else str(n)
        valid = report_coherence(p["report"], language[p["sample_id"]], "normalised").valid
        counts[key][0] += int(valid)
        counts[key][1] += 1
    return {"predictions": str(predictions),
            "report_validity_by_findings": {k: {"valid": v, "studies": n, "percent": round(100 * v / n, 1)}
                                            for k, (v, n) in sorted(counts.items())}}


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/validity_by_findings.py MANIFEST PREDICTIONS.jsonl [...]")
    for path in sys.argv[2:]:
        print(json.dumps(validity_by_findings(Path(sys.argv[1]), Path(path))))
